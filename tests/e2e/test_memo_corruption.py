"""A damaged graph memo is ignored: the plan is the one made without it, and the next run replaces it.

The memo is a cache in ``.flowmake/``; a flipped bit, a torn write or trailing bytes must never
make flowmake plan other paths, invent rules or stop with an error until someone deletes it.
Each trial damages a real memo, plans (``-n --json``, in this process: hundreds of trials) and
compares the plan with the one made with no memo at all.
"""

from __future__ import annotations

import io
import os
import random
from pathlib import Path
from typing import Callable, Iterator

import pytest

from flowmake import api
from flowmake.explain import print_plan
from flowmake.graph_memo import MEMO_FILE
from tests.conftest import Flow

SAMPLES = ("a", "b", "c", "d", "e")

FLOWFILE = """
    SAMPLES = sorted(glob_wildcards("data/{s}.src").s)

    rule all:
        input: expand("out/{s}.2", s=SAMPLES), "out/summary"
    rule one:
        input: "data/{s}.src"
        output: "out/{s}.1"
        shell: "cat {input} > {output}"
    rule two:
        input: "out/{s}.1"
        output: "out/{s}.2"
        params: p=config.get("p", "x")
        shell: "(cat {input}; echo {params.p}) > {output}"
    rule summary:
        input: expand("out/{s}.1", s=SAMPLES)
        output: "out/summary"
        shell: "cat {input} > {output}"
"""


def memo_path(flow: Flow) -> Path:
    return flow.root / ".flowmake" / MEMO_FILE


def dry_run() -> str:
    """What ``flowmake -n --json`` prints (the working directory is the workflow's)."""
    session = api.open_session(api.Options(dry_run=True, json=True), readonly=True)
    try:
        out = io.StringIO()
        print_plan(session, api.selected(session), as_json=True, out=out)
        return out.getvalue()
    finally:
        session.close()


def no_op_run() -> None:
    assert api.build(api.Options(cores=1, quiet=True)) == 0


@pytest.fixture
def built(flow: Flow, monkeypatch: pytest.MonkeyPatch) -> Flow:
    """A built workflow, and its memo."""
    for name in [k for k in os.environ if k.startswith("FLOWMAKE_")]:
        monkeypatch.delenv(name)  # as Flow.run does for its subprocesses
    flow.write(FLOWFILE)
    for s in SAMPLES:
        flow.file(f"data/{s}.src", f"{s}\n")
    flow.ok("-c", "1")
    assert memo_path(flow).exists()
    monkeypatch.chdir(flow.root)
    return flow


@pytest.fixture
def edited(built: Flow) -> Flow:
    """The built workflow with input ``a`` changed since: the plan names steps, with reasons."""
    built.file("data/a.src", "A\n")
    return built


def flip(data: bytes, offset: int, bit: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ (1 << bit)]) + data[offset + 1:]


def damaged(good: bytes, seed: int, random_flips: int) -> Iterator[tuple[str, bytes]]:
    """Every 97th byte flipped and cut there, bytes appended, then random single-bit flips."""
    for offset in range(0, len(good), 97):
        yield f"bit {offset % 8} of byte {offset} flipped", flip(good, offset, offset % 8)
        yield f"cut to {offset} bytes", good[:offset]
    yield "one byte cut", good[:-1]
    for tail in (b"\0", b"\n", good[-40:], good):
        yield f"{len(tail)} bytes appended", good + tail
    rng = random.Random(seed)
    for _ in range(random_flips):
        offset, bit = rng.randrange(len(good)), rng.randrange(8)
        yield f"bit {bit} of byte {offset} flipped", flip(good, offset, bit)


def check_plans(flow: Flow, trials: Iterator[tuple[str, bytes]], after: Callable[[], None] | None = None) -> int:
    good = memo_path(flow).read_bytes()
    os.unlink(memo_path(flow))
    expected = dry_run()  # resolved from scratch: no memo at all
    assert '"out/a.1"' in expected
    memo_path(flow).write_bytes(good)
    assert dry_run() == expected
    count = 0
    for what, data in trials:
        memo_path(flow).write_bytes(data)
        assert dry_run() == expected, f"memo with {what}: the plan differs from the plan without a memo"
        count += 1
    return count


def test_a_flipped_bit_in_a_path_is_not_planned(edited: Flow) -> None:
    good = memo_path(edited).read_bytes()
    at = good.index(b"out/a.1")
    # 'a' -> 'c': the memo now says the step for out/a.1 makes out/c.1, another step's output.
    assert check_plans(edited, iter([("out/a.1 spelled out/c.1", flip(good, at + 4, 1))])) == 1


@pytest.mark.slow
def test_every_damaged_memo_plans_as_no_memo(edited: Flow) -> None:
    good = memo_path(edited).read_bytes()
    trials = check_plans(edited, damaged(good, seed=1211, random_flips=600))
    assert trials == 2 * len(range(0, len(good), 97)) + 5 + 600
    print(f"{trials} damaged memos of {len(good)} bytes planned as with no memo")


@pytest.mark.slow
def test_next_run_replaces_a_damaged_memo(built: Flow) -> None:
    good = memo_path(built).read_bytes()
    for what, data in damaged(good, seed=97, random_flips=10):
        memo_path(built).write_bytes(data)
        no_op_run()
        assert memo_path(built).read_bytes() == good, f"memo with {what} was not rewritten"
