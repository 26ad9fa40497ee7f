"""Plan + shared cache → the same plan with restores: which steps that would run the cache answers.

A pure pass over a ``planner.Plan``, reading the cache only through a lookup callable (step key →
manifest or None), so it is tested from data. Dependencies first: a step that would run (RUN, or
PENDING once the hits of its upstream settled it) and may be cached is keyed from its input digests
— an input a hit makes takes its digest from that hit's manifest, so nothing upstream is fetched or
run to know it — and looked up. A hit becomes ``Decision.RESTORE`` (reason cache-hit) and its
manifest's digests key its dependants, which may then skip on their own traces (early cutoff through
the cache) or be hits too. A forced step is never restored; a step whose outputs are current never
asks the cache.

Then, dependants first, only what is needed is placed: a hit's outputs when a target names them,
when a step that runs (or may) reads them, or when a stale version of them is on disk. The rest
stays in the cache (reason in-cache): its traces are recorded with a mark (``IN_CACHE_FIELD``), and
a later plan lets such an absent output stand in with its recorded digest (as an absent ``temp()``
output does), restoring it only once a target or a running step needs it. So a no-op after a
target-only restore asks the cache nothing, and a plan whose outputs are all on disk pays nothing.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Mapping, Protocol

from flowmake.graph import Step
from flowmake.namedlist import Flag
from flowmake.pipes import streams_rule
from flowmake.planner import (Decision, Facts, Plan, Reason, ReasonKind, StepPlan, decide_downstream, plan_step,
                              unsettled_in, with_current_key)
from flowmake.rules import RuleKind

# The trace field that marks an output whose content is in the shared cache, not on disk. Not a key
# field: the planner never counts it as a change (planner._changes).
IN_CACHE_FIELD = "cache"
IN_CACHE_MARK = "stays"

# Reasons a step runs that a restore cannot answer: another run is writing it (the scheduler waits
# for its lock and takes what it made), or the user asked for it to run.
NOT_RESTORED = (ReasonKind.FORCED, ReasonKind.IN_FLIGHT, ReasonKind.PIPE_GROUP, ReasonKind.CHECKPOINT)


_WOULD_RUN = frozenset((Decision.RUN, Decision.PENDING))
_decision = operator.attrgetter("decision")


class ManifestLike(Protocol):  # cache.Manifest, as the planner reads it
    @property
    def key(self) -> str: ...
    @property
    def outputs(self) -> Mapping[str, str]: ...
    @property
    def size(self) -> int: ...


Lookup = Callable[[str], "ManifestLike | None"]


@dataclass(frozen=True, slots=True)
class Restore:
    """What the scheduler does for a RESTORE step: place its outputs from ``manifest``, or (``place``
    False) only record traces marked as left in the cache."""

    manifest: ManifestLike
    place: bool


def cacheable(step: Step) -> bool:
    """Whether a step's result may come from (and go to) the shared cache.

    Not: rules without outputs or without an action (nothing to keep), ``localrules`` and
    ``cache: False`` (Snakemake's opt-out), checkpoints (their outputs decide the graph, which is
    resolved before any restore could place them), pipe()/service() steps (a stream has no content),
    ``update()`` outputs and ``ancient()``/``before_update()`` inputs (the result depends on more than
    the key: the old output, or an input whose content is not in the key), and storage objects
    (placed by the storage layer, not in the workdir)."""
    rule = step.rule
    if rule.cache is False or not step.outputs or rule.kind is RuleKind.NONE or rule.localrule:
        return False
    if rule.is_checkpoint or (rule.may_flag and streams_rule(rule)):
        return False
    inst = step.instance
    if inst is None:
        return False
    if inst.flags and any(Flag.UPDATE in f or Flag.ANCIENT in f or Flag.BEFORE_UPDATE in f
                          for f in inst.flags.values()):
        return False
    return not any(o.startswith(".flowmake/") for o in step.outputs)


@dataclass
class CacheOutcome:
    lookups: int = 0
    hits: int = 0
    placed: int = 0  # hits whose outputs this run places
    asked: set[int] = field(default_factory=set)  # the steps looked up (by id): a miss is not asked again


def would_run(p: Plan) -> bool:
    """Whether any step of ``p`` will or may run (at C speed: a no-op plans 100k steps)."""
    return any(map(_WOULD_RUN.__contains__, map(_decision, p.steps)))


def apply_cache(p: Plan, lookup: Lookup, *, targets: Iterable[Step | str],
                may_cache: Callable[[Step], bool] = cacheable) -> CacheOutcome:
    """Turn the steps of ``p`` the cache answers into restores, in place; ``p.restores`` says, per
    restored step (by id), its manifest and whether its outputs are placed."""
    outcome = CacheOutcome()
    if not would_run(p):
        return outcome  # all current: nothing asks the cache, not even a stand-in
    hit: dict[str, str] = {}  # outputs of this run's hits -> their digests (from the manifests)
    real = p.facts.digest
    facts = replace(p.facts, digest=lambda path: hit.get(path) or real(path))
    out, by_id = p.steps, p.by_id
    unsettled = unsettled_in(by_id)
    manifests: dict[int, ManifestLike] = {}
    settled: set[int] = set()  # steps this pass took out of RUN or PENDING
    standing: set[int] = set()  # steps whose outputs an earlier run left in the cache
    for i, sp in enumerate(out):
        step = sp.step
        if sp.decision is Decision.PENDING and not step.pending and id(step) not in p.groups and any(
                id(d) in settled for d in step.deps) and not any(unsettled(d) for d in step.deps):
            sp = plan_step(step, unsettled, facts)  # its upstream is settled by hits: decided on their digests
            if sp.decision is Decision.PENDING:  # cannot be: nothing upstream runs
                continue
            out[i] = by_id[id(step)] = sp
            if sp.decision is not Decision.RUN:  # early cutoff through the cache
                settled.add(id(step))
        if sp.decision is not Decision.RUN or any(r.kind in NOT_RESTORED for r in sp.reasons):
            continue
        if id(step) in p.groups or not may_cache(step):
            continue
        keyed = with_current_key(sp, facts)
        if keyed is None or keyed.key is None:  # an input is missing: the job will say which
            continue
        left = _left_in_cache(keyed, p.facts)
        if left is not None:  # as current as if on disk: placed below only if something needs it
            hit.update(left)
            settled.add(id(step))
            standing.add(id(step))
            # Its key fields kept: restoring it later records its traces afresh, without the mark.
            out[i] = by_id[id(step)] = replace(keyed, decision=Decision.SKIP, reasons=[Reason(ReasonKind.IN_CACHE)])
            continue
        outcome.lookups += 1
        outcome.asked.add(id(step))
        m = lookup(keyed.key)
        if m is None or any(o not in m.outputs for o in step.outputs):
            continue
        outcome.hits += 1
        manifests[id(step)] = m
        settled.add(id(step))
        hit.update(m.outputs)
        sp = replace(keyed, decision=Decision.RESTORE, reasons=[Reason(ReasonKind.CACHE_HIT)])
        out[i] = by_id[id(step)] = sp
    _place_needed(p, manifests, lookup, targets, standing, real, outcome)
    return outcome


def _left_in_cache(sp: StepPlan, facts: Facts) -> dict[str, str] | None:
    """A step that runs only because outputs are missing that an earlier run left in the cache with
    this very key (their traces carry the mark), the rest on disk as traced: their digests."""
    missing = set()
    for r in sp.reasons:
        if r.kind is not ReasonKind.MISSING or r.path is None:
            return None
        missing.add(r.path)
    digests: dict[str, str] = {}
    for out in sp.step.outputs:
        tr = facts.trace(out)
        if tr is None or tr.key != sp.key:
            return None
        if out in missing:
            if tr.fields.get(IN_CACHE_FIELD) != IN_CACHE_MARK:
                return None
        elif facts.digest(out) != tr.output_digest:
            return None
        digests[out] = tr.output_digest
    return digests


def _place_needed(p: Plan, manifests: dict[int, ManifestLike], lookup: Lookup, targets: Iterable[Step | str],
                  standing: set[int], real: Callable[[str], str | None], outcome: CacheOutcome) -> None:
    """Dependants first: what a target or a running step reads is placed; the rest stays in the
    cache. An output an earlier run left in the cache is restored now if needed (looked up by its
    trace's key), or run when the cache no longer holds it."""
    needed: set[str] = set()
    target_ids: set[int] = set()
    for t in targets:
        if isinstance(t, str):  # a file no rule makes
            needed.add(t)
        elif t.outputs:
            target_ids.add(id(t))
        else:  # rule all: its inputs are what was asked for
            needed.update(t.inputs)
    moved: set[int] = set()
    for sp in reversed(p.steps):
        step = sp.step
        decision = sp.decision
        if decision is Decision.RESTORE:
            m = manifests[id(step)]
            place = (id(step) in target_ids or any(o in needed for o in step.outputs)
                     or any(real(o) is not None for o in step.outputs))  # a stale version on disk goes
            if not place:
                sp.reasons = [Reason(ReasonKind.CACHE_HIT), Reason(ReasonKind.IN_CACHE)]
            p.restores[id(step)] = Restore(m, place)
            outcome.placed += place
        elif id(step) in standing and decision is Decision.SKIP:
            if id(step) in target_ids or any(o in needed for o in step.outputs):
                found = lookup(sp.key) if sp.key is not None else None
                outcome.lookups += 1
                outcome.asked.add(id(step))
                if found is not None and all(o in found.outputs for o in step.outputs):
                    outcome.hits += 1
                    outcome.placed += 1
                    sp.decision, sp.reasons = Decision.RESTORE, [Reason(ReasonKind.CACHE_HIT)]
                    manifests[id(step)] = found
                    p.restores[id(step)] = Restore(found, True)
                else:  # gone from the cache (collected): made again
                    missing = next(o for o in step.outputs if real(o) is None)
                    standing.discard(id(step))
                    sp.decision, sp.reasons = Decision.RUN, [Reason(ReasonKind.MISSING, path=missing)]
                    moved.add(id(step))
                    needed.update(step.inputs)
            else:
                sp.reasons = [Reason(ReasonKind.IN_CACHE)]
        if decision is Decision.RUN or decision is Decision.PENDING:
            needed.update(step.inputs)
    if moved and decide_downstream(p.steps, p.by_id, p.facts, moved):
        # A step made again may make other bytes: its dependants that skipped wait for it now, and
        # what they read must be on disk. (Rare: the cache lost an entry an earlier run left there.)
        _place_again(p, manifests, lookup, targets, standing, real, outcome)


def _place_again(p: Plan, manifests: dict[int, ManifestLike], lookup: Lookup, targets: Iterable[Step | str],
                 standing: set[int], real: Callable[[str], str | None], outcome: CacheOutcome) -> None:
    for sid, r in list(p.restores.items()):
        if r.place:
            outcome.placed -= 1
        sp = p.by_id[sid]
        if sp.decision is Decision.RESTORE and not r.place:
            sp.reasons = [Reason(ReasonKind.CACHE_HIT)]
    p.restores.clear()
    _place_needed(p, manifests, lookup, targets, standing, real, outcome)


def in_cache_fields(fields: Mapping[str, str]) -> dict[str, str]:
    """A trace's fields marked as made by a hit left in the cache."""
    return {**fields, IN_CACHE_FIELD: IN_CACHE_MARK}


def describe(outcome: CacheOutcome) -> dict[str, Any]:
    return {"lookups": outcome.lookups, "hits": outcome.hits, "placed": outcome.placed}
