"""Graph + traces + digests → Plan: which steps run, and why.

The planner is a pure function. It reads the world only through the callables in ``Facts`` (digests,
traces, existence), so it is tested from data and the same code serves dry-runs, real runs and the
re-planning of a pending step once its upstream finished (which is where early cutoff happens).

The rules, in order (DESIGN.md, "Freshness"): missing or incomplete outputs run, and so do outputs
another live run is writing (the scheduler then waits for that run's lock and uses what it recorded,
or rebuilds: never half a file); no trace runs (or an
existing untraced output newer than its inputs is adopted, Make's rule, used only this once); a key
field that differs from the trace runs, naming the field; a step whose upstream will run is pending;
an output whose own digest moved since it was recorded runs. mtimes never decide anything else.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

from flowmake.decisions import Cutoff, Decision, Reason, ReasonKind  # the plan's vocabulary, used through here too
from flowmake.graph import Step
from flowmake.keys import FIELDS, canonical, diff_fields, diff_inputs, digests_of, key_of_values, key_values
from flowmake.namedlist import Flag
from flowmake.pipes import PipeGroup, find_groups, real_outputs, streams_rule
from flowmake.rules import RuleKind
from flowmake.temps import absent_temps


_TRIGGER = {  # the --rerun-triggers choice that covers a kind of change
    ReasonKind.COMMAND_CHANGED: "code", ReasonKind.CODE_CHANGED: "code",
    ReasonKind.PARAMS_CHANGED: "params", ReasonKind.IMAGE_CHANGED: "software-env",
}

_FIELD_REASON = {
    "params": ReasonKind.PARAMS_CHANGED,
    "env": ReasonKind.PARAMS_CHANGED,
    "image": ReasonKind.IMAGE_CHANGED,
    "rule": ReasonKind.CODE_CHANGED,
    "version": ReasonKind.CODE_CHANGED,
}


class TraceLike(Protocol):  # read-only, as a frozen Trace is
    @property
    def key(self) -> str: ...
    @property
    def fields(self) -> Mapping[str, str]: ...
    @property
    def inputs(self) -> tuple[tuple[str, str], ...]: ...
    @property
    def output_digest(self) -> str: ...


@dataclass(slots=True)  # one per step: 100,000 of them in a big plan
class StepPlan:
    step: Step
    decision: Decision
    reasons: list[Reason] = field(default_factory=list)
    key: str | None = None  # the step key, when all inputs are known
    inputs: tuple[tuple[str, str], ...] = ()
    texts: dict[str, str] | None = None  # the key's fields as text; kept only for steps that run

    @property
    def fields(self) -> dict[str, str] | None:
        """Per-field digests for the trace (computed only for steps that ran)."""
        return digests_of(self.texts) if self.texts is not None else None


@dataclass(frozen=True)
class Provenance:
    """What another tool recorded of how a step's untraced outputs were made (Snakemake's
    ``.snakemake/metadata``, read by ``snakemake_metadata``): the ways the step differs now from what
    made them (none: this rule's code and params made them from these very input contents), and
    the inputs whose contents no record vouches for (their mtimes decide, as without a record)."""

    reasons: tuple[Reason, ...] = ()
    unchecked: tuple[str, ...] = ()


def _no_provenance(step: Step) -> Provenance | None:
    return None


KnownKey = tuple[str, tuple[tuple[str, str], ...]]  # a step key and the (path, digest) inputs it is of
_NO_KNOWN_KEYS: Mapping[Step, KnownKey] = {}


@dataclass(frozen=True)
class Facts:
    """The planner's whole view of the world."""

    digest: Callable[[str], str | None]  # content digest; None when missing
    trace: Callable[[str], TraceLike | None]  # the whole trace: read only to name what changed
    incomplete: Callable[[str], bool]
    forced: Callable[[Step], bool]
    newer_than: Callable[[Sequence[str], Sequence[str]], bool]  # outputs newer than inputs (adoption)
    image_digest: Callable[[str], str] = lambda ref: ref
    # The key the graph memo kept for a step, with the input digests it was computed from: the
    # key it still has while those digests hold (see ``memo``). None: no such key.
    known_key: Callable[[Step], KnownKey | None] = _NO_KNOWN_KEYS.get
    # (key, output digest) of an output's trace: all a step that is up to date needs. Derived
    # from ``trace`` when not given; a store answers it without decoding the trace.
    trace_head: Callable[[str], tuple[str, str] | None] = None  # type: ignore[assignment]  # __post_init__ derives it when not given
    # Outputs another live run was writing when the store was loaded: never digested as done. The
    # scheduler settles them once it holds their locks (``reread``).
    in_flight: Callable[[str], bool] = lambda path: False
    # --rerun-triggers left out ("code", "params", "software-env"): changes of only these kinds
    # leave a step as it is, as in Snakemake. Inputs always count: they are what a step is made of.
    ignored: frozenset[str] = frozenset()
    # What another tool recorded of an untraced step's outputs; None: nothing (adoption by mtime).
    provenance: Callable[[Step], Provenance | None] = _no_provenance

    def __post_init__(self) -> None:
        if self.trace_head is None:
            trace = self.trace

            def head(output: str) -> tuple[str, str] | None:
                t = trace(output)
                return None if t is None else (t.key, t.output_digest)

            object.__setattr__(self, "trace_head", head)


def reread(facts: Facts) -> Facts:
    """The facts for a step whose output locks this run holds and whose records it has just read
    again: what the store said at the start about its outputs being in flight or left incomplete
    no longer holds (another run finished them since)."""
    return replace(facts, in_flight=_never, incomplete=_never)


def _never(path: str) -> bool:
    return False


def _key_parts(step: Step, facts: Facts) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]] | None:
    """``key_values`` of the step and its (path, digest) inputs; None if an input is missing."""
    inst = step.instance
    if inst is None:
        return None
    inputs = []
    flags = inst.flags
    digest = facts.digest
    for path in inst.input:
        if flags and (Flag.ANCIENT in flags.get(path, ()) or Flag.BEFORE_UPDATE in flags.get(path, ())
                      and path in step.outputs):  # a file the step updates: its own output's trace
            inputs.append((path, "ancient"))
            continue
        d = digest(path)
        if d is None:
            return None
        inputs.append((path, d))
    rule = step.rule
    values = key_values(
        rule=rule.name,
        action=inst.action_source(),
        params=_params_text(inst),
        env=_NO_ENV,
        image=facts.image_digest(rule.container) if rule.container else None,
        inputs=inputs,
    )
    return values, tuple(inputs)


