"""Functions a rule file can call: expand/collect, glob_wildcards, multiext, unpack and the path
flags (temp/temporary, protected, directory, ancient, touch, report).

They behave like Snakemake 9's. ``glob_wildcards`` needs the workflow's directory (loading never
changes the process's cwd) and ``report`` the folder of the file calling it, so
``namespace_helpers(workdir, basedir)`` returns the set bound to one workflow; the input-function
helpers (lookup, branch, evaluate, exists) are in ``lookup``.
"""

from __future__ import annotations

import collections
import functools
import itertools
import os
import re
import string
from pathlib import Path
from typing import Any, Callable, Iterable

from flowmake.errors import FlowfileError, UnsafeWildcardError, WildcardError
from flowmake.flowfile.paths import local
from flowmake.namedlist import (EnsureSpec, ExtensionList, Flag, FlaggedFunction, ReportSpec,
                                add_flag, flags_of)
from flowmake.patterns import WILDCARD_RE, Pattern


def temp(value: Any, group_jobs: bool = False) -> Any:
    # group_jobs (node-local scratch for grouped jobs) has no meaning without job groups.
    if _has(value, Flag.PROTECTED):
        raise FlowfileError("temp() and protected() cannot both flag one file")
    return add_flag(value, Flag.TEMP)


def temporary(value: Any) -> Any:
    """Snakemake's alias of ``temp``."""
    return temp(value)


def _has(value: Any, flag: Flag) -> bool:
    return flag in flags_of(value)


def protected(value: Any) -> Any:
    if _has(value, Flag.TEMP):
        raise FlowfileError("temp() and protected() cannot both flag one file")
    return add_flag(value, Flag.PROTECTED)


def directory(value: Any) -> Any:
    return add_flag(value, Flag.DIRECTORY)


def ancient(value: Any) -> Any:
    return add_flag(value, Flag.ANCIENT)


def touch(value: Any) -> Any:
    return add_flag(value, Flag.TOUCH)


def report(value: Any, caption: Any = None, category: str | None = None,
           subcategory: str | None = None, labels: Any = None, patterns: Iterable[str] = (),
           htmlindex: str | None = None, *, _basedir: str = "") -> Any:
    """An output a later HTML report lists; the run treats it as an ordinary output.

    The arguments are kept as the flag's data (``namedlist.ReportSpec``); a relative caption is
    resolved against the folder of the rule file that calls ``report()``, as in Snakemake.
    """
    if caption is not None and not os.path.isabs(os.fspath(caption)):
        caption = os.path.normpath(os.path.join(_basedir, os.fspath(caption)))
    spec = ReportSpec(None if caption is None else os.fspath(caption), category, subcategory,
                      labels, tuple(patterns), htmlindex)
    return add_flag(value, Flag.REPORT, spec)


def update(value: Any) -> Any:
    """An output its job updates in place (Snakemake's ``update``): kept, not removed, before the
    job runs."""
    return add_flag(value, Flag.UPDATE)


def before_update(value: Any) -> Any:
    """An input read as it is before a step updates it (Snakemake's ``before_update``): no step
    is looked for to make it, so a rule may read the file it updates()."""
    return add_flag(value, Flag.BEFORE_UPDATE)


def ensure(value: Any, non_empty: bool = False, sha256: Any = None) -> Any:
    """An output checked once its job ran (Snakemake's ``ensure``): the job fails when the file
    is empty (``non_empty=True``) or its SHA-256 differs (a hex string or a function of the
    wildcards), as when it is missing."""
    return add_flag(value, Flag.ENSURE, EnsureSpec(bool(non_empty), sha256))


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
    """Mark an input function whose dict (or list) result becomes named (or plain) inputs.

    Snakemake accepts ``unpack(value)`` for any value but fails later, when the rule is used,
    unless it was a function ("Can only use unpack() on list and dict"); this says so at once.
    """
    if isinstance(func, FlaggedFunction):
        return FlaggedFunction(func.func, func.flags, unpack=True, data=func.data)
    if not callable(func) or isinstance(func, (str, os.PathLike)):
        raise FlowfileError(f"unpack() takes an input function, not {type(func).__name__}",
                            hint="write a dict's items as named inputs (**d) and a list as it is")
    return FlaggedFunction(func, frozenset(), unpack=True)


