"""Two flowmake processes on one workdir: every step runs once, and the second uses what the first built."""

from __future__ import annotations

import collections
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from flowmake.locks import OutputLocks
from tests.conftest import Flow

CHAINS = """
    rule first:
        output: "c/{i}.1"
        shell: "echo {output} >> counts.log; sleep 0.2; echo {wildcards.i} > {output}"
    rule second:
        input: "c/{i}.1"
        output: "c/{i}.2"
        shell: "echo {output} >> counts.log; sleep 0.1; cat {input} > {output}"
"""


def test_overlapping_invocations_run_every_step_exactly_once(flow: Flow) -> None:
    flow.write(CHAINS)
    a = flow.popen("-c", "2", *[f"c/{i}.2" for i in range(0, 6)])
    b = flow.popen("-c", "2", *[f"c/{i}.2" for i in range(2, 8)])
    out_a, err_a = a.communicate(timeout=60)
    out_b, err_b = b.communicate(timeout=60)
    assert a.returncode == 0, err_a
    assert b.returncode == 0, err_b
    counts = collections.Counter(flow.read("counts.log").split())
    assert set(counts) == {f"c/{i}.{k}" for i in range(8) for k in (1, 2)}
    assert set(counts.values()) == {1}, counts
    for i in range(8):
        assert flow.read(f"c/{i}.2") == f"{i}\n"
    assert flow.planned(*[f"c/{i}.2" for i in range(8)]) == []


def test_the_second_invocation_waits_for_the_first_and_names_it(flow: Flow) -> None:
    flow.write("""
        rule slow:
            output: "shared"
            shell: "echo run >> counts.log; touch started; while [ -e hold ]; do sleep 0.05; done; echo made > {output}"
    """)
    flow.file("hold", "")  # not a sleep: on a busy machine the first run could finish too soon
    first = flow.popen("-c", "1")
    flow.wait_for("started")
    locks = OutputLocks(str(flow.root / ".flowmake"))
    assert locks.holder("shared") == f"{socket.gethostname()} {first.pid}", "the lock knows who holds it"
    assert not locks.try_acquire("slow", ("shared",))
    second = flow.popen("-c", "1")
    err = _wait_for_line(second, "waiting for")
    os.unlink(flow.root / "hold")
    err += second.communicate(timeout=30)[1]
    first.communicate(timeout=30)
    rc = second.returncode
    assert rc == 0, err
    assert f"waiting for {socket.gethostname()} {first.pid}" in err
    assert "built meanwhile by another flowmake" in err
    assert flow.read("counts.log") == "run\n"