_NO_ENV: Mapping[str, str] = {}


def with_current_key(sp: StepPlan, facts: Facts) -> StepPlan | None:
    """The plan keyed from the digests its inputs have now (upstream may have just run); None when
    an input is missing."""
    parts = _key_parts(sp.step, facts)
    if parts is None:
        return None
    values, inputs = parts
    return replace(sp, key=key_of_values(values), inputs=inputs, texts=dict(zip(FIELDS, values)))


def _params_text(inst: Any) -> str:
    params = inst.params
    if not params:
        return "[]"
    return canonical(_params_value(inst))


def _params_value(inst: Any) -> Any:
    params = inst.params
    named = dict(params.items()) if hasattr(params, "items") else {}
    return [list(params), named]


def _all_settled(dep: Step) -> bool:
    return False


def unsettled_in(decided: Mapping[int, StepPlan]) -> Callable[[Step], bool]:
    """``plan_step``'s view of decisions already made: a dependency that will run, or may, is
    unsettled and its dependants wait for it."""
    get = decided.get

    def unsettled(dep: Step) -> bool:
        up = get(id(dep))
        return up is not None and (up.decision is Decision.RUN or up.decision is Decision.PENDING)

    return unsettled


def plan_step(step: Step, unsettled: Callable[[Step], bool], facts: Facts) -> StepPlan:
    """Decide one step; ``unsettled(dep)`` says whether a dependency will (or may) still run."""
    if step.pending:
        return StepPlan(step, Decision.PENDING, [Reason(ReasonKind.CHECKPOINT, path=p) for p in step.waits_on])
    reasons: list[Reason] = []
    if facts.forced(step):
        reasons.append(Reason(ReasonKind.FORCED))
    outputs = step.outputs
    streaming = step.rule.may_flag and streams_rule(step.rule)
    if streaming:  # a pipe or service is never a file to check: its group decides (pipes.py)
        outputs = real_outputs(step)
    digest, incomplete, in_flight = facts.digest, facts.incomplete, facts.in_flight
    out_digests = [digest(o) for o in outputs]
    for out, d in zip(outputs, out_digests):
        if incomplete(out):
            reasons.append(Reason(ReasonKind.INCOMPLETE, path=out))
        elif in_flight(out):
            reasons.append(Reason(ReasonKind.IN_FLIGHT, path=out))
        elif d is None:
            reasons.append(Reason(ReasonKind.MISSING, path=out))
    if reasons:  # the key is computed when the step starts, from the digests it then sees
        return StepPlan(step, Decision.RUN, reasons)
    for dep in step.deps:
        if unsettled(dep):
            return StepPlan(step, Decision.PENDING, [Reason(ReasonKind.UPSTREAM_CHANGED, step=d.id)
                                                     for d in step.deps if unsettled(d)])
    known = facts.known_key(step)
    if known is not None and _known_key_holds(known, outputs, out_digests, facts):
        return StepPlan(step, Decision.SKIP, [], known[0], known[1])
    parts = _key_parts(step, facts)
    if parts is None:  # an input vanished between graph and plan: run and let the job say so
        return StepPlan(step, Decision.RUN, [Reason(ReasonKind.MISSING, path=_first_missing(step, facts))])
    values, inputs = parts
    key = key_of_values(values)
    if not outputs:
        if streaming:  # only streams: it runs when the rest of its pipe group does
            return StepPlan(step, Decision.SKIP, [], key, inputs)
        if step.rule.kind is not RuleKind.NONE:  # Snakemake: an action without outputs always runs
            return StepPlan(step, Decision.RUN, [Reason(ReasonKind.MISSING)], key, inputs, dict(zip(FIELDS, values)))
        return StepPlan(step, Decision.SKIP, [], key, inputs)
    head_of = facts.trace_head
    heads = [head_of(o) for o in outputs]
    if None in heads:
        texts = dict(zip(FIELDS, values))
        if heads.count(None) == len(heads):
            prov = facts.provenance(step)
            if prov is not None and prov.reasons:  # made otherwise than this step would make them now
                return StepPlan(step, Decision.RUN, list(prov.reasons), key, inputs, texts)
            checked_by_mtime = [p for p, _ in inputs] if prov is None else prov.unchecked
            in_flags = step.instance.flags if step.instance is not None else None
            if in_flags:  # an ancient() input never makes an output out of date, by mtime either
                checked_by_mtime = [p for p in checked_by_mtime if Flag.ANCIENT not in in_flags.get(p, ())]
            if not checked_by_mtime or facts.newer_than(outputs, checked_by_mtime):
                return StepPlan(step, Decision.ADOPT, [], key, inputs, texts)
        return StepPlan(step, Decision.RUN, [Reason(ReasonKind.NO_TRACE)], key, inputs, texts)
    for out, head in zip(outputs, heads):
        if head[0] != key:  # type: ignore[index]  # None in heads was ruled out above
            texts = dict(zip(FIELDS, values))
            changes = _changes(step, facts.trace(out), digests_of(texts), inputs)  # type: ignore[arg-type]  # an output with a trace head has a trace
            if facts.ignored:
                changes = [r for r in changes if _TRIGGER.get(r.kind) not in facts.ignored]
                if not changes:
                    continue
            return StepPlan(step, Decision.RUN, changes, key, inputs, texts)
    flags = step.instance.flags  # type: ignore[union-attr]  # a step that is not pending has an instance
    if not (flags and all(Flag.TOUCH in flags.get(o, ()) for o in outputs)):  # touch() outputs: only existence counts
        for out, d, head in zip(outputs, out_digests, heads):
            if d != head[1]:  # type: ignore[index]  # None in heads was ruled out above
                reasons.append(Reason(ReasonKind.OUTPUT_MODIFIED, path=out))
    if reasons:
        return StepPlan(step, Decision.RUN, reasons, key, inputs, dict(zip(FIELDS, values)))
    return StepPlan(step, Decision.SKIP, [], key, inputs)


