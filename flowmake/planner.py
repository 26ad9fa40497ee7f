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

import enum
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

from flowmake.graph import Step
from flowmake.keys import FIELDS, canonical, diff_fields, digests_of, key_of_values, key_values


class Decision(enum.Enum):
    RUN = "run"
    SKIP = "skip"
    PENDING = "pending"  # runs only if an upstream step's outputs change
    ADOPT = "adopt"  # outputs exist untraced and are newer than their inputs: record, do not run
    DONE = "done"  # ran in this invocation (set by the scheduler): its outputs are current


class ReasonKind(enum.Enum):
    MISSING = "missing"
    INCOMPLETE = "incomplete"
    IN_FLIGHT = "in-flight"  # another live flowmake on this workdir is writing it
    NO_TRACE = "no-trace"
    INPUT_CHANGED = "input-changed"
    COMMAND_CHANGED = "command-changed"
    PARAMS_CHANGED = "params-changed"
    CODE_CHANGED = "code-changed"
    IMAGE_CHANGED = "image-changed"
    UPSTREAM_CHANGED = "upstream-changed"
    OUTPUT_MODIFIED = "output-modified"
    FORCED = "forced"
    CHECKPOINT = "checkpoint"  # inputs known only when a checkpoint finishes


@dataclass(frozen=True)
class Reason:
    kind: ReasonKind
    path: str | None = None
    step: str | None = None

    def to_json(self) -> dict[str, str]:
        out = {"kind": self.kind.value}
        if self.path is not None:
            out["path"] = self.path
        if self.step is not None:
            out["step"] = self.step
        return out

    def __str__(self) -> str:
        if self.kind is ReasonKind.MISSING and self.path is None:
            return "the rule has no outputs, so it always runs"
        words = _WORDS[self.kind]
        if self.path:
            words += f": {self.path}"
        if self.step:
            words += f": {self.step}"
        return words


_WORDS = {
    ReasonKind.MISSING: "output missing",
    ReasonKind.INCOMPLETE: "output left incomplete by an interrupted run",
    ReasonKind.IN_FLIGHT: "output being written by another flowmake run",
    ReasonKind.NO_TRACE: "no record of how the output was made",
    ReasonKind.INPUT_CHANGED: "input changed",
    ReasonKind.COMMAND_CHANGED: "command changed",
    ReasonKind.PARAMS_CHANGED: "params changed",
    ReasonKind.CODE_CHANGED: "code changed",
    ReasonKind.IMAGE_CHANGED: "container image changed",
    ReasonKind.UPSTREAM_CHANGED: "runs if the output of an upstream step changes",
    ReasonKind.OUTPUT_MODIFIED: "output was modified since it was made",
    ReasonKind.FORCED: "forced",
    ReasonKind.CHECKPOINT: "inputs known once a checkpoint finishes",
}

_FIELD_REASON = {
    "params": ReasonKind.PARAMS_CHANGED,
    "env": ReasonKind.PARAMS_CHANGED,
    "image": ReasonKind.IMAGE_CHANGED,
    "rule": ReasonKind.CODE_CHANGED,
    "version": ReasonKind.CODE_CHANGED,
}


class TraceLike(Protocol):
    key: str
    fields: Mapping[str, str]
    inputs: tuple[tuple[str, str], ...]
    output_digest: str


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
class Facts:
    """The planner's whole view of the world."""

    digest: Callable[[str], str | None]  # content digest; None when missing
    trace: Callable[[str], TraceLike | None]
    incomplete: Callable[[str], bool]
    forced: Callable[[Step], bool]
    newer_than: Callable[[Sequence[str], Sequence[str]], bool]  # outputs newer than inputs (adoption)
    image_digest: Callable[[str], str] = lambda ref: ref
    # Outputs another live run was writing when the store was loaded: never digested as done. The
    # scheduler settles them once it holds their locks (``reread``).
    in_flight: Callable[[str], bool] = lambda path: False


