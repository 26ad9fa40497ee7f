"""Fault injection: SIGKILLs among concurrent runs, and files edited while jobs run.

The property, after every trial: what a dry run calls up to date equals what a build from scratch
gives, and after one more run everything does. Jobs append their lines slowly, so a partial output,
or two jobs writing one file, shows in its content. Trials are seeded; each is one test.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time

import pytest

from tests.conftest import Flow

pytestmark = pytest.mark.slow

CHAINS = 4
KILL_TRIALS = 8
EDIT_TRIALS = 4

# Odd trials: the job's loop runs in a child shell, which outlives a killed flowmake (as a script's
# subprocess would) and goes on appending. Even trials: the loop is the job's shell, which dies with
# its flowmake and leaves a partial file.
CHAINED = """
    rule first:
        output: "c/{i}.1"
        shell: "LOOP 'for k in 1 2 3 4 5; do echo {wildcards.i}.1.$k >> {output}; sleep 0.12; done'END"
    rule second:
        input: "c/{i}.1"
        output: "c/{i}.2"
        shell: "LOOP 'while read l; do echo $l >> {output}; sleep 0.08; done < {input}; echo {wildcards.i}.2 >> {output}'END"
"""


def chained(orphans: bool) -> str:
    if orphans:
        return CHAINED.replace("LOOP ", "sh -c ").replace("END", "; true")
    return CHAINED.replace("LOOP '", "").replace("'END", "")


class Run:
    """A flowmake process whose stderr is read as it comes (to kill a peer while this one waits)."""

    def __init__(self, flow: Flow, *args: str) -> None:
        self.proc = flow.popen(*args)
        self.err: list[str] = []
        self.waiting = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.err.append(line)
            if "waiting for" in line:
                self.waiting.set()

    def finish(self, timeout: float = 60) -> tuple[int, str]:
        rc = self.proc.wait(timeout=timeout)
        self._reader.join(timeout)
        return rc, "".join(self.err)


def chain_expected(path: str) -> str:
    i, k = path[2:].split(".")
    first = "".join(f"{i}.1.{n}\n" for n in range(1, 6))
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


def half_written(flow: Flow, expected: dict[str, str]) -> bool:
    for path, whole in expected.items():
        try:
            text = (flow.root / path).read_text()
        except OSError:
            continue
        if text and text != whole and whole.startswith(text):
            return True
    return False


def wrong(flow: Flow, outputs: list[str], expected: dict[str, str]) -> list[str]:
    return [o for o in outputs if not flow.exists(o) or flow.read(o) != expected[o]]


@pytest.mark.parametrize("seed", range(KILL_TRIALS))
def test_sigkill_one_of_several_concurrent_runs(flow: Flow, seed: int) -> None:
    rng = random.Random(seed)
    flow.write(chained(orphans=seed % 2 == 1))
    targets = [f"c/{i}.2" for i in range(CHAINS)]
    outputs = [f"c/{i}.{k}" for i in range(CHAINS) for k in (1, 2)]
    expected = {o: chain_expected(o) for o in outputs}
    # The first run is writing when the others plan. Most trials kill it mid-job, once the others
    # had time to plan, while a file is half written or another run waits for one of its locks; the
    # rest kill a later run at a random moment.
    runs = [Run(flow, "-c", "2", *sorted(rng.sample(targets, rng.choice((3, 4)))))]
    wait_for_any(flow, "c")
    for _ in range(rng.choice((1, 2))):
        runs.append(Run(flow, "-c", "2", *sorted(rng.sample(targets, rng.choice((3, 4))))))
    if seed % 4 != 3:
        victim = 0
        time.sleep(rng.uniform(0.3, 1.2))
        deadline = time.monotonic() + 10
        while not (any(r.waiting.is_set() for r in runs[1:]) or half_written(flow, expected)):
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)
    else:
        victim = rng.randrange(1, len(runs))
        time.sleep(rng.uniform(0.2, 1.5))
    runs[victim].proc.send_signal(signal.SIGKILL)
    errs = []
    for n, run in enumerate(runs):
        rc, err = run.finish()
        errs.append(f"--- run {n} victim={n == victim} rc={rc}\n{err}")
        if n != victim:
            assert rc == 0, err
            assert "Traceback" not in err, err
    bad = wrong(flow, trusted(flow, targets, outputs), expected)
    assert bad == [], f"trusted but not what a clean build gives: {bad}\n" + "\n".join(errs)
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
        shell: "sh -c 'while read l; do echo o:$l >> {output}; sleep 0.05; done < {input}'"
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
    for version in range(1, rng.randint(2, 3) + 1):
        i = rng.randrange(SOURCES)
        if seed % 2 == 0:
            # An intermediate edited by hand while its consumer reads it (once the consumer started,
            # so flowmake recorded it: an output edited before its own job ends is what the job made).
            flow.wait_for(f"out/{i}", timeout=30)
            time.sleep(rng.uniform(0.0, 0.1))
            flow.file(f"mid/{i}", f"by hand {version}\n")
        else:  # a source rewritten in place while it is read: the reader sees a mix
            wait_for_any(flow, "mid")
            time.sleep(rng.uniform(0.0, 0.3))
            with open(flow.root / f"src/{i}.txt", "w") as fh:
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

