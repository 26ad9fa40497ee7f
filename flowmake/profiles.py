"""Snakemake profiles: a directory with ``config.yaml`` whose keys are long flags (``jobs: 100``).

``--profile`` takes a Snakemake profile (a directory, its ``config.yaml``/``profile.yaml``, or a
name looked up in the current directory, ``~/.config/snakemake/`` and ``/etc/xdg/snakemake/``) or
a ``.toml`` file, which is flowmake's own settings (see ``settings``); both may be given.
``$SNAKEMAKE_PROFILE`` stands in when no ``--profile`` is given (``--profile none``: no profile).
The workflow profile, ``profiles/default/`` beside the rule file (``--workflow-profile DIR|none``),
comes last. As in Snakemake, a later profile overrides an earlier one key by key, and a flag given
on the command line overrides every profile's value for it.

Values are read as Snakemake's profile parser reads them: a list is the flag's values; a mapping
under ``default-resources``, ``set-threads``, ``resources`` or ``config`` becomes ``NAME=VALUE``
items, under ``set-resources`` ``RULE:NAME=VALUE`` items; a string has ``~`` and ``$VARS``
expanded and, when it names a file in the profile's directory, becomes that file's path. A key
that is no flag is an error naming the file, line and key (Snakemake's parser refuses it too).
"""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from flowmake.errors import ConfigError, Location, did_you_mean

SNAKEMAKE_MAJOR = 9  # the profile file versions honoured: profile.v9+.yaml, not .v10+
_FILE = re.compile(r"(profile|config)(?:\.v(\d+)\+)?\.yaml")
_ONE_LEVEL = ("set-threads", "resources", "set-scatter", "batch", "set-resource-scopes",
              "default-resources", "config", "groups", "group-components", "consider-ancient")
_TRUE = ("true", "yes", "1", "on")
_FALSE = ("false", "no", "0", "off")


@dataclass
class Profiles:
    """What the profiles contributed: the files used, flowmake.toml (if one was named), and
    where each flag's value came from (``dest`` → ``file:line``) for error messages."""

    used: list[str] = field(default_factory=list)
    toml: str | None = None
    sources: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Entry:
    key: str
    value: Any
    where: Location


def user_dirs() -> list[Path]:
    """Where a profile named by its name is looked for, after the current directory."""
    home = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    site = (os.environ.get("XDG_CONFIG_DIRS") or "/etc/xdg").split(":")[0] or "/etc/xdg"
    return [Path(home) / "snakemake", Path(site) / "snakemake"]


def find_profile(name: str) -> Path:
    """The YAML file of the profile ``name`` (a path to a directory or file, or a bare name)."""
    if name == "":
        raise ConfigError("invalid profile name ''")
    if os.path.exists(name):
        if os.path.isfile(name):
            return Path(name)
        dirs, name = [Path(os.path.dirname(name) or ".")], os.path.basename(os.path.normpath(name))
    else:
        dirs = [Path.cwd(), *user_dirs()]
    for d in dirs:
        candidate = d / name
        if candidate.is_file():
            return candidate
        if candidate.is_dir():
            found = _profile_file(candidate)
            if found is not None:
                return found
    raise ConfigError(
        f"profile {name!r} not found, or it has no config.yaml (or profile.yaml)",
        hint="give a directory holding config.yaml, the YAML file itself, or the name of a "
             "directory in " + ", ".join(str(d) for d in user_dirs()))


def _profile_file(directory: Path) -> Path | None:
    best: tuple[int, str] | None = None
    for f in sorted(os.listdir(directory)):
        m = _FILE.fullmatch(f)
        if m and int(m.group(2) or 0) <= SNAKEMAKE_MAJOR:
            rank = (int(m.group(2) or 0), f)
            if best is None or rank[0] > best[0]:
                best = rank
    return directory / best[1] if best else None


def find_workflow_profile(given: str | None, flowfile: str | None) -> Path | None:
    """``--workflow-profile``: DIR, a name under ``profiles/``, or ``profiles/default`` (if any)."""
    if given == "none":
        return None
    name = given or "default"
    candidates = [Path(name), Path("profiles") / name]
    if flowfile:
        candidates.append(Path(flowfile).parent / "profiles" / name)
    for c in candidates if given else candidates[1:]:
        if c.is_file():
            return c
        if c.is_dir():
            found = _profile_file(c)
            if found is not None:
                return found
    if given:
        raise ConfigError(f"workflow profile {given!r} not found (looked for "
                          + ", ".join(str(c) for c in candidates) + ")")
    return None


def read_profile(path: Path) -> list[_Entry]:
    """The profile's keys with their values formatted as Snakemake's profile parser does."""
    import yaml

    try:
        text = path.read_text()
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read profile: {exc}", location=Location(str(path))) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ConfigError(f"profile is not valid YAML: {getattr(exc, 'problem', None) or exc}",
                          location=Location(str(path), mark.line + 1 if mark else None)) from None
    if data is None:
        return []
    if not isinstance(data, dict) or not isinstance(node, yaml.MappingNode):
        raise ConfigError("a profile must be a YAML mapping of flag names to values",
                          location=Location(str(path)))
    lines = {str(k.value): k.start_mark.line + 1 for k, _ in node.value}
    if data.get("__use_yte__"):
        raise ConfigError("YTE templates (__use_yte__) are not supported in profiles",
                          location=Location(str(path), lines.get("__use_yte__")),
                          hint="write the profile as plain YAML")
    out = []
    for key, value in data.items():
        key = str(key)
        where = Location(str(path), lines.get(key))
        if key == "__use_yte__" or value is None:
            continue
        out.append(_Entry(key, _format(key, value, path.parent, where), where))
    return out