def multiext(prefix: Any, *extensions: str, **named: str) -> list[str]:
    """``multiext("a", ".bam", ".bam.bai")`` → ``["a.bam", "a.bam.bai"]``; any suffix without a
    path separator (``_peaks.xls``). Named (``multiext("a", bam=".bam")``), the paths become named
    items of the rule's input or output (``output.bam``)."""
    if extensions and named or not (extensions or named):
        raise FlowfileError("multiext takes all extensions named or all unnamed, at least one")
    for ext in (*extensions, *named.values()):
        if not isinstance(ext, str) or "/" in ext or "\\" in ext:
            raise FlowfileError(f"multiext: extension {ext!r} may not contain a path separator (/ or \\)")
    base = os.fspath(prefix)
    if named:
        return ExtensionList([base + ext for ext in named.values()], named)
    return [base + ext for ext in extensions]


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


def expand(*args: Any, allow_missing: bool = False, **wildcards: Any) -> Any:
    """Snakemake's expand: ``expand(patterns, [combinator,] allow_missing=False, **wildcards)``.

    Values are consumed as Snakemake consumes them: per pattern, in order, so an iterator or
    generator passed once is used up by the first pattern that names its wildcard. A string or a
    namedtuple (one ``lookup`` row) is one value. A function among the values makes the whole
    expansion an input function, evaluated with the step's wildcards.
    """
    if not args:
        raise TypeError("expand() needs at least one pattern")
    patterns_arg, combinator = args[0], itertools.product
    if len(args) == 2:
        combinator = args[1]
    elif len(args) > 2:
        raise TypeError("expand() takes patterns and an optional combinator")
    patterns = [patterns_arg] if isinstance(patterns_arg, (str, os.PathLike)) else list(patterns_arg)
    for p in patterns:
        if flags_of(p):
            raise FlowfileError(f"flags in the pattern '{os.fspath(p)}' given to expand() are not "
                                "allowed", hint="flag the result instead: temp(expand(...))")
    callables = [k for k, v in wildcards.items()
                 if callable(v) or isinstance(v, list) and any(callable(x) for x in v)]
    if callables:
        def deferred(wc: Any) -> list[str]:
            values = dict(wildcards)
            for k in callables:
                v = values[k]
                values[k] = v(wc) if callable(v) else [x(wc) if callable(x) else x for x in v]
            return _expand(patterns, combinator, allow_missing, values)
        return deferred
    return _expand(patterns, combinator, allow_missing, wildcards)


def _values(v: Any) -> Iterable[Any]:
    if isinstance(v, (str, os.PathLike)) or not isinstance(v, Iterable) or _is_namedtuple(v):
        return [v]
    return v


def _is_namedtuple(v: Any) -> bool:
    return isinstance(v, tuple) and hasattr(v, "_fields")


