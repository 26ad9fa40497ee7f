"""Interruption: Ctrl-C cancels cleanly; SIGKILL leaves a store the next run trusts and no stray jobs."""

from __future__ import annotations

import os
import random
import signal
import time

import pytest

from tests.conftest import Flow


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes (it may be our grandchild reparented to us).
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_ctrl_c_cancels_running_jobs_removes_partial_outputs_and_exits_130(flow: Flow) -> None:
    flow.write("""
        rule all:
            input: "slow", "never"
        rule slow:
            output: "slow"
            shell: "echo partial > {output}; echo $$ > slow.pid; sleep 30; echo done >> {output}"
        rule never:
            input: "slow"
            output: "never"
            shell: "touch {output}"
    """)
    proc = flow.popen("-c", "1")
    flow.wait_for("slow.pid")
    time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert not flow.exists("slow"), "the partial output is removed"
    assert not flow.exists("never"), "nothing new starts after Ctrl-C"
    assert not alive(int(flow.read("slow.pid")))
    assert "slow" in flow.planned(), "the cancelled step is not recorded as done"


def test_ctrl_c_kills_jobs_that_ignore_sigterm_all_at_once(flow: Flow) -> None:
    flow.write("""
        rule all:
            input: "a", "b"
        rule stubborn:
            output: "{n}"
            wildcard_constraints: n="[ab]"
            shell: "trap '' TERM; echo $$ > {output}.pid; for i in $(seq 300); do sleep 0.1; done; touch {output}"
    """)
    proc = flow.popen("-c", "2")
    flow.wait_for("a.pid")
    flow.wait_for("b.pid")
    start = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=15)
    assert proc.returncode == 130, err
    assert time.monotonic() - start < 3.5, "SIGKILL after one grace period, not one per job"
    assert not alive(int(flow.read("a.pid"))) and not alive(int(flow.read("b.pid")))


ORPHAN = """
    rule out:
        output: "out"
        shell:
            '''
            if [ -e second ]; then echo second > {output}; exit 0; fi
            (sleep 1; echo late > {output}) &
            echo $! > bg.pid
            touch started
            wait
            '''
"""


def test_jobs_of_a_killed_flowmake_never_write_into_the_next_run(flow: Flow) -> None:
    flow.write(ORPHAN)
    proc = flow.popen("-c", "1")
    flow.wait_for("started")
    proc.kill()
    proc.wait()
    reasons = [r["kind"] for s in flow.plan() for r in s["reasons"]]
    assert "incomplete" in reasons, "the in-flight marker makes the next run redo the step"
    flow.file("second", "")
    flow.ok("-c", "1")  # no --unlock needed
    assert not alive(int(flow.read("bg.pid"))), "the orphan was stopped before the rerun"
    time.sleep(1.3)
    assert flow.read("out") == "second\n"
    assert flow.planned() == []


def chains_flowfile(n: int) -> str:
    return f"""
        rule all:
            input: expand("c/{{i}}.3", i=range({n}))
        rule first:
            output: "c/{{i}}.1"
            shell: "sleep 0.05; echo {{wildcards.i}} > {{output}}; echo {{output}} >> done.log"
        rule next:
            input: "c/{{i}}.{{k}}"
            output: "c/{{i}}.{{j}}"
            wildcard_constraints: k="[12]", j="[23]"
            shell: "sleep 0.05; cat {{input}} > {{output}}; echo {{output}} >> done.log"
    """


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sigkill_at_a_random_moment_then_rerun_exactly_what_did_not_complete(flow: Flow, seed: int) -> None:
    # j = k + 1 is implied by the file names only; pin it so the graph is 12 chains of 3.
    text = chains_flowfile(12).replace('input: "c/{i}.{k}"', 'input: lambda wc: f"c/{wc.i}.{int(wc.j) - 1}"')
    text = text.replace('wildcard_constraints: k="[12]", j="[23]"', 'wildcard_constraints: j="[23]"')
    flow.write(text)
    every = {f"c/{i}.{k}" for i in range(12) for k in (1, 2, 3)}
    proc = flow.popen("-c", "2")
    flow.wait_for("done.log")
    time.sleep(random.Random(seed).uniform(0.0, 0.6))
    proc.kill()
    proc.wait()
    time.sleep(0.2)  # jobs die with flowmake; let the kernel finish that
    finished = set(flow.read("done.log").split()) if flow.exists("done.log") else set()
    planned = {s["outputs"][0] for s in flow.plan() if s["outputs"]}
    assert every - finished <= planned, "every step whose command did not finish reruns"
    assert len(planned - (every - finished)) <= 2, "at most the jobs in flight when killed run again"
    os.unlink(flow.root / "done.log")
    flow.ok("-c", "2")
    rerun = flow.read("done.log").split() if flow.exists("done.log") else []
    assert sorted(rerun) == sorted(planned), "the rerun ran exactly what the dry run listed"
    assert flow.planned() == []
    for i in range(12):
        assert flow.read(f"c/{i}.3") == f"{i}\n"
