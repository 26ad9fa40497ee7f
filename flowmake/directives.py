"""Evaluating a rule's directive values: the step between a parsed ``rules.Rule`` and its bound
``instance.Instance``.

Input/output/log entries are compiled to patterns once (``Entry``); plain (function-free) entry
lists get a precomputed ``Layout`` of named ranges so that formatting them for a step is one list
comprehension. Functions in input/params/threads/resources are called Snakemake's way: input
functions get the wildcards; the others get parameters by name (wildcards, input, output, threads,
resources, attempt). ``Flags`` is what a step's paths are flagged with (temp, protected...);
``RuleKind`` says which action directive a rule has.
"""

from __future__ import annotations

import enum
import inspect
import functools
import os
import re
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from flowmake import resource_units
from flowmake.errors import FlowmakeError, Location
from flowmake.namedlist import EMPTY, Flag, Flagged, FlaggedFunction, NamedList, Wildcards, flags_of
from flowmake.patterns import Bindings, Pattern

if TYPE_CHECKING:
    from flowmake.rules import Rule


class RuleKind(enum.Enum):
    """Which action a rule declares (``Rule.kind``)."""

    SHELL = "shell"
    RUN = "run"
    SCRIPT = "script"
    WRAPPER = "wrapper"
    NOTEBOOK = "notebook"
    TEMPLATE = "template_engine"  # renders its one template input to its one output (``templates``)
    NONE = "none"  # no action: a rule that only gathers inputs, or whose outputs are made elsewhere


class Flags(dict[str, frozenset[Flag]]):
    """path → flags; paths without flags read as the empty set."""

    def __missing__(self, key: str) -> frozenset[Flag]:
        return frozenset()


# What steps of a rule that can flag nothing share (``__missing__`` never stores, so reading it
# leaves it empty; only ``_build`` writes flags, and only into a Flags of its own).
NO_FLAGS = Flags()


class IncompleteCheckpoint(Exception):
    """An input function asked for the outputs of a checkpoint that has not finished.

    Not a FlowmakeError: the graph catches it and retries the step once the checkpoint has run.
    """

    def __init__(self, rule: str, outputs: tuple[str, ...]) -> None:
        super().__init__(f"checkpoint '{rule}' has not finished: {', '.join(outputs)}")
        self.rule = rule
        self.outputs = outputs


# A resource whose function read an input that does not exist yet (``input.size_mb`` before the
# upstream step ran): Snakemake's ``<TBD>``. The scheduler evaluates the step's resources again
# when it is about to start it, when its inputs exist.
PENDING = resource_units.TBD


def has_pending(inst: Any) -> bool:
    """Whether a resource or a param waits for an input still to be made (evaluated again then)."""
    for values in (getattr(inst, "resources", None) or (), getattr(inst, "params", None) or ()):
        if any(v is PENDING for v in values):
            return True
    return False


class Entry:
    """One declared input/output/log item: a named or unnamed pattern, list of patterns, or function."""

    __slots__ = ("name", "texts", "flags", "data", "func", "unpack", "single", "patterns")

    def __init__(self, name: str | None, value: Any, directive: str, allow_functions: bool) -> None:
        self.name = name
        self.func: Callable[..., Any] | None = None
        self.unpack = False
        self.patterns: list[Pattern] = []
        self.texts: list[str] = []
        self.flags: list[frozenset[Flag]] = []
        self.data: list[dict[Flag, Any]] = []  # each text's flag arguments (ensure's EnsureSpec)
        self.single = False
        if callable(value) and not isinstance(value, (str, os.PathLike)):
            if not allow_functions:
                raise ValueError(f"{directive} cannot be a function")
            self.func = value
            if isinstance(value, FlaggedFunction):
                self.unpack = value.unpack
            if self.unpack and name is not None:  # Snakemake refuses it too
                raise ValueError(f"a named {directive} ({name}=) cannot be unpack()ed")
            return
        self.single = isinstance(value, (str, os.PathLike))
        if allow_functions and not self.single and isinstance(value, Iterable) \
                and not isinstance(value, dict):
            parts = _flatten_keeping_functions(value)
            if any(callable(p) and not isinstance(p, (str, os.PathLike)) for p in parts):
                # Snakemake: a function inside an input list is an input function of its own
                # (``rules.other.input`` of a rule whose input is a function, say).
                self.func = _MixedItems(parts)
                return
        for item in flatten(value, directive):
            self.texts.append(os.fspath(item))
            self.flags.append(flags_of(item))
            self.data.append(getattr(item, "data", None) or {})

    def declared(self) -> list[Any]:
        return [self.func] if self.func is not None else list(self.texts)


