"""Workflow and Rule: the parsed rule file and one rule of it, the stage after ``flowfile`` and
before ``graph``; plus ``rules.NAME`` and ``checkpoints.NAME``, the rule file's view of them.

A Rule holds its directive values (compiled and evaluated by ``directives``) and binds them to
wildcard values into an ``instance.Instance``. ``Rule.match_output`` and ``Rule.instantiate`` sit on
the planner's hot path (100,000 steps in a couple of seconds), so everything that can be decided at
load time is: patterns are compiled once, named ranges of plain patterns are precomputed, and the
checkpoint context is only set when the rule has functions that might consult it.
"""

from __future__ import annotations


import contextvars
import os
from typing import Any, Callable, Iterable, Mapping, Protocol

from flowmake import shellfmt
from flowmake.envs import Deployment
from flowmake.directives import (NO_FLAGS, Entry, Flags, IncompleteCheckpoint, Layout, RuleKind,
                                 as_int, as_priority, as_threads, eval_io, eval_params, eval_priority,
                                 eval_resources, eval_threads)
from flowmake.errors import (FlowfileError, FlowmakeError, Location, UnsafeWildcardError, UsageError,
                             WildcardError, did_you_mean, printable)
from flowmake.instance import Instance, JobNamespace
from flowmake.namedlist import EMPTY, Flag, NamedList, Wildcards
from flowmake.rule_paths import RuleOutput
from flowmake.shadow import DEPTHS as _SHADOW_DEPTHS
from flowmake.templates import check_engine
from flowmake.patterns import BUILTIN_TYPES, Bindings, Pattern, WildcardType, wildcard_names

__all__ = ["AllDone", "CheckpointJob", "CheckpointView", "Checkpoints", "IncompleteCheckpoint",
           "Instance", "Rule", "RuleKind", "RuleProxy", "Rules", "Workflow"]


class CheckpointView(Protocol):
    def is_done(self, paths: tuple[str, ...]) -> bool: ...


class AllDone:
    """A checkpoint view for re-instantiating a step that is about to run: everything has finished."""

    def is_done(self, paths: tuple[str, ...]) -> bool:
        return True


# (view, consulted paths) while Rule.instantiate evaluates functions; None otherwise.
_CHECKPOINT_CONTEXT: contextvars.ContextVar[tuple[CheckpointView, set[str]] | None] = (
    contextvars.ContextVar("flowmake_checkpoint_context", default=None))


