"""The scheduler, in-process, against FakeBackend: order, resources, retries, OOM scaling, lost
jobs, cancellation, early cutoff and checkpoint growth. Nothing runs a process; each test takes
milliseconds. The commands a fake backend was given are asserted exactly, as ninja's tests do."""

from __future__ import annotations

import os
import signal
import textwrap
from pathlib import Path

import pytest

from flowmake.backend import JobSpec
from flowmake.step_state import StepState
from tests.fakes import FAIL, LOST, OK, OOM, FakeBackend, Outcome, by_attempt, run_in_process, slow, writes


def flowfile(root: Path, text: str) -> Path:
    (root / "Flowfile").write_text(textwrap.dedent(text).lstrip())
    return root


CHAIN = """
rule all:
    input: "c.txt"
rule a:
    input: "src.txt"
    output: "a.txt"
    shell: "make a from {input}"
rule b:
    input: "a.txt"
    output: "b.txt"
    shell: "make b from {input}"
rule c:
    input: "b.txt"
    output: "c.txt"
    shell: "make c from {input}"
"""


@pytest.fixture
def chain(tmp_path: Path) -> Path:
    flowfile(tmp_path, CHAIN)
    (tmp_path / "src.txt").write_text("source\n")
    return tmp_path


def test_runs_dependencies_first_with_the_rendered_commands(chain: Path) -> None:
    run = run_in_process(chain)
    assert run.backend.commands == ["make a from src.txt", "make b from a.txt", "make c from b.txt"]
    assert run.result.ran == ["a:a.txt", "b:b.txt", "c:c.txt"]
    assert (chain / "c.txt").read_text() == "c:c.txt\n"  # the fake wrote it; the scheduler checked it
    assert run.unsettled == []


def test_nothing_is_submitted_when_everything_is_up_to_date(chain: Path) -> None:
    run_in_process(chain)
    again = run_in_process(chain)
    assert again.backend.submitted == []
    assert again.result.ran == []


def test_priority_then_critical_path_decide_the_order(tmp_path: Path) -> None:
    flowfile(tmp_path, """
        rule all:
            input: "low.txt", "high.txt", "long2.txt"
        rule low:
            output: "low.txt"
            shell: "low"
        rule high:
            output: "high.txt"
            priority: 5
            shell: "high"
        rule long1:
            output: "long1.txt"
            shell: "long1"
        rule long2:
            input: "long1.txt"
            output: "long2.txt"
            shell: "long2"
    """)
    run = run_in_process(tmp_path, backend=FakeBackend(slots=1), cores=1)
    # high first (priority), then the head of the longer chain, then the rest as they become ready.
    assert run.backend.commands == ["high", "long1", "low", "long2"]


def test_threads_never_exceed_the_cores(tmp_path: Path) -> None:
    flowfile(tmp_path, """
        rule all:
            input: expand("t/{i}.txt", i=range(6))
        rule t:
            output: "t/{i}.txt"
            threads: 2
            shell: "work {wildcards.i}"
    """)
    backend = FakeBackend(lambda spec: slow(3))
    run = run_in_process(tmp_path, backend=backend, cores=4)
    assert len(run.result.ran) == 6
    assert backend.max_threads == 4  # two jobs of two threads at a time, never three
    assert backend.max_running == 2


def test_a_resource_limit_serialises_jobs(tmp_path: Path) -> None:
    flowfile(tmp_path, """
        rule all:
            input: expand("m/{i}.txt", i=range(3))
        rule m:
            output: "m/{i}.txt"
            resources: mem_mb=600
            shell: "big {wildcards.i}"
    """)
    backend = FakeBackend(lambda spec: slow(2))
    run = run_in_process(tmp_path, backend=backend, cores=8, limits={"mem_mb": 1000})
    assert len(run.result.ran) == 3
    assert backend.max_running == 1


def test_a_failed_job_is_retried_and_then_succeeds(chain: Path) -> None:
    backend = FakeBackend(by_attempt({"b": [FAIL]}))
    run = run_in_process(chain, backend=backend, retries=1)
    assert run.backend.steps == ["a:a.txt", "b:b.txt", "b:b.txt", "c:c.txt"]
    assert [s.attempt for s in run.backend.submitted if s.rule == "b"] == [1, 2]
    assert run.result.failed == []
    assert "b:b.txt: exit code 1; retry 1 of 1" in run.progress