def _flatten_keeping_functions(value: Any) -> list[Any]:
    if isinstance(value, (str, os.PathLike)) or callable(value) or not isinstance(value, Iterable) \
            or isinstance(value, dict):
        return [value]
    return [p for v in value for p in _flatten_keeping_functions(v)]


class _MixedItems:
    """An input list holding paths and functions: called with the wildcards, it gives the paths
    with each function's results in its place (flagged as that function is)."""

    def __init__(self, parts: list[Any]) -> None:
        self.parts = parts

    def __call__(self, wc: Any) -> list[Any]:
        out: list[Any] = []
        for p in self.parts:
            if not callable(p) or isinstance(p, (str, os.PathLike)):
                out.append(p)
                continue
            if isinstance(p, FlaggedFunction) and p.unpack:
                raise ValueError("an unpack() input function cannot be an item of an input list")
            extra = flags_of(p)
            for v in flatten(_applied(p, wc), "input function result"):
                out.append(Flagged(os.fspath(v), flags_of(v) | extra) if extra else v)
        return out


# Snakemake applies a function an input function returns (``expand()`` over a function's
# values), up to ten times.
_MAX_NESTED = 10


def _applied(func: Callable[..., Any], wc: Any) -> Any:
    result: Any = func
    for _ in range(_MAX_NESTED):
        result = result(wc)
        if not callable(result) or isinstance(result, (str, os.PathLike)):
            return result
    raise ValueError(f"input functions returned functions {_MAX_NESTED} times over; "
                     "does one return a function instead of calling it?")


def flatten(value: Any, directive: str) -> list[Any]:
    if isinstance(value, (str, os.PathLike)):
        return [value]
    if isinstance(value, dict):
        raise ValueError(f"{directive} got a dict; use named items (name=value) or unpack()")
    if isinstance(value, Iterable):
        out: list[Any] = []
        for v in value:
            out.extend(flatten(v, directive))
        return out
    raise ValueError(f"{directive} items must be paths, got {type(value).__name__} {value!r}")


class Layout:
    """Precomputed shape of a function-free entry list: patterns, named ranges, flagged positions."""

    __slots__ = ("patterns", "names", "single", "flagged", "_templates")

    def __init__(self, entries: list[Entry]) -> None:
        self.patterns: list[Pattern] = []
        self.names: dict[str, tuple[int, int]] = {}
        single: set[str] = set()
        self.flagged: list[tuple[int, frozenset[Flag]]] = []
        for e in entries:
            start = len(self.patterns)
            for p, f in zip(e.patterns, e.flags):
                if f:
                    self.flagged.append((len(self.patterns), f))
                self.patterns.append(p)
            if e.name is not None:
                self.names[e.name] = (start, len(self.patterns))
                if e.single:
                    single.add(e.name)
        self.single = frozenset(single)
        # Each pattern as str.format_map over the raw values (None if one cannot be): formatting
        # every input and output of every step is most of what instantiating a step costs.
        templates = [p.format_template() for p in self.patterns]
        self._templates = None if None in templates else [t.format_map for t in templates]  # type: ignore[union-attr]  # no None here

    def format(self, b: Bindings, flags: Flags) -> NamedList:
        if not self.patterns:
            return EMPTY
        paths = None
        if self._templates is not None:
            raw = b._raw
            try:
                paths = [f(raw) for f in self._templates]
            except KeyError:  # a wildcard without a value: Pattern.format says which
                pass
        if paths is None:
            paths = [p.format(b) for p in self.patterns]
        for i, f in self.flagged:
            flags[paths[i]] = flags[paths[i]] | f
        return NamedList._make(paths, self.names, self.single)


def call_plan(func: Callable[..., Any], available: Iterable[str]) -> list[tuple[str, str]] | None:
    """How to call a params/threads/resources function: [(parameter, source)], or None for f(wc).

    Like Snakemake, parameters are matched by name and a first parameter with another name gets the
    wildcards. A required parameter we cannot supply maps to source "?" (an error when called).
    """
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        return None
    names = set(available)
    plan: list[tuple[str, str]] = []
    for i, p in enumerate(params):
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.name in names:
            plan.append((p.name, p.name))
        elif i == 0:
            plan.append((p.name, "wildcards"))
        elif p.default is p.empty:
            plan.append((p.name, "?"))
    return plan


_PARAMS_ARGS = ("wildcards", "input", "output", "threads", "resources")
_THREADS_ARGS = ("wildcards", "input", "attempt")
_RESOURCES_ARGS = ("wildcards", "input", "threads", "attempt")
_PRIORITY_ARGS = ("wildcards", "input", "attempt", "rulename")


