"""Functions a rule file can call: expand, glob_wildcards, multiext, unpack and the path flags.

They behave like Snakemake's. ``glob_wildcards`` needs the workflow's directory (loading never
changes the process's cwd), so ``namespace_helpers(workdir)`` returns the set bound to one workflow.
"""

from __future__ import annotations

import collections
import itertools
import os
import re
import string
from pathlib import Path
from typing import Any, Callable, Iterable

from flowmake.errors import FlowfileError, UnsafeWildcardError, WildcardError
from flowmake.namedlist import Flag, FlaggedFunction, add_flag, flags_of
from flowmake.patterns import WILDCARD_RE, Pattern


def temp(value: Any) -> Any:
    return add_flag(value, Flag.TEMP)


def protected(value: Any) -> Any:
    return add_flag(value, Flag.PROTECTED)


def directory(value: Any) -> Any:
    return add_flag(value, Flag.DIRECTORY)


def ancient(value: Any) -> Any:
    return add_flag(value, Flag.ANCIENT)


def touch(value: Any) -> Any:
    return add_flag(value, Flag.TOUCH)


def pipe(value: Any) -> Any:
    """A named pipe: its producer and its one reader run at once (Snakemake's ``pipe``)."""
    if Flag.PROTECTED in flags_of(value) or Flag.DIRECTORY in flags_of(value):
        raise FlowfileError("a pipe() output cannot be protected() or a directory()")
    return add_flag(value, Flag.PIPE)


def service(value: Any) -> Any:
    """A file a running step serves to the steps that read it; stopped once they are done."""
    if Flag.PROTECTED in flags_of(value):
        raise FlowfileError("a service() output cannot be protected()")
    return add_flag(value, Flag.SERVICE)


def unpack(func: Callable[..., Any]) -> FlaggedFunction:
    """Mark an input function whose dict (or list) result becomes named (or plain) inputs."""
    if isinstance(func, FlaggedFunction):
        return FlaggedFunction(func.func, func.flags, unpack=True)
    return FlaggedFunction(func, frozenset(), unpack=True)


def multiext(prefix: str, *extensions: str) -> list[str]:
    """``multiext("a", ".bam", ".bai")`` → ``["a.bam", "a.bai"]``."""
    for ext in extensions:
        if "/" in ext or not ext.startswith("."):
            raise ValueError(f"multiext: extension {ext!r} must start with '.' and contain no '/'")
    return [os.fspath(prefix) + ext for ext in extensions]