def reread(facts: Facts) -> Facts:
    """The facts for a step whose output locks this run holds and whose records it has just read
    again: what the store said at the start about its outputs being in flight or left incomplete
    no longer holds (another run finished them since)."""
    return replace(facts, in_flight=_never, incomplete=_never)


def _never(path: str) -> bool:
    return False


def key_fields(step: Step, facts: Facts) -> tuple[dict[str, str], tuple[tuple[str, str], ...]] | None:
    """The step key's fields as text, from current input digests; None if an input is missing."""
    parts = _key_parts(step, facts)
    return None if parts is None else (dict(zip(FIELDS, parts[0])), parts[1])


def _key_parts(step: Step, facts: Facts) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]] | None:
    """``key_values`` of the step and its (path, digest) inputs; None if an input is missing."""
    inst = step.instance
    if inst is None:
        return None
    inputs = []
    flags = inst.flags
    digest = facts.digest
    for path in inst.input:
        if flags and "ancient" in flags.get(path, ()):
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


def refresh_key(sp: StepPlan, facts: Facts) -> bool:
    """Recompute a step's key from the digests its inputs have now (upstream may have just run)."""
    parts = _key_parts(sp.step, facts)
    if parts is None:
        return False
    values, sp.inputs = parts
    sp.texts = dict(zip(FIELDS, values))
    sp.key = key_of_values(values)
    return True


def _params_text(inst: Any) -> str:
    params = inst.params
    if not params:
        return "[]"
    return canonical(_params_value(inst))


def _params_value(inst: Any) -> Any:
    params = inst.params
    named = dict(params.items()) if hasattr(params, "items") else {}
    return [list(params), named]


def plan_step(step: Step, upstream: Mapping[int, StepPlan], facts: Facts) -> StepPlan:
    """Decide one step, given the decisions already made for its dependencies."""
    if step.pending:
        return StepPlan(step, Decision.PENDING, [Reason(ReasonKind.CHECKPOINT, path=p) for p in step.waits_on])
    reasons: list[Reason] = []
    if facts.forced(step):
        reasons.append(Reason(ReasonKind.FORCED))
    outputs = step.outputs
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
        if _unsettled(upstream.get(id(dep))):
            return StepPlan(step, Decision.PENDING, [Reason(ReasonKind.UPSTREAM_CHANGED, step=d.id)
                                                     for d in step.deps if _unsettled(upstream.get(id(d)))])
    memo = step.memo
    if memo is not None and _memo_holds(memo, outputs, out_digests, facts):
        return StepPlan(step, Decision.SKIP, [], memo[0], memo[1])
    parts = _key_parts(step, facts)
    if parts is None:  # an input vanished between graph and plan: run and let the job say so
        return StepPlan(step, Decision.RUN, [Reason(ReasonKind.MISSING, path=_first_missing(step, facts))])
    values, inputs = parts
    key = key_of_values(values)
    if not outputs:
        if step.rule.kind != "none":  # Snakemake: an action without outputs always runs
            return StepPlan(step, Decision.RUN, [Reason(ReasonKind.MISSING)], key, inputs, dict(zip(FIELDS, values)))
        return StepPlan(step, Decision.SKIP, [], key, inputs)
    trace_of = facts.trace
    traces = [trace_of(o) for o in outputs]
    untraced = sum(1 for t in traces if t is None)  # not "None in traces": that calls __eq__
    if untraced:
        if untraced == len(traces) and facts.newer_than(outputs, [p for p, _ in inputs]):
            return StepPlan(step, Decision.ADOPT, [], key, inputs, dict(zip(FIELDS, values)))
        return StepPlan(step, Decision.RUN, [Reason(ReasonKind.NO_TRACE)], key, inputs, dict(zip(FIELDS, values)))
    for trace in traces:
        if trace.key != key:  # type: ignore[union-attr]
            texts = dict(zip(FIELDS, values))
            return StepPlan(step, Decision.RUN, _changes(step, trace, digests_of(texts), inputs),  # type: ignore[arg-type]
                            key, inputs, texts)
    flags = step.instance.flags  # type: ignore[union-attr]
    if not (flags and all("touch" in flags.get(o, ()) for o in outputs)):  # touch() outputs: only existence counts
        for out, d, trace in zip(outputs, out_digests, traces):
            if d != trace.output_digest:  # type: ignore[union-attr]
                reasons.append(Reason(ReasonKind.OUTPUT_MODIFIED, path=out))
    if reasons:
        return StepPlan(step, Decision.RUN, reasons, key, inputs, dict(zip(FIELDS, values)))
    return StepPlan(step, Decision.SKIP, [], key, inputs)