def as_priority(rule: Rule, value: Any) -> float:
    """A priority: a number (an int or a float, as Snakemake allows)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise rule.error(f"priority must be a number, got {value!r}")
    return value


def eval_priority(rule: Rule, func: Callable[..., Any], wc: Wildcards, input: NamedList,
                  attempt: int) -> float:
    available = {"wildcards": wc, "input": input, "attempt": attempt, "rulename": rule.name}
    return as_priority(rule, call(rule, "priority", func, available, _PRIORITY_ARGS))


def call(rule: Rule, what: str, func: Callable[..., Any], available: Mapping[str, Any],
         names: tuple[str, ...], pending_ok: bool = False) -> Any:
    """``func`` called with the arguments it names; a function it returns is called in turn
    (``lambda w, input: parse_input(...)``), at most 10 deep, as Snakemake does."""
    value = _call_once(rule, what, func, available, names, pending_ok)
    for _ in range(9):
        if not callable(value) or isinstance(value, type):
            return value
        # Not cached by id: the returned function is transient, and its id is soon reused.
        value = _call_once(rule, what, value, available, names, pending_ok, cached=False)
    if callable(value) and not isinstance(value, type):
        raise rule.error(f"{what} function returned functions 10 levels deep",
                         hint="does it return a function instead of calling it?")
    return value


def _call_once(rule: Rule, what: str, func: Callable[..., Any], available: Mapping[str, Any],
               names: tuple[str, ...], pending_ok: bool, cached: bool = True) -> Any:
    key = id(func)
    if not cached:
        plan = call_plan(func, names)
    else:
        if key not in rule._plans:
            rule._plans[key] = call_plan(func, names)
        plan = rule._plans[key]
    try:
        if plan is None:
            return func(available["wildcards"])
        unknown = [p for p, src in plan if src == "?"]
        if unknown:
            raise rule.error(f"{what} function takes unknown argument(s): {', '.join(unknown)}",
                             hint="allowed: " + ", ".join(names))
        return func(**{p: available[src] for p, src in plan})
    except (FlowmakeError, IncompleteCheckpoint):
        raise
    except Exception as e:  # user code: report without a traceback, at the rule
        if pending_ok and _input_missing(e, available.get("input") or ()):
            return PENDING
        raise rule.error(f"{what} function raised {type(e).__name__}: {e}") from None


def _input_missing(e: Exception, inputs: Any) -> bool:
    """Whether a function may have failed for want of an input still to be made (then it is
    asked again just before the job, as Snakemake evaluates resources lazily): the file it could
    not open is an input, or whatever it raised, one of the step's inputs does not exist yet."""
    if isinstance(e, FileNotFoundError) and e.filename is not None \
            and os.path.normpath(os.fspath(e.filename)) in map(os.path.normpath, inputs):
        return True
    return any(not os.path.lexists(p) for p in inputs)


def eval_io(rule: Rule, entries: list[Entry], b: Bindings, wc: Wildcards, flags: Flags,
            what: str) -> NamedList:
    if rule._in_layout is not None:
        return rule._in_layout.format(b, flags)
    items: list[str] = []
    names: dict[str, tuple[int, int]] = {}
    single: set[str] = set()
    for e in entries:
        start = len(items)
        if e.func is None:
            for p, f in zip(e.patterns, e.flags):
                items.append(add(p.format(b), f, flags))
            is_single = e.single
        else:
            result = call_input(rule, e.func, wc)
            if e.unpack and not isinstance(result, (list, dict)):
                raise rule.error(f"an unpack() input function must return a list or a dict, "
                                 f"not {type(result).__name__}")
            if e.unpack and isinstance(result, dict):
                for k, v in result.items():
                    s = len(items)
                    one = extend(rule, items, v, flags_of(e.func), flags, b)
                    names[k] = (s, len(items))
                    if one:
                        single.add(k)
                continue
            is_single = extend(rule, items, result, flags_of(e.func), flags, b)
        if e.name is not None:
            names[e.name] = (start, len(items))
            if is_single:
                single.add(e.name)
    return NamedList._make(items, names, single)


def _names_groupid(func: Callable[..., Any]) -> bool:
    try:
        return "groupid" in inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False


