"""Fault injection: SIGINT or SIGTERM at many moments of a run, from the first millisecond on.

Whenever the signal lands, flowmake exits 130 without a traceback (one line when no job had
started), and the next run builds every output whole: nothing an interrupted run left behind is
trusted. A signal can land before flowmake has run a line of its own (while the interpreter starts
and processes its site packages); there only Python's own behaviour is possible, and the test
checks that it touched nothing. Whether flowmake's handlers were in place when the signal was sent
is read from /proc (Python alone never catches SIGTERM).
"""

from __future__ import annotations

import collections
import os
import re
import signal
import sys
import time

import pytest

from tests.conftest import Flow

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")]

# Four jobs on two cores, each writing its output in two halves; slow only while "slow" exists (the
# command text stays the same, so the check run after each trial is quick and keys are unchanged).
FLOWFILE = """
    rule all:
        input: expand("out/{i}.txt", i=range(4))
    rule half:
        output: "out/{i}.txt"
        shell: "echo first > {output}; if [ -e slow ]; then sleep 0.3; fi; echo second >> {output}"
"""
WHOLE = "first\nsecond\n"
# 0 to 0.6 s after the start in 16 steps (start-up: imports, loading, planning), then 5 moments
# after the first job has started (how long start-up takes depends on the machine's load).
MOMENTS: list[tuple[str, float]] = ([("start", round(i * 0.04, 3)) for i in range(16)]
                                    + [("first job", t) for t in (0.0, 0.1, 0.2, 0.35, 0.5)])
PER_MOMENT = {signal.SIGINT: 2, signal.SIGTERM: 1}
CHUNKS = {signal.SIGINT: 6, signal.SIGTERM: 3}  # tests per signal, an interleaved share each
PROGRESS = re.compile(r"^\[\d+/\d+\] |steps? ran")  # a job started, or the run summary

tally: collections.Counter[str] = collections.Counter()  # shown with -s: where the signals landed


def handlers_installed(pid: int) -> bool:
    """Whether the process catches SIGTERM: flowmake's handlers are in place."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
    except OSError:
        pass
    return False


def trials(sig: signal.Signals, chunk: int) -> list[tuple[str, float]]:
    every = [m for m in MOMENTS for _ in range(PER_MOMENT[sig])]
    return every[chunk::CHUNKS[sig]]


def outputs(flow: Flow) -> list[str]:
    return os.listdir(flow.root / "out") if flow.exists("out") else []


def interrupt_at(flow: Flow, sig: signal.Signals, since: str, moment: float) -> str:
    for name in outputs(flow):
        os.unlink(flow.root / "out" / name)
    flow.file("slow", "")
    proc = flow.popen("-c", "2")
    if since == "first job":
        deadline = time.monotonic() + 30
        while not outputs(flow) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
    time.sleep(moment)
    ours = handlers_installed(proc.pid)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    rc = proc.returncode
    where = f"signal {sig.name} {moment:.3f} s after {since}: exit {rc}\n--- stderr\n{err}"
    if ours:
        assert "Traceback" not in err, where
        if rc == 0:  # the run was over before the signal came
            kind = "after the run"
            assert all(flow.read(f"out/{i}.txt") == WHOLE for i in range(4)), where
        else:
            assert rc == 130, where
            if any(PROGRESS.search(line) for line in err.splitlines()):
                kind = "while running"
                assert err.splitlines()[-1].startswith(("interrupted", "flowmake: interrupted")), where
            else:
                kind = "before the run"
                assert err == "flowmake: interrupted\n", where
    else:
        # flowmake had not installed its handlers yet. Only the interpreter's start-up or
        # flowmake's first imports can be under way; Python prints its own traceback only for
        # the former, never a frame of flowmake's code.
        kind = "interpreter start-up"
        frames = re.findall(r'File "([^"]+)"', err)
        ours_frames = [f for f in frames if os.sep + "flowmake" + os.sep in f]
        assert not ours_frames, where
        if sig == signal.SIGTERM:
            assert rc in (-signal.SIGTERM, 130), where
        else:
            assert rc in (-signal.SIGINT, 130, 1), where
        assert not outputs(flow), where
    tally[f"{sig.name} {kind}"] += 1
    return kind


@pytest.mark.parametrize(("sig", "chunk"), [(s, c) for s in CHUNKS for c in range(CHUNKS[s])],
                         ids=[f"{s.name}-{c}" for s in CHUNKS for c in range(CHUNKS[s])])
def test_a_signal_at_any_moment_exits_130_and_the_next_run_builds_whole_outputs(
        flow: Flow, sig: signal.Signals, chunk: int) -> None:
    flow.write(FLOWFILE)
    for since, moment in trials(sig, chunk):
        interrupt_at(flow, sig, since, moment)
        os.unlink(flow.root / "slow")
        flow.ok("-c", "4")
        for i in range(4):
            assert flow.read(f"out/{i}.txt") == WHOLE, f"after {sig.name} {moment} s after {since}"
    assert flow.planned() == []
    print(f"\n{sig.name} chunk {chunk}: {dict(tally)}")


def test_a_second_ctrl_c_while_cleaning_up_still_ends_in_one_clean_exit(flow: Flow) -> None:
    # Jobs that ignore SIGTERM keep the backend's clean-up waiting; Ctrl-C again meanwhile.
    flow.write("""
        rule all:
            input: "a", "b"
        rule stubborn:
            output: "{n}"
            wildcard_constraints: n="[ab]"
            shell: "trap '' TERM; echo $$ > {output}.pid; sleep 5; touch {output}"
    """)
    proc = flow.popen("-c", "2")
    flow.wait_for("a.pid")
    flow.wait_for("b.pid")
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    for _ in range(3):
        proc.send_signal(signal.SIGINT)
        time.sleep(0.05)
    _, err = proc.communicate(timeout=15)
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    assert not flow.exists("a") and not flow.exists("b")
    assert flow.planned() == ["a", "all", "b"]
