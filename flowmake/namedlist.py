"""Value types shared by the rule language and the engine.

``NamedList`` is Snakemake's ``Namedlist``: a list whose items (or ranges of items) also have names,
so ``input.reads``, ``input[0]`` and ``str(input)`` (space-joined) all work. ``Flagged`` is a path
string carrying ``Flag``s (temp, protected, directory, ancient, touch, report, pipe, service, local) set by the helper
functions of the same name; a flag with arguments (``report(path, caption=...)``) keeps them as the
flag's data (``flag_data``). An input list also answers Snakemake's size questions
(``input.size_mb``, ``input.size_files``...), read from the files when asked.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from typing import AbstractSet, Any, Callable, Iterable, Iterator, Mapping


class Flag(enum.Enum):
    """A path flag; the value is the rule-file helper that sets it (and what ``Rule.as_data`` keeps)."""

    TEMP = "temp"
    PROTECTED = "protected"
    DIRECTORY = "directory"
    ANCIENT = "ancient"
    TOUCH = "touch"
    PIPE = "pipe"  # a named pipe between two steps that run at once (pipes.py)
    SERVICE = "service"  # made by a step that runs while its readers do (pipes.py)
    # An output a later HTML report lists; its arguments are the flag's data (a ReportSpec).
    # For everything else the file is an ordinary output.
    REPORT = "report"
    LOCAL = "local"  # kept as written: no module prefix, no default storage provider
    UPDATE = "update"  # an output the job changes in place: not removed before it runs
    BEFORE_UPDATE = "before_update"  # an input as it is now: no step is looked for to make it
    ENSURE = "ensure"  # checked after the job: not empty and/or this sha256 (an EnsureSpec)


@dataclass(frozen=True)
class ReportSpec:
    """What ``report(path, caption=..., ...)`` said about an output (Snakemake's ReportObject).

    ``caption`` is resolved against the folder of the rule file that called ``report()``, as
    Snakemake does; everything else is kept as given.
    """

    caption: str | None = None
    category: str | None = None
    subcategory: str | None = None
    labels: Any = None
    patterns: tuple[str, ...] = ()
    htmlindex: str | None = None


@dataclass(frozen=True)
class EnsureSpec:
    """``ensure(path, non_empty=True, sha256=...)``: what the output must be once its job ran;
    ``sha256`` is a hex digest or a function of the wildcards returning one."""

    non_empty: bool = False
    sha256: Any = None


class NamedList(list):
    """A list with named entries. A name covers one item (attribute returns the item) or a range."""

    # Slots, not a __dict__: a plan holds several of these per step, 100,000 steps at a time.
    __slots__ = ("_names", "_single")

    def __init__(self, items: Iterable[Any] = (), names: dict[str, tuple[int, int]] | None = None,
                 single: frozenset[str] | None = None) -> None:
        super().__init__(items)
        # name -> (start, end); names in `_single` return the item itself, others a sub-list.
        self._names: dict[str, tuple[int, int]] = names or {}
        self._single: AbstractSet[str] = single if single is not None else frozenset(
            n for n, (a, b) in self._names.items() if b - a == 1)

    @classmethod
    def _make(cls, items: list[Any], names: dict[str, tuple[int, int]],
              single: AbstractSet[str]) -> Any:
        """Hot-path constructor: ``names``/``single`` are shared, never mutated."""
        nl = list.__new__(cls)
        list.extend(nl, items)
        nl._names = names
        nl._single = single
        return nl

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[str | None, Any]]) -> NamedList:
        """Items from (name or None, value) pairs; each name covers exactly one item."""
        items: list[Any] = []
        names: dict[str, tuple[int, int]] = {}
        for name, value in pairs:
            if name is not None:
                names[name] = (len(items), len(items) + 1)
            items.append(value)
        return cls._make(items, names, frozenset(names))

    def _get_named(self, name: str) -> Any:
        start, end = self._names[name]
        if name in self._single:
            return list.__getitem__(self, start)
        return NamedList(list.__getitem__(self, slice(start, end)))

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails; list methods win except for names set via _names
        # (see __getattribute__ below for the shadowing rule).
        try:
            names = list.__getattribute__(self, "_names")
        except AttributeError:
            names = None
        if names is not None and name in names:
            return self._get_named(name)
        raise AttributeError(f"no entry named '{name}'") from None

    def __getattribute__(self, name: str) -> Any:
        # A declared name shadows a list method of the same name (input.index, params.count),
        # like Snakemake's setattr-based Namedlist.
        if name[0] != "_":
            try:
                names = list.__getattribute__(self, "_names")
            except AttributeError:
                names = None
            if names and name in names:
                return list.__getattribute__(self, "_get_named")(name)
        return list.__getattribute__(self, name)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            try:
                return self._get_named(key)
            except KeyError:
                raise KeyError(key) from None
        return list.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._names)

    def items(self) -> Iterator[tuple[str, Any]]:
        for name in self._names:
            yield name, self._get_named(name)

    def get(self, name: str, default: Any = None) -> Any:
        return self._get_named(name) if name in self._names else default

    def has_name(self, name: str) -> bool:
        return name in self._names

    # Snakemake's InputFiles sizes, for ``resources: mem_mb=lambda wc, input: 2 * input.size_mb``.
    # Read when asked (a missing file raises FileNotFoundError, as Snakemake's size does);
    # kb/mb/gb are binary units (1024), as in Snakemake.
    @property
    def size_files(self) -> list[int]:
        return [os.path.getsize(os.fspath(f)) for f in self]

    @property
    def size_files_kb(self) -> list[float]:
        return [f / 1024 for f in self.size_files]

    @property
    def size_files_mb(self) -> list[float]:
        return [f / 1024 ** 2 for f in self.size_files]

    @property
    def size_files_gb(self) -> list[float]:
        return [f / 1024 ** 3 for f in self.size_files]

    @property
    def size(self) -> int:
        return sum(self.size_files)

    @property
    def size_kb(self) -> float:
        return sum(self.size_files_kb)

    @property
    def size_mb(self) -> float:
        return sum(self.size_files_mb)

    @property
    def size_gb(self) -> float:
        return sum(self.size_files_gb)

    def __str__(self) -> str:
        return " ".join(map(str, self))

    def __repr__(self) -> str:
        if not self._names:
            return f"NamedList({list.__repr__(self)})"
        return f"NamedList({list.__repr__(self)}, names={self._names!r})"

    def __reduce__(self) -> Any:
        return (type(self), (list(self), dict(self._names), frozenset(self._single)))


class _Shared(NamedList):
    """The one empty list every step shares for a directive its rule does not use (most rules
    have no params, log or resources: 100,000 steps would otherwise make 300,000 empty lists)."""

    __slots__ = ()

    def _read_only(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("this list is shared by many steps and cannot be changed; copy it with list()")

    append = extend = insert = remove = pop = clear = sort = reverse = _read_only
    __setitem__ = __delitem__ = __iadd__ = __imul__ = _read_only

    def __reduce__(self) -> Any:
        return (NamedList, ((), {}, frozenset()))


EMPTY: NamedList = _Shared._make([], {}, frozenset())


class Wildcards(NamedList):
    """Wildcard values of one step: ``wildcards.sample``, ``wildcards["sample"]``, ``wildcards[0]``."""

    __slots__ = ()

    @classmethod
    def from_mapping(cls, values: Any, names: dict[str, tuple[int, int]] | None = None) -> Wildcards:
        """``names`` may be passed precomputed when it matches ``values``'s key order."""
        if names is not None:
            try:
                return cls._make([values[k] for k in names], names, names.keys())
            except KeyError:
                pass  # not the same names after all
        names = {k: (i, i + 1) for i, k in enumerate(values)}
        return cls._make([values[k] for k in names], names, names.keys())

    def __str__(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.items())


class Flagged(str):
    """A path string with flags, e.g. ``temp("a.txt")``; ``data`` holds a flag's arguments."""

    flags: frozenset[Flag]
    data: Mapping[Flag, Any]

    def __new__(cls, value: str, flags: frozenset[Flag],
                data: Mapping[Flag, Any] | None = None) -> Flagged:
        s = str.__new__(cls, value)
        s.flags = flags
        s.data = data or {}
        return s

    def __reduce__(self) -> Any:
        return (Flagged, (str(self), self.flags, dict(self.data)))


class FlaggedFunction:
    """An input/output function wrapped by a flag helper or ``unpack``; its results get the flags."""

    def __init__(self, func: Callable[..., Any], flags: frozenset[Flag], unpack: bool = False,
                 data: Mapping[Flag, Any] | None = None) -> None:
        self.func = func
        self.flags = flags
        self.unpack = unpack
        self.data = data or {}

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.func(*args, **kwargs)


_FLAG_NAMES = {f.value: f for f in Flag}


def flags_of(value: Any) -> frozenset[Flag]:
    flags = getattr(value, "flags", None)
    if isinstance(flags, dict):  # Snakemake's own AnnotatedString: ``from snakemake.io import temp``
        return frozenset(_FLAG_NAMES[k] for k, v in flags.items() if v and k in _FLAG_NAMES)
    return flags or frozenset()


def flag_data(value: Any, flag: Flag) -> Any:
    """The arguments a flag was given (``report``'s ReportSpec), or None."""
    return (getattr(value, "data", None) or {}).get(flag)


def add_flag(value: Any, flag: Flag, data: Any = None) -> Any:
    """Flag a path, every path of a list/dict, or the results of a function; ``data`` is the
    flag's arguments, kept beside it."""
    extra = {flag: data} if data is not None else {}
    if isinstance(value, FlaggedFunction):
        return FlaggedFunction(value.func, value.flags | {flag}, value.unpack, {**value.data, **extra})
    if callable(value) and not isinstance(value, str):
        return FlaggedFunction(value, frozenset({flag}), data=extra)
    if isinstance(value, dict):
        return {k: add_flag(v, flag, data) for k, v in value.items()}
    if isinstance(value, ExtensionList):  # temp(multiext(...)): the names stay
        return ExtensionList([add_flag(v, flag, data) for v in value], value.names)
    if isinstance(value, (list, tuple)):
        return [add_flag(v, flag, data) for v in value]
    old = getattr(value, "data", None) or {}
    return Flagged(os.fspath(value), flags_of(value) | {flag}, {**old, **extra} or None)


class ExtensionList(list):
    """``multiext("a", bam=".bam", bai=".bai")``: paths that become named items (``output.bam``)
    where a rule lists them; ``names[i]`` is the name of item i."""

    names: list[str]

    def __init__(self, items: Iterable[Any] = (), names: Iterable[str] = ()) -> None:
        super().__init__(items)
        self.names = list(names)