def _known_key_holds(known: KnownKey, outputs: Sequence[str], out_digests: Sequence[str | None],
                     facts: Facts) -> bool:
    """Whether the key the graph memo kept for a step is still its key, and what it made is still
    there: the memo's fingerprint covers every key field but the inputs, so equal input digests
    mean an equal key without instantiating the step or rendering its command (see ``memo``).
    Anything else is decided the ordinary way, which can name the reason."""
    key, inputs = known
    digest = facts.digest
    for path, d in inputs:
        if d != "ancient" and digest(path) != d:
            return False
    head_of = facts.trace_head
    for out, out_digest in zip(outputs, out_digests):
        if head_of(out) != (key, out_digest):
            return False
    return True


def replan(step: Step, facts: Facts) -> tuple[Cutoff, StepPlan]:
    """Decide a pending step again once all its upstream is done, with the digests it made.

    ``Cutoff.SAME`` is early cutoff: the upstream that reran produced what this step was built
    from, so it skips. A step that cannot be pending any more never comes back pending.
    """
    sp = plan_step(step, _all_settled, facts)
    if sp.decision is Decision.SKIP or sp.decision is Decision.ADOPT:
        return Cutoff.SAME, sp
    if sp.decision is Decision.PENDING:
        sp = replace(sp, decision=Decision.RUN)
    return Cutoff.CHANGED, sp