def _expand(patterns: list[Any], combinator: Callable[..., Any], allow_missing: bool,
            wildcards: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for pattern in (os.fspath(p) for p in patterns):
        fields = _fields(pattern)
        names = [n for n in fields if n in wildcards]
        missing = [n for n in fields if n not in wildcards]
        if missing and not allow_missing:
            raise WildcardError(f"expand: no values for wildcard(s) {', '.join(missing)} in "
                                f"'{pattern}'", hint="pass them, or allow_missing=True")
        # One list per wildcard, made now: this is where an iterator is consumed.
        lists = [[(n, v) for v in _values(wildcards[n])] for n in names]
        for combo in combinator(*lists):
            fmt = _Missing(combo) if allow_missing else dict(combo)
            out.append(_format(pattern, fmt, allow_missing))
    return out


collect = expand  # Snakemake's name for expand when gathering the outputs of earlier jobs


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


def _no_op_flag(value: Any) -> Any:
    """A Snakemake flag with nothing to do here (storage access patterns, ``local``)."""
    return value


class _Access:
    """``access.sequential`` / ``.random`` / ``.multi``: hints for storage plugins (none here)."""

    sequential = random = multi = staticmethod(_no_op_flag)


def flatten(items: Iterable[Any]) -> list[str]:
    """Snakemake's ``flatten``: nested lists to one list of strings."""
    out: list[str] = []
    for i in items:
        out.extend(flatten(i) if isinstance(i, list) else [str(i)])
    return out


def subpath(path_or_func: Any, strip_suffix: str | None = None, with_suffix: str | None = None,
            basename: bool = False, parent: bool = False, ancestor: int | None = None) -> Any:
    """Snakemake's ``subpath``: part of a path (or of what a function returns), e.g.
    ``params: prefix=subpath(output[0], strip_suffix=".bam")``."""
    if basename and (parent or ancestor is not None) or parent and ancestor is not None:
        raise FlowfileError("subpath: basename, parent and ancestor exclude each other")
    if ancestor is not None and ancestor < 1:
        raise FlowfileError("subpath: ancestor must be at least 1")

    def do(path: Any) -> str:
        if not isinstance(path, (str, os.PathLike)):
            raise ValueError(f"subpath takes one path (or a function returning one), got {path!r}")
        p = os.fspath(path)
        if strip_suffix is not None:
            if not p.endswith(strip_suffix):
                raise ValueError(f"subpath: {p} does not end with {strip_suffix}")
            p = p[:-len(strip_suffix)]
        if with_suffix is not None:
            p += with_suffix
        if basename:
            return os.path.basename(p)
        for _ in range(1 if parent else ancestor or 0):
            p = os.path.dirname(p) or "."
        return p

    if callable(path_or_func) and not isinstance(path_or_func, (str, os.PathLike)):
        # Same signature as the wrapped function, so params get the arguments it names.
        @functools.wraps(path_or_func)
        def inner(*args: Any, **kwargs: Any) -> str:
            return do(path_or_func(*args, **kwargs))
        return inner
    return do(path_or_func)


def namespace_helpers(workdir: Callable[[], str], basedir: Callable[[], str]) -> dict[str, Any]:
    """The helpers of one workflow: ``workdir()`` is its working directory, ``basedir()`` the
    folder of the rule file being executed."""
    from flowmake.flowfile import lookup

    def glob_wildcards(pattern: str, files: Iterable[str] | None = None,
                       followlinks: bool = False) -> Any:
        return glob_wildcards_in(workdir(), pattern, files)

    def report_(value: Any, caption: Any = None, category: str | None = None,
                subcategory: str | None = None, labels: Any = None, patterns: Iterable[str] = (),
                htmlindex: str | None = None) -> Any:
        return report(value, caption, category, subcategory, labels, patterns, htmlindex,
                      _basedir=basedir())

    return {
        "expand": expand, "collect": collect, "glob_wildcards": glob_wildcards,
        "multiext": multiext, "unpack": unpack, "temp": temp, "temporary": temporary,
        "protected": protected, "directory": directory, "ancient": ancient, "touch": touch,
        "report": report_, "Path": Path, "flatten": flatten, "subpath": subpath,
        "pipe": pipe, "service": service, "ensure": ensure,
        "update": update, "before_update": before_update,
        # benchmark: repeat("file", n): Snakemake runs the job n times; one measurement serves here.
        "repeat": lambda path, n: path,
        "local": local, "access": _Access(),
        "lookup": lookup.lookup, "branch": lookup.branch, "evaluate": lookup.evaluate,
        "exists": lookup.exists_in(workdir),
    }
