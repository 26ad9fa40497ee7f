"""A module's ``prefix:`` / ``replace_prefix:``: how its rules' paths move into the workflow.

Snakemake's rules: a relative path gets the prefix (or its matching prefix replaced); an absolute
path, a path starting with ``..`` and a path marked ``local()`` stay as written. Flags (``temp``...)
stay on the rewritten path; an input function's results are rewritten when it is called.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Callable

from flowmake.errors import FlowfileError, Location
from flowmake.namedlist import Flag, Flagged, FlaggedFunction, add_flag, flags_of


def local(value: Any) -> Any:
    """Snakemake's ``local()``: the path stays as written, whatever a module's prefix or the
    default storage provider (``storage.py`` reads the same flag)."""
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    return add_flag(value, Flag.LOCAL)


class PathRewrite:
    def __init__(self, prefix: Any, replace: Any, where: Location) -> None:
        if prefix is not None and replace is not None:
            raise FlowfileError("a module takes 'prefix:' or 'replace_prefix:', not both",
                                location=where)
        if isinstance(prefix, Path):
            prefix = str(prefix)
        if prefix is not None and not isinstance(prefix, str):
            raise FlowfileError("'prefix:' must be a string or a Path", location=where)
        if replace is not None and not (isinstance(replace, dict) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in replace.items())):
            raise FlowfileError("'replace_prefix:' must be a dict of strings", location=where)
        self.prefix = (prefix if prefix.endswith("/") else prefix + "/") if prefix else None
        self.replace: dict[str, str] = replace or {}

    @property
    def active(self) -> bool:
        return bool(self.prefix or self.replace)

    def path(self, path: str, where: Location | None) -> str:
        if Flag.LOCAL in flags_of(path) or os.path.isabs(path) or path.startswith(".."):
            return path
        if self.prefix:
            new = self.prefix + path
        else:
            matches = [p for p in self.replace if path.startswith(p)]
            if len(matches) > 1:
                raise FlowfileError(f"several prefixes of replace_prefix ({', '.join(matches)}) "
                                    f"match the path {path}", location=where)
            if not matches:
                return path
            new = self.replace[matches[0]] + path[len(matches[0]):]
        flags = flags_of(path)
        return Flagged(new, flags) if flags else new

    def value(self, value: Any, where: Location | None) -> Any:
        if isinstance(value, FlaggedFunction):
            return FlaggedFunction(self._wrap(value.func), value.flags, value.unpack)
        if isinstance(value, (str, os.PathLike)):
            return self.path(os.fspath(value), where)
        if callable(value):
            return self._wrap(value)
        if isinstance(value, dict):
            return {k: self.value(v, where) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.value(v, where) for v in value]
        return value

    def args(self, value: Any, where: Location) -> Any:
        """A directive's value (the builder's ``_Args``) with its paths rewritten."""
        return type(value)(value.line, tuple(self.value(a, where) for a in value.args),
                           {k: self.value(v, where) for k, v in value.kwargs.items()})

    def _wrap(self, func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def rewritten(*args: Any, **kwargs: Any) -> Any:
            return self.value(func(*args, **kwargs), None)

        return rewritten