def test_without_retries_a_failure_stops_the_run(chain: Path) -> None:
    run = run_in_process(chain, backend=FakeBackend(by_attempt({"b": [FAIL]})))
    assert run.backend.steps == ["a:a.txt", "b:b.txt"]
    assert run.result.failed == [("b:b.txt", "exit code 1")]
    assert not (chain / "b.txt").exists()
    assert run.scheduler._records[id(_step(run, "c"))].state is StepState.WAITING


def test_keep_going_runs_what_does_not_depend_on_the_failure(tmp_path: Path) -> None:
    flowfile(tmp_path, """
        rule all:
            input: "x/bad.txt", "x/good.txt", "y.txt"
        rule x:
            output: "x/{n}.txt"
            shell: "x {wildcards.n}"
        rule y:
            input: "x/bad.txt"
            output: "y.txt"
            shell: "y"
    """)
    backend = FakeBackend(lambda spec: FAIL if spec.step_id == "x:x/bad.txt" else OK)
    run = run_in_process(tmp_path, backend=backend, keep_going=True)
    assert sorted(run.backend.commands) == ["x bad", "x good"]
    assert run.result.failed == [("x:x/bad.txt", "exit code 1")]


def test_out_of_memory_retries_with_more_memory(tmp_path: Path) -> None:
    flowfile(tmp_path, """
        rule m:
            output: "m.txt"
            resources: mem_mb=1000
            retries: 2
            shell: "big"
    """)
    backend = FakeBackend(by_attempt({"m": [OOM, OOM]}))
    run = run_in_process(tmp_path, backend=backend)
    assert [s.resources.mem_mb for s in backend.submitted] == [1000, 1500, 2250]
    assert run.result.ran == ["m:m.txt"]


def test_a_lost_job_is_resubmitted_without_spending_a_retry(chain: Path) -> None:
    backend = FakeBackend(by_attempt({"a": [LOST, LOST]}))
    run = run_in_process(chain, backend=backend)  # no retries allowed, yet it gets there
    assert run.backend.steps[:3] == ["a:a.txt"] * 3
    assert [s.attempt for s in backend.submitted[:3]] == [1, 1, 1]
    assert run.result.failed == [] and len(run.result.ran) == 3


def test_an_interrupt_cancels_running_jobs_and_removes_their_outputs(tmp_path: Path) -> None:
    flowfile(tmp_path, """
        rule all:
            input: "slow.txt", "after.txt"
        rule slow:
            output: "slow.txt"
            shell: "slow"
        rule after:
            input: "slow.txt"
            output: "after.txt"
            shell: "after"
    """)
    polls = 0

    def interrupt_after_two_polls(spec: JobSpec) -> Outcome:
        return Outcome(polls=1000)

    class Interrupting(FakeBackend):
        def poll(self, timeout: float):  # type: ignore[no-untyped-def]
            nonlocal polls
            polls += 1
            (tmp_path / "slow.txt").write_text("partial")
            if polls == 2:
                os.kill(os.getpid(), signal.SIGINT)  # the scheduler's own handler takes it
            return super().poll(timeout)

    backend = Interrupting(interrupt_after_two_polls)
    run = run_in_process(tmp_path, backend=backend)
    assert run.result.interrupted
    assert backend.cancelled == ["slow:slow.txt"]
    assert backend.steps == ["slow:slow.txt"]  # nothing submitted after the signal
    assert not (tmp_path / "slow.txt").exists()


def test_early_cutoff_skips_dependants_when_a_rerun_makes_the_same_bytes(chain: Path) -> None:
    same = FakeBackend(lambda spec: writes("always the same\n") if spec.rule == "a" else OK)
    run_in_process(chain, backend=same)
    (chain / "src.txt").write_text("edited source\n")  # a reruns, and makes what it made before
    again = run_in_process(chain, backend=FakeBackend(lambda spec: writes("always the same\n")))
    assert again.backend.commands == ["make a from src.txt"]
    assert again.result.ran == ["a:a.txt"]
    assert again.result.skipped_by_cutoff == ["b:b.txt", "c:c.txt"]
    assert again.scheduler._records[id(_step(again, "b"))].state is StepState.SKIPPED