def _memo_holds(memo: tuple[str, tuple[tuple[str, str], ...]], outputs: Sequence[str],
                out_digests: Sequence[str | None], facts: Facts) -> bool:
    """Whether the key the graph memo kept for a step is still its key, and what it made is still
    there: the memo's fingerprint covers every key field but the inputs, so equal input digests
    mean an equal key without instantiating the step or rendering its command (see ``memo``).
    Anything else is decided the ordinary way, which can name the reason."""
    key, inputs = memo
    digest = facts.digest
    for path, d in inputs:
        if d != "ancient" and digest(path) != d:
            return False
    trace_of = facts.trace
    for out, d in zip(outputs, out_digests):
        t = trace_of(out)
        if t is None or t.key != key or t.output_digest != d:
            return False
    return True


def _unsettled(up: StepPlan | None) -> bool:
    """An upstream step that will run, or may: its dependants wait for it."""
    return up is not None and (up.decision is Decision.RUN or up.decision is Decision.PENDING)


def _first_missing(step: Step, facts: Facts) -> str:
    for p in step.inputs:
        if facts.digest(p) is None:
            return p
    return step.outputs[0] if step.outputs else step.rule.name


def _changes(step: Step, trace: TraceLike, fields: Mapping[str, str], inputs: tuple[tuple[str, str], ...]) -> list[Reason]:
    reasons: list[Reason] = []
    for name in diff_fields(trace.fields, fields):
        if name == "inputs":
            old = dict(trace.inputs)
            new = dict(inputs)
            changed = [p for p in new if old.get(p) != new[p]] + [p for p in old if p not in new]
            reasons.extend(Reason(ReasonKind.INPUT_CHANGED, path=p) for p in changed)
            if not changed:  # same set, other order
                reasons.append(Reason(ReasonKind.INPUT_CHANGED))
        elif name == "action":
            kind = ReasonKind.COMMAND_CHANGED if step.rule.kind == "shell" else ReasonKind.CODE_CHANGED
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


def plan(steps: Iterable[Step], facts: Facts) -> Plan:
    """Decide every step; ``steps`` must list dependencies before dependants.

    A ``temp()`` output deleted after its consumers finished is not a reason to rerun: it stands in
    with its recorded digest. Only when a consumer runs anyway is its producer run again to remake it.
    """
    steps = list(steps)
    virtual = _absent_temps(steps, facts)
    if virtual:
        real = facts.digest
        facts = replace(facts, digest=lambda p: virtual.get(p) or real(p))
    out: list[StepPlan] = []
    by_id: dict[int, StepPlan] = {}
    for step in steps:
        sp = plan_step(step, by_id, facts)
        out.append(sp)
        by_id[id(step)] = sp
    if virtual:
        _remake_needed_temps(out, by_id, virtual)
    return Plan(out, by_id, facts)


def _absent_temps(steps: list[Step], facts: Facts) -> dict[str, str]:
    virtual: dict[str, str] = {}
    for step in steps:
        if not step.rule.may_flag or step.pending:  # most steps flag nothing
            continue
        inst = step.instance
        if not inst.flags:  # type: ignore[union-attr]
            continue
        for out in step.outputs:
            if "temp" in inst.flags.get(out, ()) and not facts.incomplete(out) and facts.digest(out) is None:
                trace = facts.trace(out)
                if trace is not None:
                    virtual[out] = trace.output_digest
    return virtual


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