class Workflow:
    """The parsed rule file. Built by ``flowfile.load_workflow``; read-only afterwards."""

    def __init__(self, flowfile: str, config: dict[str, Any], *, configfiles: Iterable[str] = (),
                 config_overrides: Mapping[str, Any] | None = None, workdir: str | None = None) -> None:
        self.flowfile = flowfile
        self.files: list[str] = [flowfile]
        self.config = config
        self.configfiles = tuple(configfiles)
        self.config_overrides = dict(config_overrides or {})
        self.rules: list[Rule] = []
        self._by_name: dict[str, Rule] = {}
        self.localrules: set[str] = set()
        self.ruleorder: list[tuple[str, ...]] = []
        self.hooks: dict[str, Callable[..., Any] | None] = {
            "onstart": None, "onsuccess": None, "onerror": None}
        self.shell_settings = shellfmt.ShellSettings()
        self.globals: Mapping[str, Any] = {}  # the rule file's namespace, once loaded
        # Snakemake's rule: paths in rules, configfile: and glob_wildcards are relative to the
        # working directory (where flowmake runs, or -d), not to the rule file's folder.
        self.workdir = os.path.abspath(workdir) if workdir else os.getcwd()
        self.container: str | None = None
        self.wildcard_constraints: dict[str, str] = {}
        self.wildcard_types: dict[str, WildcardType] = dict(BUILTIN_TYPES)
        # --use-conda, --use-envmodules, --wrapper-prefix: set by whoever loaded the workflow.
        self.deployment = Deployment()
        self.cores: int | None = None  # -c as the rule file's workflow.cores sees it (None: not given)
        self.storage: Any = None  # storage.StorageRegistry: the `storage` providers (set by the builder)

    def add_rule(self, rule: Rule) -> None:
        if rule.name in self._by_name:
            other = self._by_name[rule.name]
            raise FlowfileError(f"rule '{rule.name}' is defined twice (first at {other.location})",
                                location=rule.location, rule=rule.name)
        self.rules.append(rule)
        self._by_name[rule.name] = rule

    def replace_rule(self, rule: Rule) -> None:
        """Put ``rule`` in the place of the rule of its name (a module's rule modified by ``use rule``)."""
        old = self._by_name[rule.name]
        self.rules[self.rules.index(old)] = rule
        self._by_name[rule.name] = rule

    def has_rule(self, name: str) -> bool:
        return name in self._by_name

    def rule(self, name: str) -> Rule:
        try:
            return self._by_name[name]
        except KeyError:
            raise UsageError(f"no rule named '{name}'",
                             hint=did_you_mean(name, self._by_name)) from None

    @property
    def default_rule(self) -> Rule | None:
        for r in self.rules:
            if r.default_target:
                return r
        # Like Snakemake, includes above the first rule do not change the default target: it is
        # the first rule of the main rule file (or that a `use rule` of the main file made), when
        # that file has rules.
        for r in self.rules:
            if r.location.file == self.flowfile or (r.used_at is not None
                                                    and r.used_at.file == self.flowfile):
                return r
        return self.rules[0] if self.rules else None

    def prefers(self, a: str, b: str) -> bool | None:
        """True if ruleorder puts ``a`` before ``b``, False if after, None if it says nothing."""
        for chain in self.ruleorder:
            if a in chain and b in chain:
                return chain.index(a) < chain.index(b)
        return None

    @property
    def onstart(self) -> Callable[..., Any] | None:
        return self.hooks["onstart"]

    @property
    def onsuccess(self) -> Callable[..., Any] | None:
        return self.hooks["onsuccess"]

    @property
    def onerror(self) -> Callable[..., Any] | None:
        return self.hooks["onerror"]

    def finalize(self) -> None:
        """Compile every rule's patterns once all global settings are known; check cross-references."""
        for rule in self.rules:
            rule.compile()
        for names in [*self.ruleorder, sorted(self.localrules)]:
            for name in names:
                if name not in self._by_name:
                    raise FlowfileError(f"unknown rule '{name}' in ruleorder/localrules",
                                        location=Location(self.flowfile),
                                        hint=did_you_mean(name, self._by_name))
        defaults = [r.name for r in self.rules if r.default_target]
        if len(defaults) > 1:
            raise FlowfileError(f"several rules are marked default_target: {', '.join(defaults)}",
                                location=self.rule(defaults[1]).location)


