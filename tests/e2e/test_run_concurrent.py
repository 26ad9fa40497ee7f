"""Two flowmake processes on one workdir: every step runs once, and the second uses what the first built."""

from __future__ import annotations

import collections
import os
import signal
import socket
import subprocess
import sys
import textwrap

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
            shell: "echo run >> counts.log; touch started; sleep 1; echo made > {output}"
    """)
    first = flow.popen("-c", "1")
    flow.wait_for("started")
    locks = OutputLocks(str(flow.root / ".flowmake"))
    assert locks.holder("shared") == f"{socket.gethostname()} {first.pid}", "the lock knows who holds it"
    assert not locks.try_acquire("slow", ("shared",))
    rc, _, err = flow.run("-c", "1")
    first.communicate(timeout=30)
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
