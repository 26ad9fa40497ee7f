"""Fault injection: SIGKILLs among concurrent runs, and files edited while jobs run.

The property, after every trial: what a dry run calls up to date equals what a build from scratch
gives, and after one more run everything does. Jobs append their lines slowly from a child shell
that outlives the job's own (as a script's subprocess would), so a partial output, or two jobs
writing one file, shows in its content.
"""

from __future__ import annotations

import os
import random
import signal
import time

import pytest

from tests.conftest import Flow

pytestmark = pytest.mark.slow

CHAINS = 6
KILL_TRIALS = 8
EDIT_TRIALS = 5

CHAINED = """
    rule first:
        output: "c/{i}.1"
        shell: "sh -c 'for k in 1 2 3; do echo {wildcards.i}.1.$k >> {output}; sleep 0.05; done'; true"
    rule second:
        input: "c/{i}.1"
        output: "c/{i}.2"
        shell: "sh -c 'while read l; do echo $l >> {output}; sleep 0.03; done < {input}; echo {wildcards.i}.2 >> {output}'; true"
"""


def chain_expected(path: str) -> str:
    i, k = path[2:].split(".")
    first = "".join(f"{i}.1.{n}\n" for n in (1, 2, 3))
    return first if k == "1" else first + f"{i}.2\n"


def trusted(flow: Flow, targets: list[str], outputs: list[str]) -> list[str]:
    """The outputs a dry run would not rebuild."""
    listed = {o for s in flow.plan(*targets) for o in s["outputs"]}
    return [o for o in outputs if o not in listed]


def wait_for_any(flow: Flow, folder: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not (flow.exists(folder) and os.listdir(flow.root / folder)):
        assert time.monotonic() < deadline, f"nothing in {folder} after {timeout} s"
        time.sleep(0.02)


def wrong(flow: Flow, outputs: list[str], expected: dict[str, str]) -> list[str]:
    return [o for o in outputs if not flow.exists(o) or flow.read(o) != expected[o]]


@pytest.mark.parametrize("seed", range(KILL_TRIALS))
def test_sigkill_one_of_several_concurrent_runs(flow: Flow, seed: int) -> None:
    rng = random.Random(seed)
    flow.write(CHAINED)
    targets = [f"c/{i}.2" for i in range(CHAINS)]
    outputs = [f"c/{i}.{k}" for i in range(CHAINS) for k in (1, 2)]
    expected = {o: chain_expected(o) for o in outputs}
    runs = [flow.popen("-c", "2", *sorted(rng.sample(targets, 4))) for _ in range(rng.choice((2, 3)))]
    wait_for_any(flow, "c")
    time.sleep(rng.uniform(0.0, 0.8))
    victim = rng.randrange(len(runs))
    runs[victim].send_signal(signal.SIGKILL)
    for n, run in enumerate(runs):
        _, err = run.communicate(timeout=60)
        if n != victim:
            assert run.returncode == 0, err
            assert "Traceback" not in err, err
    bad = wrong(flow, trusted(flow, targets, outputs), expected)
    assert bad == [], f"trusted but not what a clean build gives: {bad}"
    flow.ok("-c", "2", *targets)
    assert wrong(flow, outputs, expected) == []
    assert flow.planned(*targets) == []


SOURCES = 4
EDITED = """
    rule mid:
        input: "src/{i}.txt"
        output: "mid/{i}"
        shell: "sh -c 'while read l; do echo m:$l >> {output}; sleep 0.03; done < {input}'"
    rule out:
        input: "mid/{i}"
        output: "out/{i}"
        shell: "sh -c 'while read l; do echo o:$l >> {output}; sleep 0.03; done < {input}'"
"""


def source(i: int, version: int) -> str:
    return "".join(f"s{i}.{k}.v{version}\n" for k in range(6))


def from_scratch(flow: Flow) -> dict[str, str]:
    out = {}
    for i in range(SOURCES):
        mid = "".join(f"m:{line}\n" for line in flow.read(f"src/{i}.txt").splitlines())
        out[f"mid/{i}"] = mid
        out[f"out/{i}"] = "".join(f"o:{line}\n" for line in mid.splitlines())
    return out


@pytest.mark.parametrize("seed", range(EDIT_TRIALS))
def test_files_edited_while_jobs_run(flow: Flow, seed: int) -> None:
    rng = random.Random(1000 + seed)
    flow.write(EDITED)
    for i in range(SOURCES):
        flow.file(f"src/{i}.txt", source(i, 0))
    targets = [f"out/{i}" for i in range(SOURCES)]
    outputs = [f"{d}/{i}" for i in range(SOURCES) for d in ("mid", "out")]
    run = flow.popen("-c", "2", *targets)
    wait_for_any(flow, "mid")
    for version in range(1, rng.randint(2, 4)):
        time.sleep(rng.uniform(0.0, 0.3))
        # An intermediate edited by hand once its consumer started (so flowmake recorded it: an
        # output edited before its job's end is recorded as what the job made).
        finished_mids = [f"mid/{i}" for i in range(SOURCES) if flow.exists(f"out/{i}")]
        if finished_mids and rng.random() < 0.3:
            path = rng.choice(finished_mids)
            flow.file(path, f"by hand {version}\n")
        else:
            i = rng.randrange(SOURCES)
            with open(flow.root / f"src/{i}.txt", "w") as fh:  # in place: a reader sees a mix
                fh.write(source(i, version))
    _, err = run.communicate(timeout=60)
    assert run.returncode in (0, 1), err
    assert "Traceback" not in err, err
    if run.returncode == 1:
        assert "changed while the job ran" in err, err
    expected = from_scratch(flow)
    bad = wrong(flow, trusted(flow, targets, outputs), expected)
    assert bad == [], f"trusted but not what a clean build gives: {bad}\n{err}"
    flow.ok("-c", "2", *targets)
    assert wrong(flow, outputs, expected) == []
    assert flow.planned(*targets) == []