class Rule:
    """One ``rule``/``checkpoint`` block: its directive values, compiled once, and their binding."""

    def __init__(self, workflow: Workflow, name: str, location: Location, *, is_checkpoint: bool = False,
                 basedir: str = ".", input: Iterable[tuple[str | None, Any]] = (),
                 output: Iterable[tuple[str | None, Any]] = (),
                 log: Iterable[tuple[str | None, Any]] = (),
                 params: Iterable[tuple[str | None, Any]] = (),
                 resources: Iterable[tuple[str | None, Any]] = (), benchmark: Any = None,
                 threads: Any = 1, message: str | None = None, priority: Any = 0, retries: int | None = None,
                 shell: str | None = None, run: Callable[..., Any] | None = None,
                 run_source: str | None = None, script: str | None = None,
                 container: str | None = None, wildcard_constraints: Mapping[str, str] | None = None,
                 localrule: bool = False, default_target: bool = False, cache: Any = None,
                 wrapper: str | None = None, notebook: str | None = None, conda: Any = None,
                 envmodules: tuple[str, ...] = (), shadow: Any = None, handover: Any = False,
                 template_engine: Any = None) -> None:
        self.workflow = workflow
        self.name = name
        self.location = location
        self.is_checkpoint = is_checkpoint
        self.basedir = basedir
        try:
            self._input = [Entry(n, v, "input", True) for n, v in input]
            self._output = [Entry(n, v, "output", False) for n, v in output]
            self._log = [Entry(n, v, "log", False) for n, v in log]
        except ValueError as e:
            raise self.error(str(e)) from None
        # Inputs given as another rule's output (rules.NAME.output): pattern text -> that rule.
        self.input_rules = {str(t): t.rule_name for e in self._input for t in e.texts
                            if isinstance(t, RuleOutput)}
        self._params = list(params)
        self._resources = list(resources)
        self._benchmark_text = os.fspath(benchmark) if benchmark is not None else None
        self._threads = threads
        self.message = message
        # A function is asked per step (priority_of); the number stands for the rule otherwise.
        self._priority = priority if callable(priority) else None
        self.priority = 0 if callable(priority) else as_priority(self, priority)
        # None: --retries decides; a rule's own value wins over it, as in Snakemake.
        self.retries = as_int(self, "retries", retries) if retries is not None else None
        self.shell, self.run, self.run_source, self.script = shell, run, run_source, script
        self.wrapper, self.notebook = wrapper, notebook
        self.template_engine: str | None = check_engine(self, template_engine) if template_engine is not None else None
        # Used only under --use-conda / --use-envmodules (``envs``); ignored otherwise, as in Snakemake.
        self.conda, self.envmodules = conda, tuple(envmodules)
        self.container = container if container is not None else workflow.container
        self.wildcard_constraints = dict(wildcard_constraints or {})
        self._localrule = bool(localrule) or bool(handover)  # a handover job runs here, as in Snakemake
        self.default_target = bool(default_target)
        # None: not said (cached when a shared cache is configured); False: ``cache: False``, never
        # cached; True: Snakemake's ``cache: True`` / "omit-software" (the default here anyway).
        self.cache: bool | None = None if cache is None else bool(cache)
        if shadow is not None and shadow not in _SHADOW_DEPTHS:
            raise self.error(f"shadow must be one of {', '.join(map(repr, _SHADOW_DEPTHS))}, not {shadow!r}")
        self.shadow: str | None = shadow  # the job runs in a shadow folder (``flowmake.shadow``)
        self.handover = bool(handover)  # the job gets all the run's cores and resources
        self.has_functions = any(e.func is not None for e in self._input) or any(
            callable(v) for _, v in [*self._params, *self._resources]) or callable(threads) or callable(priority)
        self._plans: dict[Any, list[tuple[str, str]] | None] = {}
        # Set by flowfile.modules for a rule a module wrote: its module's name, namespace and
        # global wildcard_constraints (the workflow's do not apply to it, as in Snakemake).
        self.module: str | None = None
        self.module_globals: Mapping[str, Any] | None = None
        self.scope_constraints: dict[str, str] | None = None
        self.used_at: Location | None = None  # the main file's `use rule` that made this rule
        self.output_patterns: list[Pattern] = []
        self.product_patterns: list[Pattern] = []
        self.wildcard_names: tuple[str, ...] = ()
        self.streams = False

    def error(self, message: str, **kw: Any) -> FlowfileError:
        return FlowfileError(message, location=self.location, rule=self.name, **kw)

    def script_path(self) -> str:
        script = self.script or self.notebook or ""
        return script if os.path.isabs(script) else os.path.join(self.basedir, script)

    # -- load time ---------------------------------------------------------------------------

    def compile(self) -> None:
        wf = self.workflow
        scope = self.scope_constraints if self.scope_constraints is not None else wf.wildcard_constraints
        constraints = {**scope, **self.wildcard_constraints}
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
        if len(set(texts := [p.text for p in self.output_patterns])) < len(texts):
            raise self.error(f"output '{next(t for i, t in enumerate(texts) if t in texts[:i])}' is given twice")
        # Log and benchmark files are products too (Snakemake's ``products``): another rule may
        # need one, or a target name it; matched with the rule's and the workflow's wildcard
        # constraints, as Snakemake does.
        self.product_patterns = [Pattern(t, constraints, wf.wildcard_types) for e in self._log for t in e.texts]
        if self._benchmark_text is not None:
            self.product_patterns.append(Pattern(self._benchmark_text, constraints, wf.wildcard_types))
        self._check_wildcards()
        self._out_layout = Layout(self._output)
        self._log_layout = Layout(self._log)
        self._in_layout = (Layout(self._input)
                           if all(e.func is None for e in self._input) else None)
        # Input functions may return flagged paths; otherwise only declared flags exist.
        self._may_flag = self._in_layout is None or any(
            lay.flagged for lay in (self._in_layout, self._out_layout, self._log_layout))
        self._threads_value = None if callable(self._threads) else as_threads(self, self._threads)
        # pipe() or service() outputs (pipes.py); outputs are never functions, so this is exact.
        self.streams = any(f in (Flag.PIPE, Flag.SERVICE) for e in self._output for fl in e.flags for f in fl)
        self._param_strs = {i: Pattern(v, None, wf.wildcard_types)
                            for i, (_, v) in enumerate(self._params)
                            if isinstance(v, str) and wildcard_names(v)}
        for i, p in self._param_strs.items():
            missing = [w for w in p.wildcards if w not in self.wildcard_names]
            if missing:
                raise self.error(f"wildcards in params '{self._params[i][0]}' ('{p.text}') cannot be "
                                 f"determined from the output files: {', '.join(missing)}")

    def resource_pairs(self) -> list[tuple[str | None, Any]]:
        return list(self._resources)

    def override(self, *, resources: list[tuple[str | None, Any]] | None = None, threads: Any = None) -> None:
        """--default-resources/--set-resources/--set-threads (see ``overrides``), after ``compile``."""
        if resources is not None:
            self._resources = list(resources)
        if threads is not None:
            self._threads = threads
            self._threads_value = None if callable(threads) else as_int(self, "threads", threads)
        # A value that is a function of the step's wildcards and inputs alone (``foreseeable``, as
        # overrides.Expr) is no obstacle to the graph memo: its fingerprint holds the value's text.
        self.has_functions = self.has_functions or any(
            callable(v) and not getattr(v, "foreseeable", False) for v in [threads, *(v for _, v in self._resources)])

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
        for p in self.product_patterns:  # Snakemake's rule too: else two steps write one file
            lacking = [w for w in self.wildcard_names if w not in p.wildcards]
            if lacking:
                raise self.error(f"log or benchmark '{p.text}' lacks the wildcards of the outputs "
                                 f"({', '.join(lacking)}): the steps of rule '{self.name}' would all "
                                 "write the same file")
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


    # -- the API -------------------------------------------------------------------------------

    @property
    def has_wildcards(self) -> bool:
        return bool(self.wildcard_names)

    @property
    def namespace(self) -> Mapping[str, Any]:
        """The globals of the file that wrote the rule: what its command's other names mean."""
        return self.module_globals if self.module_globals is not None else self.workflow.globals

    @property
    def config(self) -> Any:
        """The config its file sees: a module's own (``config:``), else the workflow's."""
        if self.module_globals is not None:
            return self.module_globals.get("config", self.workflow.config)
        return self.workflow.config

    @property
    def localrule(self) -> bool:
        return self._localrule or self.name in self.workflow.localrules

    @property
    def kind(self) -> RuleKind:
        if self.shell is not None:
            return RuleKind.SHELL
        if self.run is not None:
            return RuleKind.RUN
        if self.script is not None:
            return RuleKind.SCRIPT
        if self.wrapper is not None:
            return RuleKind.WRAPPER
        if self.template_engine is not None:
            return RuleKind.TEMPLATE
        return RuleKind.NOTEBOOK if self.notebook is not None else RuleKind.NONE

    @property
    def key_beyond_fingerprint(self) -> bool:
        """Whether its step key depends on what no graph fingerprint covers: a script, wrapper or
        notebook file, a conda environment, env modules (both depend on flags, too)."""
        return self.kind in _FILE_KINDS or self.conda is not None or bool(self.envmodules)

    @property
    def may_flag(self) -> bool:
        """Whether a step of this rule can have flagged paths (temp, protected, touch, ancient...)."""
        return self._may_flag

    def as_data(self) -> list[Any] | None:
        """Everything the rule was declared with, as plain data, plus the values of the rule-file
        names its command uses: what the graph memo fingerprints (see ``memo``). None when a
        directive is a function, whose results no fingerprint can foresee, or for a checkpoint."""
        if self.has_functions or self.is_checkpoint:
            return None
        data: list[Any] = []
        for name, value in sorted(vars(self).items()):
            if name in _DERIVED:
                continue
            if name in ("_input", "_output", "_log"):
                # Flags as their values: the fingerprint is plain data (see ``graph_memo``).
                value = [[e.name, [str(t) for t in e.texts], [sorted(f.value for f in fl) for fl in e.flags],
                          e.single, e.unpack] for e in value]
            data.append([name, value])
        if self.shell is not None:
            names = sorted(shellfmt.field_names(self.shell) - JobNamespace.FIELDS)
            data.append(["globals", [[n, self.namespace.get(n)] for n in names]])
        return data

    def priority_of(self, inst: Instance | None) -> float:
        if self._priority is None or inst is None:
            return self.priority
        return eval_priority(self, self._priority, inst.wildcards, inst.input, inst.attempt)

    def wanted_inputs(self, b: Bindings) -> dict[str, str]:
        """Input paths of a step that name the rule meant to make them (see ``input_rules``)."""
        return {p.format(b): self.input_rules[p.text] for e in self._input for p in e.patterns
                if p.text in self.input_rules and all(n in b for n in p.wildcards)}

    def match_output(self, path: str) -> Bindings | None:
        for pattern in self.output_patterns:
            b = pattern.match(path)
            if b is not None:
                return b
        for pattern in self.product_patterns:
            b = pattern.match(path)
            if b is not None:
                return b
        return None

    def bindings_from_raw(self, raw: Mapping[str, str]) -> Bindings:
        if not self.output_patterns:
            return Bindings({}, {})
        return self.output_patterns[0].bindings_from_raw(raw)

    def instantiate(self, bindings: Mapping[str, Any], checkpoints: CheckpointView,
                    attempt: int = 1) -> Instance:
        try:
            if not isinstance(bindings, Bindings):
                bindings = self.bindings_from_raw({k: str(v) for k, v in bindings.items()})
            if not self.has_functions:
                return self._build(bindings, attempt, frozenset())
            consulted: set[str] = set()
            token = _CHECKPOINT_CONTEXT.set((checkpoints, consulted))
            try:
                inst = self._build(bindings, attempt, consulted)
            finally:
                _CHECKPOINT_CONTEXT.reset(token)
        except WildcardError as e:
            if e.location is None:  # say which rule, like every other rule error
                e.location, e.rule = self.location, self.name
            if isinstance(e, UnsafeWildcardError) and e.target is None and self.output_patterns:
                e.target = printable(self.output_patterns[0].format(bindings))  # e.g. glob_wildcards
            raise
        inst.consulted = frozenset(consulted)
        return inst

    def _build(self, b: Bindings, attempt: int, consulted: Any) -> Instance:
        inst = Instance.__new__(Instance)
        inst.rule = self
        inst.bindings = b
        inst.attempt = attempt
        inst.consulted = consulted if isinstance(consulted, frozenset) else frozenset()
        wc = inst.wildcards = Wildcards.from_mapping(
            b._values, self._wc_names if len(b._values) == len(self._wc_names) else None)
        flags = inst.flags = Flags() if self._may_flag else NO_FLAGS
        inst.output = self._out_layout.format(b, flags)
        layout = self._in_layout
        inst.input = layout.format(b, flags) if layout is not None else eval_io(self, self._input, b, wc, flags, "input")
        inst.log = self._log_layout.format(b, flags)
        inst.benchmark = self._benchmark.format(b) if self._benchmark is not None else None
        threads = self._threads_value
        inst.threads = threads if threads is not None else eval_threads(self, wc, inst.input, attempt)
        inst.resources = eval_resources(self, wc, inst.input, inst.threads, attempt) if self._resources else EMPTY
        inst.params = eval_params(self, b, wc, inst) if self._params else EMPTY
        return inst

    def _format_static(self, entries: list[Entry], b: Bindings, flags: Flags) -> NamedList:
        layout = self._out_layout if entries is self._output else self._log_layout
        return layout.format(b, flags)



_FILE_KINDS = frozenset({RuleKind.SCRIPT, RuleKind.WRAPPER, RuleKind.NOTEBOOK})

# Rule attributes computed from the others when the rule is compiled, or saying where it is written
# rather than what it does: not part of ``Rule.as_data``. Any other attribute is (a test checks
# that every attribute is one or the other, so a new directive cannot be forgotten).
_DERIVED = frozenset({
    "workflow", "location", "output_patterns", "product_patterns", "wildcard_names", "_wc_names", "_in_layout", "_out_layout",
    "_log_layout", "_may_flag", "_threads_value", "_param_strs", "_plans", "_benchmark", "has_functions", "streams",
    "run",  # the compiled run block; run_source is what it is
    "module_globals", "used_at",  # a namespace (the names a command uses are in "globals"); where
})
