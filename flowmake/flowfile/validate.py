"""``validate(data, schema)``: Snakemake's ``snakemake.utils.validate``, for config and sample sheets.

The schema (YAML or JSON) is found relative to the rule file that calls ``validate``, not the
current directory. With ``set_default=True`` the schema's defaults are written into the data, as
Snakemake does (a property's default when it is absent; nested objects get theirs when they are
present or have a default themselves). A pandas DataFrame is checked row by row, and with
defaults its missing columns and empty cells are filled in. A mismatch is a ConfigError naming the
schema file, the failing key and the row, never a traceback. ``$ref`` to other local schema files
resolve relative to the schema that refers to them.
"""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

from flowmake.errors import ConfigError, _shown


def validate_in(basedir: Callable[[], str], files: Callable[[], Iterable[str]]) -> Callable[..., None]:
    """The ``validate`` of one workflow: ``basedir()`` is the folder of the file being executed,
    ``files()`` the workflow's rule files (a call from one of them is relative to its folder)."""

    def validate(data: Any, schema: Any, set_default: bool = True) -> None:
        frame = sys._getframe(1)
        module_workflow = frame.f_globals.get("workflow")
        if getattr(getattr(module_workflow, "modifier", None), "skip_validation", False):
            return  # a module used with `skip_validation: True` (Snakemake's validate reads it so)
        caller = frame.f_code.co_filename
        base = os.path.dirname(caller) if caller in set(files()) else basedir()
        path = os.fspath(schema)
        check(data, path if os.path.isabs(path) else os.path.join(base, path), set_default)

    return validate


def check(data: Any, schema_path: str, set_default: bool = True) -> None:
    import jsonschema
    from jsonschema import validators

    schema = _load(schema_path)
    registry = _registry(schema_path, schema)
    base_cls = validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    cls = _with_defaults(base_cls) if set_default else base_cls
    validator = cls(schema, registry=registry)
    shown = _shown(os.path.abspath(schema_path))
    if isinstance(data, dict):
        _raise_first(validator, data, f"config does not match the schema {shown}")
        return
    try:
        import pandas as pd
    except ImportError:
        pd = None
    if pd is not None and isinstance(data, pd.DataFrame):
        _check_frame(pd, data, validator, shown, set_default)
        return
    _raise_first(validator, data, f"data does not match the schema {shown}")


def _check_frame(pd: Any, data: Any, validator: Any, shown: str, set_default: bool) -> None:
    records = []
    for i, row in enumerate(data.to_dict("records")):
        record = {k: v for k, v in row.items() if pd.notnull(v)}  # an empty cell is no value
        _raise_first(validator, record, f"row {i} of the data frame does not match the schema {shown}")
        records.append(record)
    if not set_default or not records:
        return
    filled = pd.DataFrame(records)
    # Positional, not by index: a sample sheet's index may repeat.
    for col in filled.columns:
        new = filled[col].to_numpy()
        if col not in data.columns:
            data[col] = new
            continue
        cur = data[col].to_numpy(copy=True)
        mask = pd.isna(cur)
        if mask.any():
            cur[mask] = new[mask]
            data[col] = cur


def _raise_first(validator: Any, data: Any, what: str) -> None:
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    if not errors:
        return
    e = errors[0]
    key = "/".join(str(p) for p in e.absolute_path)
    where = f"at '{key}': " if key else ""
    raise ConfigError(f"{what}: {where}{e.message}")


def _load(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            schema = yaml.safe_load(f)  # JSON is YAML too
    except OSError as e:
        raise ConfigError(f"cannot read schema '{_shown(path)}': {e.strerror}",
                          hint="a schema path is relative to the rule file calling validate()") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"schema '{_shown(path)}' is not valid YAML or JSON: "
                          f"{' '.join(str(e).split())}") from None
    if not isinstance(schema, dict):
        raise ConfigError(f"schema '{_shown(path)}' must hold a mapping")
    return schema


def _registry(path: str, schema: dict[str, Any]) -> Any:
    """Relative ``$ref``s resolve against the schema's own file, whatever its ``$id`` says."""
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    schema["$id"] = Path(path).resolve().as_uri()

    def retrieve(uri: str) -> Any:
        return Resource.from_contents(_load(url2pathname(urlparse(uri).path)),
                                      default_specification=DRAFT202012)

    resource = Resource.from_contents(schema, default_specification=DRAFT202012)
    return Registry(retrieve=retrieve).with_resource(uri=schema["$id"], resource=resource)  # type: ignore[call-arg]


def _with_defaults(cls: Any) -> Any:
    """The validator class, extended to write each property's default (python-jsonschema FAQ)."""
    from jsonschema import validators

    check_properties = cls.VALIDATORS["properties"]

    def properties(validator: Any, props: Any, instance: Any, schema: Any) -> Any:
        if isinstance(instance, dict):
            for name, sub in props.items():
                if isinstance(sub, dict) and "default" in sub:
                    instance.setdefault(name, copy.deepcopy(sub["default"]))
        yield from check_properties(validator, props, instance, schema)

    return validators.extend(cls, {"properties": properties})