def _format(key: str, value: Any, directory: Path, where: Location) -> Any:
    if isinstance(value, list):
        return [str(v) for v in value]
    if isinstance(value, dict):
        if key in _ONE_LEVEL:
            return [f"{k}={_item(v)}" for k, v in value.items()]
        if key == "set-resources":
            if not all(isinstance(v, dict) for v in value.values()):
                raise ConfigError("set-resources must map rule names to mappings of resources "
                                  "(rule: {mem_mb: 1000})", location=where)
            return [f"{rule}:{k}={_item(v)}" for rule, res in value.items() for k, v in res.items()]
        raise ConfigError(f"{key!r}: a mapping is no value for --{key}", location=where)
    if isinstance(value, bool):
        return value
    text = os.path.expanduser(os.path.expandvars(str(value)))
    return str(directory / text) if text and (directory / text).exists() else text


def _item(value: Any) -> str:
    """A value inside a mapping: a string that reads as a number stays a string (Snakemake quotes it)."""
    if isinstance(value, str):
        for kind in (int, float):
            try:
                kind(value)
            except ValueError:
                continue
            return repr(value)
    return str(value)


# ---- merging into the parsed command line ---------------------------------------------------------


def apply_profiles(args: argparse.Namespace, argv: Sequence[str],
                   make_parser: Callable[[], argparse.ArgumentParser]) -> Profiles:
    """Fill ``args`` with the profiles' values for every flag the command line did not give."""
    names = list(args.profile or [])
    if not names and os.environ.get("SNAKEMAKE_PROFILE"):
        names = [os.environ["SNAKEMAKE_PROFILE"]]
    if "none" in names:
        if names != ["none"]:
            raise ConfigError("--profile none cannot be combined with other profiles")
        names = []
    result = Profiles()
    files: list[Path] = []
    for name in names:
        if name.endswith(".toml"):
            result.toml = name
        else:
            files.append(find_profile(name))
    wf = find_workflow_profile(args.workflow_profile, _rule_file(args))
    if wf is not None and wf.resolve() not in [f.resolve() for f in files]:
        files.append(wf)
    if not files:
        return result
    parser = make_parser()
    given = _given_on_command_line(make_parser(), argv)
    merged: dict[str, tuple[argparse.Action, _Entry]] = {}
    for path in files:
        result.used.append(str(path))
        for entry in read_profile(path):
            action = _action(parser, entry)
            if action is not None:
                merged[action.dest] = (action, entry)
    for dest, (action, entry) in merged.items():
        if dest in given:
            continue
        setattr(args, dest, _convert(parser, action, entry))
        result.sources[dest] = f"profile {entry.where}"
    return result


def _rule_file(args: argparse.Namespace) -> str | None:
    """The rule file, for the workflow profile beside it (before ``-d`` moves anywhere)."""
    if args.flowfile:
        return str(args.flowfile)
    base = args.directory or "."
    for name in ("Flowfile", "Snakefile", "workflow/Snakefile", "workflow/Flowfile"):
        if os.path.isfile(os.path.join(base, name)):
            return os.path.join(base, name)
    return None


def _given_on_command_line(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(list(argv))))


def _action(parser: argparse.ArgumentParser, entry: _Entry) -> argparse.Action | None:
    action = parser._option_string_actions.get("--" + entry.key)
    if action is None or isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
        known = sorted(s[2:] for s in parser._option_string_actions if s.startswith("--"))
        raise ConfigError(f"unknown key {entry.key!r} in profile: no flag --{entry.key}",
                          location=entry.where,
                          hint=did_you_mean(entry.key, known) or "a profile's keys are long flags "
                          "without their dashes (jobs, executor, default-resources...)")
    if action.dest in ("profile", "workflow_profile"):
        return None  # Snakemake reads profiles once: one naming another has no effect
    return action


def _convert(parser: argparse.ArgumentParser, action: argparse.Action, entry: _Entry) -> Any:
    value = entry.value
    flag = "--" + entry.key
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        text = str(value).lower()
        if text not in _TRUE + _FALSE:
            raise ConfigError(f"{entry.key}: expected true or false, got {value!r}", location=entry.where)
        on = text in _TRUE
        return on if isinstance(action, argparse._StoreTrueAction) else not on
    many = action.nargs in ("+", "*") or isinstance(action.nargs, int)
    items = value if isinstance(value, list) else [value]
    if not many and len(items) != 1:
        raise ConfigError(f"{entry.key}: {flag} takes one value, got a list", location=entry.where)
    out = []
    for item in items:
        text = str(item) if not isinstance(item, bool) else str(item).lower()
        try:
            converted = action.type(text) if callable(action.type) else text
        except (argparse.ArgumentTypeError, TypeError, ValueError) as exc:
            raise ConfigError(f"{entry.key}: {exc or 'invalid value'} ({text!r})", location=entry.where) from None
        if action.choices is not None and converted not in action.choices:
            raise ConfigError(f"{entry.key}: {text!r} is not one of " + ", ".join(map(str, action.choices)),
                              location=entry.where)
        out.append(converted)
    return out if many else out[0]