@pytest.mark.parametrize("soft", [False, True], ids=["flock", "soft-lock"])
def test_a_lock_left_by_a_dead_process_is_recovered(flow: Flow, soft: bool) -> None:
    flow.write("""
        rule a:
            output: "a"
            shell: "echo made > {output}"
    """)
    root = str(flow.root / ".flowmake")
    holder = textwrap.dedent(f"""
        import sys, time
        from flowmake.locks import OutputLocks
        locks = OutputLocks({root!r})
        locks._soft = {soft!r}  # as on a filesystem without flock
        assert locks.try_acquire("a", ("a",))
        print("held", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "held\n"
    mine = OutputLocks(root)
    mine._soft = soft
    assert not mine.try_acquire("a", ("a",)), "held while its owner lives"
    assert mine.holder("a") == f"{socket.gethostname()} {proc.pid}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert mine.try_acquire("a", ("a",)), "taken over once the owner is dead"
    mine.release_all()
    flow.ok("-c", "1")
    assert flow.read("a") == "made\n"


# ---- a run never trusts what another run is writing, or left half written -----------------------

HELD = """
    rule make:
        output: "o.txt"
        shell: "echo part1 > {output}; touch started; while [ -e hold ]; do sleep 0.05; done; echo part2 >> {output}"
    rule down:
        input: "o.txt"
        output: "down.txt"
        shell: "cat {input} > {output}"
"""


def test_an_output_another_run_is_writing_is_waited_for_not_read_half_written(flow: Flow) -> None:
    flow.write(HELD)
    flow.file("hold", "")
    a = flow.popen("-c", "1", "o.txt")
    flow.wait_for("started")
    reasons = {s["outputs"][0]: [r["kind"] for r in s["reasons"]] for s in flow.plan("down.txt")}
    assert reasons["o.txt"] == ["in-flight"], reasons
    b = flow.popen("-c", "1", "down.txt")
    waiting = _wait_for_line(b, "waiting for")  # for the first run's lock on o.txt; never reading it
    os.unlink(flow.root / "hold")
    _, err_a = a.communicate(timeout=30)
    _, err_b = b.communicate(timeout=30)
    err_b = waiting + err_b
    assert a.returncode == 0 and b.returncode == 0, err_a + err_b
    assert "built meanwhile by another flowmake" in err_b
    assert flow.read("down.txt") == "part1\npart2\n"
    assert flow.planned("down.txt") == []


def test_a_killed_runs_partial_output_stays_incomplete_for_every_run(flow: Flow) -> None:
    flow.write(HELD)
    flow.file("hold", "")
    a = flow.popen("-c", "1", "o.txt")
    flow.wait_for("started")
    b = flow.popen("-c", "1", "down.txt")
    _wait_for_line(b, "waiting for")
    os.unlink(flow.root / "started")
    a.kill()
    a.wait()
    flow.wait_for("started")  # b took the step over and runs it itself
    b.kill()
    b.wait()
    plan = {s["outputs"][0]: [r["kind"] for r in s["reasons"]] for s in flow.plan("down.txt")}
    assert plan.get("o.txt") == ["incomplete"], plan
    assert "down.txt" in plan
    os.unlink(flow.root / "hold")
    flow.ok("-c", "1", "down.txt")
    assert flow.read("o.txt") == flow.read("down.txt") == "part1\npart2\n"
    assert flow.planned("down.txt") == []


def test_an_untraced_output_is_adopted_only_under_its_lock(flow: Flow) -> None:
    # A run that began writing o.txt after this one loaded the store holds its lock: the file there
    # may be half written, not made by hand.
    flow.write("""
        rule make:
            output: "o.txt"
            shell: "echo whole > {output}"
    """)
    flow.file("o.txt", "half")
    writer = OutputLocks(str(flow.root / ".flowmake"))
    assert writer.try_acquire("make:o.txt", ("o.txt",))
    run = flow.popen("-c", "1")
    err = _wait_for_line(run, "waiting for")
    writer.release_all()  # as if it died: no record, no marker
    _, more = run.communicate(timeout=30)
    assert run.returncode == 0, err + more
    assert flow.read("o.txt") == "whole\n"


def test_a_step_a_dead_run_left_incomplete_is_rebuilt_once_by_two_later_runs(flow: Flow) -> None:
    flow.write(HELD.replace('shell: "echo part1', 'shell: "echo run >> counts.log; echo part1'))
    flow.file("hold", "")
    dead = flow.popen("-c", "1", "o.txt")
    flow.wait_for("started")
    dead.kill()
    dead.wait()
    os.unlink(flow.root / "started")
    b, c = flow.popen("-c", "1", "o.txt"), flow.popen("-c", "1", "o.txt")  # both load: o.txt incomplete
    flow.wait_for("started")
    time.sleep(1.0)  # the other one waits for the lock meanwhile
    os.unlink(flow.root / "hold")
    (_, err_b), (_, err_c) = b.communicate(timeout=30), c.communicate(timeout=30)
    assert b.returncode == 0 and c.returncode == 0, err_b + err_c
    assert flow.read("counts.log") == "run\nrun\n", "the second one used what the first rebuilt\n" + err_b + err_c
    assert flow.read("o.txt") == "part1\npart2\n"


SLOW_APPEND = """
    rule slow:
        output: "o.txt"
        shell: "touch started; sh -c 'echo $$ > job.pid; i=0; while [ -e hold ] || [ $i -lt 8 ]; do i=$((i+1)); echo $i >> {output}; sleep 0.1; done'; true"
"""  # the "; true" keeps bash from exec'ing sh: sh is the shell's child, and outlives it


def test_a_run_taking_over_a_dead_peers_step_stops_its_job_first(flow: Flow) -> None:
    flow.write(SLOW_APPEND)
    flow.file("hold", "")
    a = flow.popen("-c", "1")
    flow.wait_for("started")
    b = flow.popen("-c", "1")
    err = _wait_for_line(b, "waiting for")
    orphan = int(flow.read("job.pid"))
    os.unlink(flow.root / "started")
    a.kill()  # the job's shell dies with it; the sh it started goes on appending
    a.wait()
    flow.wait_for("started")  # b runs the step itself now
    time.sleep(0.3)
    os.unlink(flow.root / "hold")
    out, more = b.communicate(timeout=30)
    assert b.returncode == 0, err + more
    assert not _alive(orphan), "the dead run's job was stopped before the step was rebuilt"
    lines = flow.read("o.txt").split()
    assert lines == [str(i) for i in range(1, len(lines) + 1)], "one job wrote o.txt, from a clean file"
    assert flow.planned() == []


def _wait_for_line(proc: subprocess.Popen[str], text: str) -> str:
    """Read the process's stderr until a line contains ``text``; returns what was read."""
    assert proc.stderr is not None
    seen = ""
    while text not in seen:
        line = proc.stderr.readline()
        assert line, f"exited without saying {text!r}:\n{seen}"
        seen += line
    return seen


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


# ---- an input edited while its consumer runs ------------------------------------------------------

EDITED = """
    rule mid:
        output: "mid.txt"
        shell: "echo orig > {output}"
    rule use:
        input: "mid.txt"
        output: "out.txt"
        shell: "touch reading; while [ ! -e edited ]; do sleep 0.05; done; cat {input} > {output}"
"""


def test_an_input_edited_while_its_consumer_runs_is_not_recorded_as_good(flow: Flow) -> None:
    flow.write(EDITED)
    run = flow.popen("-c", "1", "out.txt")
    flow.wait_for("reading")
    time.sleep(0.1)
    flow.file("mid.txt", "hand\n")
    flow.file("edited", "")
    _, err = run.communicate(timeout=30)
    assert run.returncode == 1, err
    assert "warning: use:out.txt: input mid.txt changed while the job ran" in err
    assert "Traceback" not in err
    assert flow.planned("out.txt") == ["mid.txt", "out.txt"]
    err = flow.ok("-c", "1", "out.txt")
    assert "use: out.txt  (input changed: mid.txt)" in err
    assert flow.read("mid.txt") == flow.read("out.txt") == "orig\n"
    assert flow.planned("out.txt") == []


def test_a_job_that_moves_its_input_away_is_not_an_edit(flow: Flow) -> None:
    flow.write("""
        rule make:
            output: "a.txt"
            shell: "echo a > {output}"
        rule move:
            input: "a.txt"
            output: "b.txt"
            shell: "mv {input} {output}"
    """)
    err = flow.ok("-c", "1", "b.txt")
    assert "changed while the job ran" not in err
    assert flow.read("b.txt") == "a\n"