def _first_missing(step: Step, facts: Facts) -> str:
    for p in step.inputs:
        if facts.digest(p) is None:
            return p
    return step.outputs[0] if step.outputs else step.rule.name


def _changes(step: Step, trace: TraceLike, fields: Mapping[str, str], inputs: tuple[tuple[str, str], ...]) -> list[Reason]:
    reasons: list[Reason] = []
    for name in diff_fields(trace.fields, fields):
        if name == "cache":  # cache_plan.IN_CACHE_FIELD: where the output is, not how it was made
            continue
        if name == "inputs":
            # When only the order moved, diff_inputs names every input; none changed on its own.
            same = dict(trace.inputs) == dict(inputs)
            changed = [] if same else diff_inputs(trace.inputs, inputs)
            reasons.extend(Reason(ReasonKind.INPUT_CHANGED, path=p) for p in changed)
            if not changed:  # same set, other order
                reasons.append(Reason(ReasonKind.INPUT_CHANGED))
        elif name == "action":
            kind = ReasonKind.COMMAND_CHANGED if step.rule.kind is RuleKind.SHELL else ReasonKind.CODE_CHANGED
            reasons.append(Reason(kind))
        else:
            reasons.append(Reason(_FIELD_REASON.get(name, ReasonKind.CODE_CHANGED)))
    if not reasons:  # the key moved but no field did: the key's encoding changed (a new flowmake)
        reasons.append(Reason(ReasonKind.CODE_CHANGED))
    return list(dict.fromkeys(reasons))


@dataclass
class Plan:
    steps: list[StepPlan]
    by_id: dict[int, StepPlan]
    facts: Facts  # as the plan saw them (absent temp outputs stand in with recorded digests)
    groups: dict[int, PipeGroup] = field(default_factory=dict)  # a pipe group's steps (by id) -> it
    restores: dict[int, Any] = field(default_factory=dict)  # a RESTORE step (by id) -> its cache_plan.Restore