class _Missing(dict):
    """format_map dict for expand(allow_missing=True): unknown wildcards are written back."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


_FIELD_NAME = re.compile(r"\{([^{}.\[!:,]+)")


def _is_escaped(pattern: str, start: int) -> bool:
    """True if the '{' at ``start`` is the second half of an escaped ``{{``."""
    k = start
    while k > 0 and pattern[k - 1] == "{":
        k -= 1
    return (start - k) % 2 == 1


def _fields(pattern: str) -> list[str]:
    names: list[str] = []
    try:
        parsed = list(string.Formatter().parse(pattern))
    except ValueError:  # a constraint with braces of its own ({n,\d{3}}): str.format cannot parse it
        for m in WILDCARD_RE.finditer(pattern):
            if not _is_escaped(pattern, m.start()) and m.group("name") not in names:
                names.append(m.group("name"))
        return names
    for literal, field, spec, conv in parsed:
        if field is not None:
            fm = _FIELD_NAME.match("{" + field)
            if fm and fm.group(1) not in names:
                names.append(fm.group(1))
    return names


def expand(*args: Any, allow_missing: bool = False, **wildcards: Any) -> list[str]:
    """Snakemake's expand: ``expand(patterns, [combinator,] allow_missing=False, **wildcards)``."""
    if not args:
        raise TypeError("expand() needs at least one pattern")
    patterns_arg, combinator = args[0], itertools.product
    if len(args) == 2:
        combinator = args[1]
    elif len(args) > 2:
        raise TypeError("expand() takes patterns and an optional combinator")
    patterns = [patterns_arg] if isinstance(patterns_arg, (str, os.PathLike)) else list(patterns_arg)
    values = {k: [v] if isinstance(v, (str, os.PathLike)) or not isinstance(v, Iterable) else list(v)
              for k, v in wildcards.items()}
    out: list[str] = []
    for pattern in (os.fspath(p) for p in patterns):
        names = [n for n in _fields(pattern) if n in values]
        missing = [n for n in _fields(pattern) if n not in values]
        if missing and not allow_missing:
            raise WildcardError(f"expand: no values for wildcard(s) {', '.join(missing)} in "
                                f"'{pattern}'", hint="pass them, or allow_missing=True")
        lists = [[(n, v) for v in values[n]] for n in names]
        for combo in combinator(*lists):
            fmt = _Missing(combo) if allow_missing else dict(combo)
            out.append(_format(pattern, fmt, allow_missing))
    return out


def _format(pattern: str, values: dict[str, Any], allow_missing: bool) -> str:
    if not allow_missing:
        return pattern.format_map(values)
    # A missing wildcard may carry a constraint/type ({s,\d+}); write it back verbatim.
    # A ``{{name}}`` the user escaped is literal text, not a wildcard: leave it for format_map.
    def repl(m: re.Match) -> str:
        name = m.group("name")
        if name in values or _is_escaped(m.string, m.start()):
            return m.group(0)
        return m.group(0).replace("{", "{{").replace("}", "}}")
    protected_pattern = WILDCARD_RE.sub(repl, pattern)
    return protected_pattern.format_map(values)


def glob_wildcards_in(workdir: str, pattern: str, files: Iterable[str] | None = None) -> Any:
    """The wildcard values of existing files matching ``pattern``, as a namedtuple of lists."""
    pat = Pattern(os.fspath(pattern))
    names = pat.wildcards
    Result = collections.namedtuple("Wildcards", names)  # type: ignore[misc]  # the field names are known only at run time
    found: dict[str, list[str]] = {n: [] for n in names}
    for path in _candidates(workdir, pat) if files is None else files:
        try:
            b = pat.match(os.fspath(path))
        except UnsafeWildcardError as e:  # a file name is anyone's choice, like a target
            raise UnsafeWildcardError(f"file {e.path!r} found by glob_wildcards({pat.text!r}): {e.message}",
                                      wildcard=e.wildcard, value=e.value, path=e.path,
                                      pattern=e.pattern, hint=e.hint) from None
        if b is not None:
            for n in names:
                found[n].append(b.raw(n))
    return Result(*(found[n] for n in names))


def _candidates(workdir: str, pat: Pattern) -> Iterable[str]:
    prefix = pat.text.split("{", 1)[0]
    top = os.path.dirname(prefix) or "."
    root = top if os.path.isabs(top) else os.path.join(workdir, top)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        rel = os.path.relpath(dirpath, root)
        base = top if rel == "." else os.path.join(top, rel)
        for f in itertools.chain(filenames, dirnames):
            path = os.path.join(base, f)
            yield os.path.normpath(path) if top != "." else os.path.relpath(path, ".")


def namespace_helpers(workdir: Callable[[], str]) -> dict[str, Any]:
    def glob_wildcards(pattern: str, files: Iterable[str] | None = None) -> Any:
        return glob_wildcards_in(workdir(), pattern, files)

    return {
        "expand": expand, "glob_wildcards": glob_wildcards, "multiext": multiext,
        "unpack": unpack, "temp": temp, "protected": protected, "directory": directory,
        "ancient": ancient, "touch": touch, "Path": Path,
        "pipe": pipe, "service": service,
        # benchmark: repeat("file", n): Snakemake runs the job n times; one measurement serves here.
        "repeat": lambda path, n: path,
    }
