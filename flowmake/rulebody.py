"""The directive values of one rule, compiled for fast instantiation (the base of ``rules.Rule``).

Input/output/log entries are compiled to patterns once; plain (function-free) entry lists get a
precomputed layout of named ranges so that formatting them for a step is one list comprehension.
Functions in input/params/threads/resources are called Snakemake's way: input functions get the
wildcards; the others get parameters by name (wildcards, input, output, threads, resources, attempt).
"""

from __future__ import annotations

import inspect
import os
from typing import Any, Callable, Iterable, Mapping

from flowmake.errors import FlowfileError, FlowmakeError, Location
from flowmake.namedlist import EMPTY, FlaggedFunction, NamedList, Wildcards, flags_of
from flowmake.patterns import Bindings, Pattern, wildcard_names


class Flags(dict):
    """path → flags; paths without flags read as the empty set."""

    def __missing__(self, key: str) -> frozenset[str]:
        return frozenset()


# What steps of a rule that can flag nothing share (``__missing__`` never stores, so reading it
# leaves it empty; only ``_build`` writes flags, and only into a Flags of its own).
NO_FLAGS = Flags()


class IncompleteCheckpointBase(Exception):
    """Base of rules.IncompleteCheckpoint, so this module can let it through untouched."""


class _Entry:
    """One declared input/output/log item: a named or unnamed pattern, list of patterns, or function."""

    __slots__ = ("name", "texts", "flags", "func", "unpack", "single", "patterns")

    def __init__(self, name: str | None, value: Any, directive: str, allow_functions: bool) -> None:
        self.name = name
        self.func: Callable[..., Any] | None = None
        self.unpack = False
        self.patterns: list[Pattern] = []
        self.texts: list[str] = []
        self.flags: list[frozenset[str]] = []
        self.single = False
        if callable(value) and not isinstance(value, (str, os.PathLike)):
            if not allow_functions:
                raise ValueError(f"{directive} cannot be a function")
            self.func = value
            if isinstance(value, FlaggedFunction):
                self.unpack = value.unpack
            return
        self.single = isinstance(value, (str, os.PathLike))
        for item in _flatten(value, directive):
            self.texts.append(os.fspath(item))
            self.flags.append(flags_of(item))

    def declared(self) -> list[Any]:
        return [self.func] if self.func is not None else list(self.texts)


def _flatten(value: Any, directive: str) -> list[Any]:
    if isinstance(value, (str, os.PathLike)):
        return [value]
    if isinstance(value, dict):
        raise ValueError(f"{directive} got a dict; use named items (name=value) or unpack()")
    if isinstance(value, Iterable):
        out: list[Any] = []
        for v in value:
            out.extend(_flatten(v, directive))
        return out
    raise ValueError(f"{directive} items must be paths, got {type(value).__name__} {value!r}")


class _Layout:
    """Precomputed shape of a function-free entry list: patterns, named ranges, flagged positions."""

    __slots__ = ("patterns", "names", "single", "flagged", "_templates")

    def __init__(self, entries: list[_Entry]) -> None:
        self.patterns: list[Pattern] = []
        self.names: dict[str, tuple[int, int]] = {}
        single: set[str] = set()
        self.flagged: list[tuple[int, frozenset[str]]] = []
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
        self._templates = None if None in templates else [t.format_map for t in templates]  # type: ignore[union-attr]

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


