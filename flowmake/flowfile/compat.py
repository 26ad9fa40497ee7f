"""``import snakemake...`` in a rule file, when Snakemake itself is not installed.

Snakefiles often start with ``from snakemake.utils import min_version`` or import helpers from
``snakemake.io``. Where Snakemake is installed the real modules are used; otherwise these small
stand-ins serve the names such files use, backed by flowmake's own helpers. Nothing is installed
under the name ``snakemake``: the stand-ins exist only inside a rule file's namespace.
"""

from __future__ import annotations

import builtins
import importlib.util
import os
import sys
import types
from typing import Any, Callable, Mapping

from flowmake.errors import ConfigError
from flowmake.settings import available_cores


def _min_version(version: str) -> None:
    """Snakemake's version gate: flowmake reads the language, whatever version is asked for."""


def _validate(data: Any, schema: str, set_default: bool = True) -> None:
    caller = sys._getframe(1).f_globals.get("workflow")
    if getattr(getattr(caller, "modifier", None), "skip_validation", False):
        return  # a module used with `skip_validation: True` (as Snakemake's validate reads it)
    try:
        import jsonschema
        import yaml
    except ImportError:  # validation is a check, not a transformation: skipping it is safe
        return
    with open(schema) as fh:
        spec = yaml.safe_load(fh)
    try:
        jsonschema.validate(data, spec)
    except jsonschema.ValidationError as e:
        raise ConfigError(f"config does not match {schema}: {e.message}") from None


def _modules(helpers: Mapping[str, Any]) -> dict[str, types.ModuleType]:
    root = types.ModuleType("snakemake")
    utils = types.ModuleType("snakemake.utils")
    utils.__dict__.update(min_version=_min_version, validate=_validate,
                          available_cpu_count=available_cores, makedirs=lambda p: os.makedirs(p, exist_ok=True))
    io = types.ModuleType("snakemake.io")
    io.__dict__.update(helpers)
    root.utils = utils  # type: ignore[attr-defined]  # a module made at run time
    root.io = io  # type: ignore[attr-defined]  # as above
    return {"snakemake": root, "snakemake.utils": utils, "snakemake.io": io}


def builtins_with_snakemake(helpers: Mapping[str, Any]) -> dict[str, Any] | types.ModuleType:
    """The builtins a rule file runs with: the real ones, plus the stand-ins when needed."""
    if importlib.util.find_spec("snakemake") is not None:
        return builtins
    modules = _modules(helpers)
    real_import: Callable[..., Any] = builtins.__import__

    def _import(name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0) -> Any:
        if level == 0 and name in modules:
            return modules[name] if fromlist else modules[name.split(".")[0]]
        return real_import(name, globals, locals, fromlist, level)

    table = dict(vars(builtins))
    table["__import__"] = _import
    return table
