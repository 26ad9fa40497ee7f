"""Workflow configuration: YAML/JSON config files and ``--config key=value`` overrides.

Precedence, lowest first, as in Snakemake: ``configfile:`` directives in the rule file, then
``--configfile`` files, then ``--config`` overrides. Each ``configfile:`` directive merges its file
into ``config`` and then re-applies the command-line layer, so the command line always wins.
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any, Iterable, Mapping

import yaml

from flowmake.errors import ConfigError, Location, _shown


def merge(into: dict[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive update: nested dicts merge, everything else is replaced."""
    for key, value in new.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)
    return into


def load_configfile(path: str, location: Location | None = None) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read config file '{_shown(path)}': {e.strerror}",
                          location=location) from None
    try:
        data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as e:
        raise ConfigError(f"config file '{_shown(path)}' is not valid {_kind(path)}: "
                          f"{_one_line(e)}", location=location) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{_shown(path)}' must hold a mapping, not "
                          f"{type(data).__name__}", location=location)
    return data


def _kind(path: str) -> str:
    return "JSON" if path.endswith(".json") else "YAML"


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())


def parse_value(text: str) -> Any:
    """A ``--config`` value, read as Snakemake reads it: an int, a float, ``True``/``False``,
    else YAML whose scalars stay strings (``true`` → "true", ``{a: 1}`` → {"a": "1"}), else the
    text. An empty value is None."""
    if text == "":
        return None
    for number in (int, float):
        try:
            return number(text)
        except ValueError:
            pass
    if text in ("True", "False"):
        return text == "True"
    try:
        value = yaml.load(text, Loader=yaml.BaseLoader)
    except yaml.YAMLError:
        return text
    return text if value is None else value


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``["a=1", "b=x"]`` → ``{"a": 1, "b": "x"}``; ConfigError for an item without ``=``.
    A key given twice merges like config files do (``b={x: 1}`` then ``b={y: 2}``)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"invalid --config item '{item}'", hint="use key=value")
        merge(out, {key.strip(): parse_value(value)})
    return out


def command_line_layer(configfiles: Iterable[str], overrides: Mapping[str, Any] | None) -> dict:
    """The merged ``--configfile`` files and ``--config`` overrides (applied over the rule file's)."""
    layer: dict[str, Any] = {}
    for path in configfiles:
        merge(layer, load_configfile(os.path.abspath(path)))
    merge(layer, overrides or {})
    return layer