class RuleBody:
    def __init__(self, workflow: Any, name: str, location: Location, *, is_checkpoint: bool = False,
                 basedir: str = ".", input: Iterable[tuple[str | None, Any]] = (),
                 output: Iterable[tuple[str | None, Any]] = (),
                 log: Iterable[tuple[str | None, Any]] = (),
                 params: Iterable[tuple[str | None, Any]] = (),
                 resources: Iterable[tuple[str | None, Any]] = (), benchmark: Any = None,
                 threads: Any = 1, message: str | None = None, priority: int = 0, retries: int = 0,
                 shell: str | None = None, run: Callable[..., Any] | None = None,
                 run_source: str | None = None, script: str | None = None,
                 container: str | None = None, wildcard_constraints: Mapping[str, str] | None = None,
                 localrule: bool = False, default_target: bool = False, cache: bool = False) -> None:
        self.workflow = workflow
        self.name = name
        self.location = location
        self.is_checkpoint = is_checkpoint
        self.basedir = basedir
        try:
            self._input = [_Entry(n, v, "input", True) for n, v in input]
            self._output = [_Entry(n, v, "output", False) for n, v in output]
            self._log = [_Entry(n, v, "log", False) for n, v in log]
        except ValueError as e:
            raise self.error(str(e)) from None
        self._params = list(params)
        self._resources = list(resources)
        self._benchmark_text = os.fspath(benchmark) if benchmark is not None else None
        self._threads = threads
        self.message = message
        self.priority = _as_int(self, "priority", priority)
        self.retries = _as_int(self, "retries", retries)
        self.shell, self.run, self.run_source, self.script = shell, run, run_source, script
        self.container = container if container is not None else workflow.container
        self.wildcard_constraints = dict(wildcard_constraints or {})
        self._localrule = bool(localrule)
        self.default_target = bool(default_target)
        self.cache = bool(cache)
        self.has_functions = any(e.func is not None for e in self._input) or any(
            callable(v) for _, v in [*self._params, *self._resources]) or callable(threads)
        self._plans: dict[int, list[tuple[str, str]] | None] = {}
        self.output_patterns: list[Pattern] = []
        self.wildcard_names: tuple[str, ...] = ()

    def error(self, message: str, **kw: Any) -> FlowfileError:
        return FlowfileError(message, location=self.location, rule=self.name, **kw)

    def script_path(self) -> str:
        script = self.script or ""
        return script if os.path.isabs(script) else os.path.join(self.basedir, script)

    # -- load time ---------------------------------------------------------------------------

    def compile(self) -> None:
        wf = self.workflow
        constraints = {**wf.wildcard_constraints, **self.wildcard_constraints}
        try:
            for e in self._output:
                e.patterns = [Pattern(t, constraints, wf.wildcard_types) for t in e.texts]
            for e in [*self._input, *self._log]:
                e.patterns = [Pattern(t, None, wf.wildcard_types) for t in e.texts]
            self._benchmark = (Pattern(self._benchmark_text, None, wf.wildcard_types)
                               if self._benchmark_text is not None else None)
        except FlowmakeError as e:
            raise self.error(e.message, hint=e.hint) from None
        self.output_patterns = [p for e in self._output for p in e.patterns]
        self._check_wildcards()
        self._out_layout = _Layout(self._output)
        self._log_layout = _Layout(self._log)
        self._in_layout = (_Layout(self._input)
                           if all(e.func is None for e in self._input) else None)
        # Input functions may return flagged paths; otherwise only declared flags exist.
        self._may_flag = self._in_layout is None or any(
            lay.flagged for lay in (self._in_layout, self._out_layout, self._log_layout))
        self._threads_value = None if callable(self._threads) else _as_int(self, "threads", self._threads)
        self._param_strs = {i: Pattern(v, None, wf.wildcard_types)
                            for i, (_, v) in enumerate(self._params)
                            if isinstance(v, str) and wildcard_names(v)}
        for i, p in self._param_strs.items():
            missing = [w for w in p.wildcards if w not in self.wildcard_names]
            if missing:
                raise self.error(f"wildcards in params '{self._params[i][0]}' ('{p.text}') cannot be "
                                 f"determined from the output files: {', '.join(missing)}")

    def _check_wildcards(self) -> None:
        sets = {frozenset(p.wildcards) for p in self.output_patterns}
        if len(sets) > 1:
            raise self.error("all outputs of a rule must have the same wildcards: "
                             + "; ".join(p.text for p in self.output_patterns))
        self.wildcard_names = self.output_patterns[0].wildcards if self.output_patterns else ()
        self._wc_names = {k: (i, i + 1) for i, k in enumerate(self.wildcard_names)}
        known = set(self.wildcard_names)
        others = [p for e in [*self._input, *self._log] for p in e.patterns]
        others += [self._benchmark] if self._benchmark is not None else []
        for p in others:
            missing = [w for w in p.wildcards if w not in known]
            if missing:
                raise self.error(f"wildcards in '{p.text}' cannot be determined from the output "
                                 f"files: {', '.join(missing)}")
        # One wildcard, one type: a value matched as int must not be written into a date pattern.
        declared: dict[str, tuple[str, str]] = {}
        for p in [*self.output_patterns, *others]:
            for w in p.wildcards:
                t = p.type_of(w)
                if t is None:
                    continue
                first = declared.setdefault(w, (t, p.text))
                if first[0] != t:
                    raise self.error(f"wildcard '{w}' is declared as {first[0]} in '{first[1]}' "
                                     f"but as {t} in '{p.text}'")

    # -- instantiate ---------------------------------------------------------------------------

    def _format_static(self, entries: list[_Entry], b: Bindings, flags: Flags) -> NamedList:
        layout = self._out_layout if entries is self._output else self._log_layout
        return layout.format(b, flags)

    def _call(self, what: str, func: Callable[..., Any], available: Mapping[str, Any],
              names: tuple[str, ...]) -> Any:
        key = id(func)
        if key not in self._plans:
            self._plans[key] = call_plan(func, names)
        plan = self._plans[key]
        try:
            if plan is None:
                return func(available["wildcards"])
            unknown = [p for p, src in plan if src == "?"]
            if unknown:
                raise self.error(f"{what} function takes unknown argument(s): {', '.join(unknown)}",
                                 hint="allowed: " + ", ".join(names))
            return func(**{p: available[src] for p, src in plan})
        except (FlowmakeError, IncompleteCheckpointBase):
            raise
        except Exception as e:  # user code: report without a traceback, at the rule
            raise self.error(f"{what} function raised {type(e).__name__}: {e}") from None

    def _eval_io(self, entries: list[_Entry], b: Bindings, wc: Wildcards, flags: Flags,
                 what: str) -> NamedList:
        if self._in_layout is not None:
            return self._in_layout.format(b, flags)
        items: list[str] = []
        names: dict[str, tuple[int, int]] = {}
        single: set[str] = set()
        for e in entries:
            start = len(items)
            if e.func is None:
                for p, f in zip(e.patterns, e.flags):
                    items.append(self._add(p.format(b), f, flags))
                is_single = e.single
            else:
                result = self._call_input(e, wc)
                if e.unpack and isinstance(result, dict):
                    for k, v in result.items():
                        s = len(items)
                        one = self._extend(items, v, e.func.flags, flags)
                        names[k] = (s, len(items))
                        if one:
                            single.add(k)
                    continue
                is_single = self._extend(items, result, getattr(e.func, "flags", frozenset()), flags)
            if e.name is not None:
                names[e.name] = (start, len(items))
                if is_single:
                    single.add(e.name)
        return NamedList._make(items, names, single)

    def _call_input(self, e: _Entry, wc: Wildcards) -> Any:
        func = e.func.func if isinstance(e.func, FlaggedFunction) else e.func
        try:
            return func(wc)
        except (FlowmakeError, IncompleteCheckpointBase):
            raise
        except Exception as exc:
            raise self.error(f"input function raised {type(exc).__name__}: {exc}") from None

    @staticmethod
    def _add(path: str, f: frozenset[str], flags: Flags) -> str:
        if f:
            flags[path] = flags[path] | f
        return path

    def _extend(self, items: list[str], result: Any, extra: frozenset[str], flags: Flags) -> bool:
        """Append an input function's result; True if it was a single path."""
        if isinstance(result, dict):
            raise self.error("input function returned a dict; wrap the function with unpack()")
        try:
            values = _flatten(result, "input function result")
        except ValueError as e:
            raise self.error(str(e)) from None
        for v in values:
            items.append(self._add(os.fspath(v), flags_of(v) | extra, flags))
        return isinstance(result, (str, os.PathLike))

    # The three below are called by Rule._build only when the rule needs them evaluated (threads
    # a function, some resources, some params); _build handles the constant and empty cases inline.

    def _eval_threads(self, wc: Wildcards, input: NamedList, attempt: int) -> int:
        threads = self._threads
        if callable(threads):
            threads = self._call("threads", threads,
                                 {"wildcards": wc, "input": input, "attempt": attempt}, _THREADS_ARGS)
        return _as_int(self, "threads", threads)

    def _eval_resources(self, wc: Wildcards, input: NamedList, threads: int,
                        attempt: int) -> NamedList:
        values: list[tuple[str | None, Any]] = []
        available = None
        for name, v in self._resources:
            if callable(v):
                available = available or {"wildcards": wc, "input": input, "threads": threads,
                                          "attempt": attempt}
                v = self._call(f"resources '{name}'", v, available, _RESOURCES_ARGS)
            values.append((name, v))
        return NamedList.from_pairs(values)

    def _eval_params(self, b: Bindings, wc: Wildcards, inst: Any) -> NamedList:
        values: list[tuple[str | None, Any]] = []
        available = None
        for i, (name, v) in enumerate(self._params):
            if callable(v):
                available = available or {"wildcards": wc, "input": inst.input,
                                          "output": inst.output, "threads": inst.threads,
                                          "resources": inst.resources}
                v = self._call(f"params '{name}'", v, available, _PARAMS_ARGS)
            elif i in self._param_strs:
                v = self._param_strs[i].format(b)
            values.append((name, v))
        return NamedList.from_pairs(values)


def _as_int(rule: RuleBody, what: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise rule.error(f"{what} must be an integer, got {value!r}")
    return value