def call_input(rule: Rule, func: Callable[..., Any], wc: Wildcards) -> Any:
    if isinstance(func, FlaggedFunction):
        func = func.func
    key = ("input", id(func))
    if key not in rule._plans:  # Snakemake also passes groupid= when the function names it
        rule._plans[key] = [("groupid", "groupid")] if _names_groupid(func) else None
    try:
        # flowmake runs no group jobs: every job is Snakemake's "local" group.
        first = functools.partial(func, groupid="local") if rule._plans[key] else func
        return _applied(first, wc)
    except FlowmakeError as e:
        if e.location is None:  # e.g. a bad storage URL the function built: at its line
            e.location, e.rule = Location(rule.location.file, _line_in(e, rule.location)), e.rule or rule.name
        raise
    except IncompleteCheckpoint:
        raise
    except Exception as exc:
        raise rule.error(f"input function raised {type(exc).__name__}: {exc}") from None


def _line_in(e: BaseException, where: Location) -> int | None:
    """The line of the deepest traceback frame in the rule file (the rule's own line if none)."""
    line, tb = where.line, e.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == where.file:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def add(path: str, f: frozenset[Flag], flags: Flags) -> str:
    if f:
        flags[path] = flags[path] | f
    return path


def extend(rule: Rule, items: list[str], result: Any, extra: frozenset[Flag], flags: Flags,
           b: Bindings | None = None) -> bool:
    """Append an input function's result; True if it was a single path. Like Snakemake, a
    returned path's {wildcards} are filled in (``branch(..., then="x/{sample}.txt")``)."""
    if isinstance(result, dict):
        raise rule.error("input function returned a dict; wrap the function with unpack()")
    try:
        values = flatten(result, "input function result")
    except ValueError as e:
        raise rule.error(str(e)) from None
    for v in values:
        path = os.fspath(v)
        if b is not None and "{" in path:
            path = _fill_wildcards(rule, path, b)
        items.append(add(path, flags_of(v) | extra, flags))
    return isinstance(result, (str, os.PathLike))


# A wildcard field as Snakemake's apply_wildcards finds it: {name} or {name,regex}.
_FIELD = re.compile(r"\{\s*(\w+?)(?:\s*,\s*(?:[^{}]+|\{\d+(?:,\d+)?\})*)?\s*\}")


def _fill_wildcards(rule: Rule, path: str, b: Bindings) -> str:
    def value(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in b:
            raise rule.error(f"input function returned {path!r}: {{{name}}} is not a wildcard "
                             f"of rule '{rule.name}'")
        return b.raw(name)
    return _FIELD.sub(value, path)

# The three below are called by Rule._build only when the rule needs them evaluated (threads
# a function, some resources, some params); _build handles the constant and empty cases inline.


def eval_threads(rule: Rule, wc: Wildcards, input: NamedList, attempt: int) -> int:
    threads = rule._threads
    if callable(threads):
        threads = call(rule, "threads", threads,
                       {"wildcards": wc, "input": input, "attempt": attempt}, _THREADS_ARGS)
    return as_threads(rule, threads)


def as_threads(rule: Rule, value: Any) -> int:
    """Threads as Snakemake takes them: a float is rounded (``workflow.cores * 0.75``)."""
    return as_int(rule, "threads", round(value) if isinstance(value, float) else value)


def eval_resources(rule: Rule, wc: Wildcards, input: NamedList, threads: int,
                   attempt: int) -> NamedList:
    values: list[tuple[str | None, Any]] = []
    available = None
    for name, v in rule._resources:
        if callable(v):
            available = available or {"wildcards": wc, "input": input, "threads": threads,
                                      "attempt": attempt}
            v = call(rule, f"resources '{name}'", v, available, _RESOURCES_ARGS, pending_ok=True)
        values.append((name, v))
    try:
        return NamedList.from_pairs(resource_units.normalize(values))
    except resource_units.UnitError as e:
        raise rule.error(f"resources: {e}") from None


def eval_params(rule: Rule, b: Bindings, wc: Wildcards, inst: Any) -> NamedList:
    values: list[tuple[str | None, Any]] = []
    available = None
    for i, (name, v) in enumerate(rule._params):
        if callable(v):
            available = available or {"wildcards": wc, "input": inst.input,
                                      "output": inst.output, "threads": inst.threads,
                                      "resources": inst.resources}
            # Like resources: a function that reads an input made in this run waits for it; the
            # step's key (params included) is taken when it starts, so it holds the real value.
            v = call(rule, f"params '{name}'", v, available, _PARAMS_ARGS, pending_ok=True)
        elif i in rule._param_strs:
            v = rule._param_strs[i].format(b)
        values.append((name, v))
    return NamedList.from_pairs(values)


def as_int(rule: Rule, what: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise rule.error(f"{what} must be an integer, got {value!r}")
    return value
