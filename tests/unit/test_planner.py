"""The planner is a pure function: these tests feed it steps, traces and digests as plain data."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from flowmake.namedlist import Flag
from flowmake.outputs import CHANGED_WHILE_RUNNING, record_traces
from flowmake.planner import (Decision, Facts, Provenance, Reason, ReasonKind, StepPlan, plan, reread,
                              with_current_key)
from flowmake.temps import ABSENT_TEMP
from flowmake.rules import RuleKind
from flowmake.store import Store, Trace


@dataclass
class FakeRule:
    name: str
    kind: RuleKind = RuleKind.SHELL
    container: str | None = None
    is_checkpoint: bool = False
    may_flag: bool = True
    streams: bool = False  # no pipe() or service() outputs


@dataclass
class FakeInstance:
    input: list[str]
    command: str
    params: list[Any] = field(default_factory=list)
    flags: dict[str, frozenset[str]] = field(default_factory=dict)

    def action_source(self) -> str:
        return self.command


class FakeStep:
    def __init__(self, name: str, inputs: list[str], outputs: list[str], command: str = "cmd",
                 deps: list["FakeStep"] = (), flags: dict[str, frozenset[str]] | None = None) -> None:
        self.rule = FakeRule(name)
        self.instance = FakeInstance(inputs, command, flags=flags or {})
        self.outputs = tuple(outputs)
        self.deps = list(deps)
        self.id = f"{name}:{outputs[0]}"
        self.waits_on = ()
        self.pending = False

    @property
    def inputs(self) -> list[str]:
        return self.instance.input


def facts(files: dict[str, str], traces: dict[str, Trace], *, incomplete=(), forced=(), newer=False) -> Facts:
    return Facts(
        digest=files.get,
        trace=traces.get,
        incomplete=set(incomplete).__contains__,
        forced=lambda s: s.id in forced,
        newer_than=lambda outs, ins: newer,
    )


def traced(step: FakeStep, files: dict[str, str]) -> dict[str, Trace]:
    """Traces as a successful run of ``step`` over ``files`` would have left them."""
    # As outputs.record_traces does it: the key refreshed from the digests the inputs have.
    sp = with_current_key(StepPlan(step, Decision.RUN), facts(files, {}))  # type: ignore[arg-type]
    assert sp is not None
    return {o: Trace(o, step.rule.name, sp.key, sp.fields, sp.inputs, files[o], step.id, 0.0)  # type: ignore[arg-type]
            for o in step.outputs}


def test_missing_output_runs():
    s = FakeStep("a", ["in.txt"], ["out.txt"])
    p = plan([s], facts({"in.txt": "1"}, {}))
    assert p.steps[0].decision is Decision.RUN
    assert [r.kind for r in p.steps[0].reasons] == [ReasonKind.MISSING]


def test_unchanged_step_skips_and_content_change_names_the_input():
    s = FakeStep("a", ["in.txt", "other.txt"], ["out.txt"])
    files = {"in.txt": "1", "other.txt": "2", "out.txt": "3"}
    traces = traced(s, files)
    assert plan([s], facts(files, traces)).steps[0].decision is Decision.SKIP
    files["in.txt"] = "changed"
    sp = plan([s], facts(files, traces)).steps[0]
    assert sp.decision is Decision.RUN
    assert [(r.kind, r.path) for r in sp.reasons] == [(ReasonKind.INPUT_CHANGED, "in.txt")]


def test_input_reasons_name_added_changed_and_removed_paths_but_not_a_reordering():
    files = {"x": "1", "y": "2", "z": "3", "w": "4", "out": "9"}
    traces = traced(FakeStep("a", ["x", "y", "z"], ["out"]), files)
    changed = FakeStep("a", ["w", "y", "x"], ["out"])
    sp = plan([changed], facts({**files, "x": "new"}, traces)).steps[0]
    assert [(r.kind, r.path) for r in sp.reasons] == [
        (ReasonKind.INPUT_CHANGED, "w"), (ReasonKind.INPUT_CHANGED, "x"), (ReasonKind.INPUT_CHANGED, "z")]
    reordered = FakeStep("a", ["z", "y", "x"], ["out"])
    sp = plan([reordered], facts(files, traces)).steps[0]
    assert sp.decision is Decision.RUN
    assert [(r.kind, r.path) for r in sp.reasons] == [(ReasonKind.INPUT_CHANGED, None)]


def test_command_edit_is_command_changed_and_downstream_pends():
    a = FakeStep("a", ["in.txt"], ["mid.txt"])
    b = FakeStep("b", ["mid.txt"], ["out.txt"], deps=[a])
    files = {"in.txt": "1", "mid.txt": "2", "out.txt": "3"}
    traces = {**traced(a, files), **traced(b, files)}
    a.instance.command = "new cmd"
    p = plan([a, b], facts(files, traces))
    assert [r.kind for r in p.steps[0].reasons] == [ReasonKind.COMMAND_CHANGED]
    assert p.steps[1].decision is Decision.PENDING
    assert p.steps[1].reasons[0].kind is ReasonKind.UPSTREAM_CHANGED and p.steps[1].reasons[0].step == a.id


def test_no_trace_adopts_newer_outputs_once_and_runs_older_ones():
    s = FakeStep("a", ["in.txt"], ["out.txt"])
    files = {"in.txt": "1", "out.txt": "2"}
    assert plan([s], facts(files, {}, newer=True)).steps[0].decision is Decision.ADOPT
    sp = plan([s], facts(files, {}, newer=False)).steps[0]
    assert sp.decision is Decision.RUN and sp.reasons[0].kind is ReasonKind.NO_TRACE


def test_incomplete_beats_everything_and_output_edit_is_noticed():
    s = FakeStep("a", ["in.txt"], ["out.txt"])
    files = {"in.txt": "1", "out.txt": "2"}
    traces = traced(s, files)
    sp = plan([s], facts(files, traces, incomplete={"out.txt"})).steps[0]
    assert [r.kind for r in sp.reasons] == [ReasonKind.INCOMPLETE]
    files["out.txt"] = "edited by hand"
    sp = plan([s], facts(files, traces)).steps[0]
    assert [r.kind for r in sp.reasons] == [ReasonKind.OUTPUT_MODIFIED]


def test_an_output_another_run_is_writing_runs_until_this_run_holds_its_lock():
    s = FakeStep("a", ["in.txt"], ["out.txt"])
    files = {"in.txt": "1", "out.txt": "half"}
    writing = replace(facts(files, {}, newer=True), in_flight={"out.txt"}.__contains__)
    sp = plan([s], writing).steps[0]
    assert sp.decision is Decision.RUN, "never adopted half written"
    assert [(r.kind, r.path) for r in sp.reasons] == [(ReasonKind.IN_FLIGHT, "out.txt")]
    files["out.txt"] = "whole"
    traces = traced(s, files)  # that run finished and recorded it; this one now holds the lock
    assert plan([s], reread(replace(writing, trace=traces.get, trace_head=None))).steps[0].decision is Decision.SKIP


def test_a_trace_of_inputs_changed_while_running_matches_nothing(tmp_path: Path) -> None:
    s = FakeStep("a", ["in.txt"], ["out.txt"])
    files = {"in.txt": "1", "out.txt": "2"}
    sp = plan([s], facts(files, {})).steps[0]  # no trace: runs, with its key computed
    with Store.open(tmp_path) as store:
        record_traces(store, s, sp, files.get, changed=["in.txt"])  # type: ignore[arg-type]
        trace = store.trace("out.txt")
    assert trace is not None and dict(trace.inputs) == {"in.txt": CHANGED_WHILE_RUNNING}
    sp = plan([s], facts(files, {"out.txt": trace})).steps[0]
    assert sp.decision is Decision.RUN, "the same inputs again do not make it up to date"
    assert [(r.kind, r.path) for r in sp.reasons] == [(ReasonKind.INPUT_CHANGED, "in.txt")]


def test_params_change_and_forced():
    s = FakeStep("a", ["in.txt"], ["out.txt"])
    files = {"in.txt": "1", "out.txt": "2"}
    traces = traced(s, files)
    s.instance.params = [3]
    assert [r.kind for r in plan([s], facts(files, traces)).steps[0].reasons] == [ReasonKind.PARAMS_CHANGED]
    s.instance.params = []
    sp = plan([s], facts(files, traces, forced={s.id})).steps[0]
    assert [r.kind for r in sp.reasons] == [ReasonKind.FORCED]


def test_deleted_temp_output_does_not_rerun_its_producer_unless_a_consumer_runs():
    a = FakeStep("a", ["in.txt"], ["tmp.txt"], flags={"tmp.txt": frozenset({Flag.TEMP})})
    b = FakeStep("b", ["tmp.txt"], ["out.txt"], deps=[a])
    files = {"in.txt": "1", "tmp.txt": "2", "out.txt": "3"}
    traces = {**traced(a, files), **traced(b, files)}
    del files["tmp.txt"]
    p = plan([a, b], facts(files, traces))
    assert [sp.decision for sp in p.steps] == [Decision.SKIP, Decision.SKIP]
    b.instance.command = "edited"
    p = plan([a, b], facts(files, traces))
    assert [sp.decision for sp in p.steps] == [Decision.RUN, Decision.RUN]
    assert p.steps[0].reasons[0].kind is ReasonKind.MISSING


def test_an_untraced_deleted_temp_output_stands_in_while_what_its_consumers_made_is_newer():
    a = FakeStep("a", ["in.txt"], ["tmp.txt"], flags={"tmp.txt": frozenset({Flag.TEMP})})
    b = FakeStep("b", ["tmp.txt"], ["out.txt"], deps=[a])
    files = {"in.txt": "1", "out.txt": "3"}  # made by another tool, which deleted tmp.txt
    p = plan([a, b], facts(files, {}, newer=True))
    assert [sp.decision for sp in p.steps] == [Decision.ADOPT, Decision.ADOPT]
    assert p.steps[1].inputs == (("tmp.txt", ABSENT_TEMP),)
    p = plan([a, b], facts(files, {}, newer=False))  # in.txt edited since out.txt was made
    assert [sp.decision for sp in p.steps] == [Decision.RUN, Decision.PENDING]
    assert p.steps[0].reasons[0].kind is ReasonKind.MISSING


def test_another_tools_record_decides_adoption_where_it_has_one():
    s = FakeStep("a", ["in.txt", "big.txt"], ["out.txt"])
    files = {"in.txt": "1", "big.txt": "2", "out.txt": "3"}
    asked: list[list[str]] = []

    def with_record(prov: Provenance | None, newer: bool) -> Facts:
        def newer_than(outs, ins):
            asked.append(list(ins))
            return newer
        return replace(facts(files, {}), newer_than=newer_than, provenance=lambda step: prov)

    sp = plan([s], with_record(Provenance((Reason(ReasonKind.COMMAND_CHANGED),)), True)).steps[0]
    assert sp.decision is Decision.RUN and [r.kind for r in sp.reasons] == [ReasonKind.COMMAND_CHANGED]
    # in.txt's checksum matched the record; only big.txt, which it does not vouch for, is asked by mtime
    assert plan([s], with_record(Provenance((), ("big.txt",)), True)).steps[0].decision is Decision.ADOPT
    assert asked == [["big.txt"]]
    assert plan([s], with_record(Provenance((), ()), False)).steps[0].decision is Decision.ADOPT


def test_reasons_serialise_with_hyphenated_kinds():
    s = FakeStep("a", ["in.txt"], ["out.txt"])
    files = {"in.txt": "1", "out.txt": "2"}
    traces = traced(s, files)
    files["in.txt"] = "9"
    sp = plan([s], facts(files, traces)).steps[0]
    assert sp.reasons[0].to_json() == {"kind": "input-changed", "path": "in.txt"}
    assert str(sp.reasons[0]) == "input changed: in.txt"
