"""The cache pass over a plan, from data: steps, traces and digests as dicts, and the cache as a dict
from step key to manifest (what ``Cache.lookup`` answers). Every lookup is recorded, so a test can
say which steps asked the cache and which never did."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flowmake.cache import Manifest
from flowmake.cache_plan import IN_CACHE_FIELD, IN_CACHE_MARK, apply_cache, in_cache_fields
from flowmake.planner import Decision, Facts, ReasonKind, StepPlan, plan, with_current_key
from flowmake.rules import RuleKind
from flowmake.store import Trace


@dataclass
class Rule:
    name: str
    kind: RuleKind = RuleKind.SHELL
    container: str | None = None
    is_checkpoint: bool = False
    may_flag: bool = False
    cache: bool | None = None
    localrule: bool = False
    streams: bool = False


@dataclass
class Instance:
    input: list[str]
    command: str
    params: list[Any] = field(default_factory=list)
    flags: dict[str, frozenset[str]] = field(default_factory=dict)
    log: tuple[str, ...] = ()
    benchmark: str | None = None

    def action_source(self) -> str:
        return self.command


class Step:
    def __init__(self, name: str, inputs: list[str], outputs: list[str], deps: list[Step] = (),  # type: ignore[assignment]
                 command: str = "cmd", **rule: Any) -> None:
        self.rule = Rule(name, **rule)
        self.instance = Instance(list(inputs), command)
        self.outputs = tuple(outputs)
        self.deps = list(deps)
        self.id = f"{name}:{outputs[0]}"
        self.waits_on = ()
        self.pending = False

    @property
    def inputs(self) -> list[str]:
        return self.instance.input


class Lab:
    """A cache as data: key -> manifest, and the keys asked for."""

    def __init__(self) -> None:
        self.entries: dict[str, Manifest] = {}
        self.asked: list[str] = []

    def lookup(self, key: str) -> Manifest | None:
        self.asked.append(key)
        return self.entries.get(key)

    def publish(self, step: Step, files: dict[str, str]) -> None:
        key = key_of(step, files)
        self.entries[key] = Manifest(key, {o: files[o] for o in step.outputs})


def facts(files: dict[str, str], traces: dict[str, Trace], forced: tuple[str, ...] = ()) -> Facts:
    return Facts(digest=files.get, trace=traces.get, incomplete=lambda p: False,
                 forced=lambda s: s.id in forced, newer_than=lambda o, i: False)


def key_of(step: Step, files: dict[str, str]) -> str:
    sp = with_current_key(StepPlan(step, Decision.RUN), facts(files, {}))  # type: ignore[arg-type]
    assert sp is not None and sp.key is not None
    return sp.key


def traced(step: Step, files: dict[str, str], *, in_cache: bool = False) -> dict[str, Trace]:
    sp = with_current_key(StepPlan(step, Decision.RUN), facts(files, {}))  # type: ignore[arg-type]
    assert sp is not None and sp.fields is not None
    fields = in_cache_fields(sp.fields) if in_cache else sp.fields
    return {o: Trace(o, step.rule.name, sp.key, fields, sp.inputs, files[o], step.id, 0.0)  # type: ignore[arg-type]
            for o in step.outputs}


def chain() -> tuple[Step, Step, Step]:
    a = Step("a", ["in.txt"], ["a.txt"])
    b = Step("b", ["a.txt"], ["b.txt"], deps=[a])
    c = Step("c", ["b.txt"], ["c.txt"], deps=[b])
    return a, b, c


BUILT = {"in.txt": "i1", "a.txt": "a1", "b.txt": "b1", "c.txt": "c1"}  # what a labmate's run made


def decisions(p: Any) -> list[tuple[str, list[str]]]:
    return [(sp.decision.value, [r.kind.value for r in sp.reasons]) for sp in p.steps]


def test_a_fresh_clone_restores_only_its_target_and_keys_the_rest_from_manifests():
    a, b, c = chain()
    lab = Lab()
    for s in (a, b, c):
        lab.publish(s, BUILT)
    p = plan([a, b, c], facts({"in.txt": "i1"}, {}))
    out = apply_cache(p, lab.lookup, targets=[c])
    assert decisions(p) == [("restore", ["cache-hit", "in-cache"]), ("restore", ["cache-hit", "in-cache"]),
                            ("restore", ["cache-hit"])]
    assert {p.steps[i].step.id: r.place for i, r in zip(range(3), [p.restores[id(s)] for s in (a, b, c)])} == {
        a.id: False, b.id: False, c.id: True}
    assert len(lab.asked) == 3 and (out.lookups, out.hits, out.placed) == (3, 3, 1)


def test_current_steps_never_ask_the_cache():
    a, b, c = chain()
    lab = Lab()
    traces = {**traced(a, BUILT), **traced(b, BUILT), **traced(c, BUILT)}
    p = plan([a, b, c], facts(dict(BUILT), traces))
    apply_cache(p, lab.lookup, targets=[c])
    assert decisions(p) == [("skip", [])] * 3 and lab.asked == []


def test_a_miss_runs_and_what_it_reads_from_a_hit_is_placed():
    a, b, c = chain()
    lab = Lab()
    lab.publish(a, BUILT)  # b and c were never published
    p = plan([a, b, c], facts({"in.txt": "i1"}, {}))
    apply_cache(p, lab.lookup, targets=[c])
    assert decisions(p) == [("restore", ["cache-hit"]), ("run", ["missing"]), ("run", ["missing"])]
    assert p.restores[id(a)].place, "b runs and reads a.txt"
    assert len(lab.asked) == 2, "c's key waits for b's output: not asked"


def test_back_on_an_old_branch_the_edited_step_and_its_dependants_are_hits_placed_over_the_stale_files():
    a, b, c = chain()
    lab = Lab()
    for s in (a, b, c):
        lab.publish(s, BUILT)  # the old branch's results
    a.instance.command = "the new branch's command"
    new = {"in.txt": "i1", "a.txt": "a2", "b.txt": "b2", "c.txt": "c2"}
    traces = {**traced(a, new), **traced(b, new), **traced(c, new)}
    a.instance.command = "cmd"  # back on the old branch
    p = plan([a, b, c], facts(new, traces))
    assert decisions(p)[0] == ("run", ["command-changed"]) and p.steps[1].decision is Decision.PENDING
    apply_cache(p, lab.lookup, targets=[c])
    assert decisions(p) == [("restore", ["cache-hit"])] * 3
    assert all(p.restores[id(s)].place for s in (a, b, c)), "the new branch's files on disk are replaced"


def test_early_cutoff_through_the_cache():
    a, b, c = chain()
    lab = Lab()
    traces = {**traced(a, BUILT), **traced(b, BUILT), **traced(c, BUILT)}
    a.instance.command = "reworded, same result"
    lab.publish(a, BUILT)  # someone ran the new command already: it made the same a.txt
    p = plan([a, b, c], facts(dict(BUILT), traces))
    apply_cache(p, lab.lookup, targets=[c])
    assert decisions(p) == [("restore", ["cache-hit"]), ("skip", []), ("skip", [])]
    assert len(lab.asked) == 1


def test_forced_localrule_and_opted_out_steps_are_never_restored():
    lab = Lab()
    steps = [Step("f", ["in.txt"], ["f.txt"]), Step("l", ["in.txt"], ["l.txt"], localrule=True),
             Step("n", ["in.txt"], ["n.txt"], cache=False), Step("y", ["in.txt"], ["y.txt"], cache=True)]
    files = {"in.txt": "i1", "f.txt": "1", "l.txt": "2", "n.txt": "3", "y.txt": "4"}
    for s in steps:
        lab.publish(s, files)
    p = plan(steps, facts({"in.txt": "i1"}, {}, forced=("f:f.txt",)))
    apply_cache(p, lab.lookup, targets=steps)
    assert [sp.decision for sp in p.steps] == [Decision.RUN, Decision.RUN, Decision.RUN, Decision.RESTORE]
    assert lab.asked == [key_of(steps[3], files)]


def test_a_manifest_missing_a_declared_output_is_a_miss():
    a = Step("a", ["in.txt"], ["a.txt", "a.log"])
    lab = Lab()
    key = key_of(a, BUILT)
    lab.entries[key] = Manifest(key, {"a.txt": "a1"})
    p = plan([a], facts({"in.txt": "i1"}, {}))
    apply_cache(p, lab.lookup, targets=[a])
    assert p.steps[0].decision is Decision.RUN


def test_outputs_left_in_the_cache_stand_in_and_a_no_op_asks_nothing():
    a, b, c = chain()
    lab = Lab()
    for s in (a, b, c):
        lab.publish(s, BUILT)
    traces = {**traced(a, BUILT, in_cache=True), **traced(b, BUILT, in_cache=True), **traced(c, BUILT)}
    assert traces["a.txt"].fields[IN_CACHE_FIELD] == IN_CACHE_MARK
    on_disk = {"in.txt": "i1", "c.txt": "c1"}  # the last run placed only its target
    p = plan([a, b, c], facts(on_disk, traces))
    apply_cache(p, lab.lookup, targets=[c])
    assert decisions(p) == [("skip", ["in-cache"]), ("skip", ["in-cache"]), ("skip", [])]
    assert lab.asked == []
    # Asking for b now places it (looked up by its trace's key), and a stays where it is.
    p = plan([a, b, c], facts(on_disk, traces))
    apply_cache(p, lab.lookup, targets=[b])
    assert decisions(p)[:2] == [("skip", ["in-cache"]), ("restore", ["cache-hit"])]
    assert p.restores[id(b)].place and lab.asked == [key_of(b, BUILT)]


def test_an_entry_gone_from_the_cache_is_made_again_with_what_it_reads():
    a, b, c = chain()
    lab = Lab()
    lab.publish(a, BUILT)  # b's entry was collected since
    traces = {**traced(a, BUILT, in_cache=True), **traced(b, BUILT, in_cache=True), **traced(c, BUILT)}
    p = plan([a, b, c], facts({"in.txt": "i1", "c.txt": "c1"}, traces))
    apply_cache(p, lab.lookup, targets=[b])
    assert decisions(p)[:2] == [("restore", ["cache-hit"]), ("run", ["missing"])]
    assert p.restores[id(a)].place, "b runs: it reads a.txt"
    assert p.steps[2].decision is Decision.PENDING, "c waits: b may make other bytes"


def test_without_the_mark_an_absent_output_is_missing_and_looked_up():
    a, b, c = chain()
    lab = Lab()
    traces = {**traced(a, BUILT), **traced(b, BUILT), **traced(c, BUILT)}
    p = plan([a, b, c], facts({"in.txt": "i1", "c.txt": "c1"}, traces))  # a.txt, b.txt deleted by hand
    apply_cache(p, lab.lookup, targets=[c])
    assert decisions(p)[:2] == [("run", ["missing"]), ("run", ["missing"])]
    assert len(lab.asked) == 1, "b's key waits for a's output"


def test_an_edited_rule_is_not_stood_in_by_what_its_old_key_left_in_the_cache():
    a, b, c = chain()
    lab = Lab()
    traces = {**traced(a, BUILT, in_cache=True), **traced(b, BUILT, in_cache=True), **traced(c, BUILT)}
    a.instance.command = "edited"
    p = plan([a, b, c], facts({"in.txt": "i1", "c.txt": "c1"}, traces))
    apply_cache(p, lab.lookup, targets=[c])
    assert decisions(p)[0] == ("run", ["missing"]) and lab.asked == [key_of(a, BUILT)]


def test_an_output_left_in_the_cache_keeps_its_key_fields_for_when_it_is_placed():
    a, b, c = chain()
    traces = {**traced(a, BUILT, in_cache=True), **traced(b, BUILT, in_cache=True), **traced(c, BUILT)}
    p = plan([a, b, c], facts({"in.txt": "i1", "c.txt": "c1"}, traces))
    apply_cache(p, Lab().lookup, targets=[c])
    sp = p.steps[0]
    assert sp.decision is Decision.SKIP and sp.fields is not None, "restored later, its traces are written from these"
    assert in_cache_fields(sp.fields) == traces["a.txt"].fields