def plan(steps: Iterable[Step], facts: Facts) -> Plan:
    """Decide every step; ``steps`` must list dependencies before dependants.

    A ``temp()`` output deleted after its consumers finished is not a reason to rerun: it stands in
    with its recorded digest. Only when a consumer runs anyway is its producer run again to remake it.
    """
    steps = list(steps)
    virtual, stand_ins = absent_temps(steps, facts)
    if virtual:
        real = facts.digest
        facts = replace(facts, digest=lambda p: real(p) or virtual.get(p))  # remade by now: its own digest
    if stand_ins:  # its consumers' outputs already vouched for its time
        real_newer = facts.newer_than

        def newer_than(outputs: Sequence[str], inputs: Sequence[str]) -> bool:
            rest = [o for o in outputs if o not in stand_ins]
            return real_newer(rest, inputs) if rest else True

        facts = replace(facts, newer_than=newer_than)
    groups = find_groups(steps)
    if groups:
        from flowmake.pipe_plan import align_groups, with_streams  # it builds on this module
        facts = with_streams(facts, groups)
    out: list[StepPlan] = []
    by_id: dict[int, StepPlan] = {}
    unsettled = unsettled_in(by_id)
    for step in steps:
        sp = plan_step(step, unsettled, facts)
        out.append(sp)
        by_id[id(step)] = sp
    if virtual:
        _remake_needed_temps(out, by_id, virtual)
    if any(sp.decision is Decision.RUN and sp.reasons and sp.reasons[0].kind is ReasonKind.MISSING for sp in out):
        _remake_missing_products(out, by_id, facts)
    if groups:
        align_groups(out, by_id, groups, facts)
    return Plan(out, by_id, facts, groups)


def decide_downstream(out: list[StepPlan], by_id: dict[int, StepPlan], facts: Facts, moved: set[int]) -> bool:
    """Steps decided up to date before some upstream of theirs (``moved``, by id) was made to run
    are decided again, dependencies first; ``moved`` grows by those that change. Any changed?"""
    unsettled, changed = unsettled_in(by_id), False
    for i, sp in enumerate(out):
        if (sp.decision is Decision.SKIP or sp.decision is Decision.ADOPT) and any(id(d) in moved for d in sp.step.deps):
            new = plan_step(sp.step, unsettled, facts)
            if new.decision is not sp.decision:
                out[i] = by_id[id(sp.step)] = new
                moved.add(id(sp.step))
                changed = True
    return changed


def _remake_missing_products(out: list[StepPlan], by_id: dict[int, StepPlan], facts: Facts) -> None:
    """A step runs for want of another's ``log:`` or ``benchmark:`` file: that step runs to make it."""
    moved: set[int] = set()
    for sp in out:
        if sp.decision is not Decision.RUN or not sp.reasons or sp.reasons[0].kind is not ReasonKind.MISSING:
            continue
        missing = sp.reasons[0].path
        if missing is None or missing not in sp.step.inputs:  # an output of its own is missing
            continue
        for dep in sp.step.deps:
            up, inst = by_id.get(id(dep)), dep.instance
            if up is not None and up.decision is Decision.SKIP and inst is not None and missing in (*inst.log, inst.benchmark):
                up.decision, up.reasons = Decision.RUN, [Reason(ReasonKind.MISSING, path=missing)]
                moved.add(id(dep))
    while moved and decide_downstream(out, by_id, facts, moved):
        pass


def converge(graph: Any, steps: list[Step], facts: Callable[[], Facts]) -> tuple[Plan, list[Step]]:
    """Plan until stable: a checkpoint that will rerun makes the steps that consulted its old outputs
    wait for it (they are resolved again once it is done). Returns the plan and the graph's steps."""
    while True:
        p = plan(steps, facts())
        rerun = {o for sp in p.steps if sp.step.rule.is_checkpoint and sp.decision in (Decision.RUN, Decision.PENDING)
                 for o in sp.step.outputs}
        if not rerun:
            return p, steps
        stale = [s for s in steps if s.instance is not None and rerun & s.instance.consulted]
        graph.checkpoints_to_run(rerun)
        if not stale:
            return p, steps
        graph.invalidate(stale, rerun)
        steps = graph.walk()


def _remake_needed_temps(out: list[StepPlan], by_id: dict[int, StepPlan], virtual: dict[str, str]) -> None:
    """Walk back from running steps: a producer of an absent temp input must run to remake it."""
    producers = {o: sp for sp in out for o in sp.step.outputs if o in virtual}
    work = [sp for sp in out if sp.decision is Decision.RUN]
    while work:
        sp = work.pop()
        for path in sp.step.inputs:
            prod = producers.get(path)
            if prod is not None and prod.decision is not Decision.RUN:
                prod.decision = Decision.RUN
                prod.reasons = [Reason(ReasonKind.MISSING, path=path)]
                work.append(prod)