def test_a_changed_upstream_output_runs_the_dependants(chain: Path) -> None:
    run_in_process(chain, backend=FakeBackend(lambda spec: writes("one\n")))
    (chain / "src.txt").write_text("edited source\n")
    again = run_in_process(chain, backend=FakeBackend(lambda spec: writes("two\n") if spec.rule == "a" else OK))
    assert again.result.ran == ["a:a.txt", "b:b.txt", "c:c.txt"]
    assert again.result.skipped_by_cutoff == []


def splits_into(*names: str) -> Outcome:
    """The checkpoint `split`'s job: a folder `split` with one file per name."""
    def write(workdir: Path, spec: JobSpec) -> None:
        (workdir / "split").mkdir()
        for name in names:
            (workdir / "split" / f"{name}.txt").write_text(name)
    return Outcome(write=write)


CHECKPOINT = """
import os
def parts(wildcards):
    d = checkpoints.split.get().output[0]
    return expand("parts/{p}.done", p=sorted(f[:-4] for f in os.listdir(d)))
rule all:
    input: "total.txt"
checkpoint split:
    output: directory("split")
    shell: "split"
rule part:
    input: "split/{p}.txt"
    output: "parts/{p}.done"
    shell: "part {wildcards.p}"
rule total:
    input: parts
    output: "total.txt"
    shell: "total {input}"
"""


def test_a_checkpoint_grows_the_plan_while_it_runs(tmp_path: Path) -> None:
    flowfile(tmp_path, CHECKPOINT)

    backend = FakeBackend(lambda spec: splits_into("x", "y") if spec.rule == "split" else OK)
    run = run_in_process(tmp_path, backend=backend)
    assert backend.commands == ["split", "part x", "part y", "total parts/x.done parts/y.done"]
    assert run.result.failed == []
    assert run.unsettled == []  # `all`, which waited on the expanded step, was settled too


LATE_UPSTREAM = """
import os
def needs(wildcards):
    d = checkpoints.split.get().output[0]
    return expand("parts/{p}.done", p=sorted(f[:-4] for f in os.listdir(d))) + ["side.txt", d]
rule all:
    input: "total.txt"
checkpoint split:
    output: directory("split")
    shell: "split"
rule part:
    input: "split/{p}.txt"
    output: "parts/{p}.done"
    shell: "part {wildcards.p}"
rule side:
    output: "side.txt"
    shell: "side"
rule total:
    input: needs
    output: "total.txt"
    shell: "total"
"""


def test_steps_a_checkpoint_brings_in_wait_for_all_their_upstream(tmp_path: Path) -> None:
    # `total` is resolved only once `split` is done; it then needs `split` itself (done), the parts
    # (new) and `side` (new, slow). It waits for all of them: the checkpoint whose completion
    # admitted it must not count as one more upstream step finishing.
    flowfile(tmp_path, LATE_UPSTREAM)

    backend = FakeBackend(lambda spec: splits_into("x") if spec.rule == "split"
                          else slow(6) if spec.rule == "side" else OK)
    run = run_in_process(tmp_path, backend=backend)
    assert run.result.failed == [] and run.unsettled == []
    events = backend.events
    assert events.index("end side:side.txt") < events.index("start total:total.txt")
    assert events.index("end part:parts/x.done") < events.index("start total:total.txt")


def test_declared_outputs_missing_after_success_is_a_failure(chain: Path) -> None:
    nothing = Outcome(write=lambda workdir, spec: None)
    run = run_in_process(chain, backend=FakeBackend(lambda spec: nothing))
    assert run.result.failed == [("a:a.txt", "declared outputs missing after the job: a.txt")]


def test_local_rules_go_to_the_local_backend(tmp_path: Path) -> None:
    flowfile(tmp_path, """
        localrules: gather
        rule gather:
            input: "far.txt"
            output: "near.txt"
            shell: "gather"
        rule far:
            output: "far.txt"
            shell: "far"
    """)
    remote, local = FakeBackend(name="remote"), FakeBackend(name="local")
    run_in_process(tmp_path, "near.txt", backend=remote, local=local)
    assert remote.commands == ["far"]
    assert local.commands == ["gather"]


def _step(run, rule: str):  # type: ignore[no-untyped-def]
    return next(rec.step for rec in run.scheduler._records.values()
                if getattr(rec, "step", None) is not None and rec.step.rule.name == rule)

