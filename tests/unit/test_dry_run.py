"""``-n`` goes through the scheduler with ``backend.DryRunBackend`` (ninja's DryRunCommandRunner):
the same admission, order, resources, --until and checkpoint waits as a real run, and nothing on
disk changes. In-process; each test takes milliseconds."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Iterator

import pytest

from flowmake import api
from flowmake.planner import Decision, ReasonKind
from tests.fakes import run_in_process


def flowfile(root: Path, text: str) -> Path:
    (root / "Flowfile").write_text(textwrap.dedent(text).lstrip())
    return root


def snapshot(root: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file and folder under ``root``: mode, mtime and content."""
    out: dict[str, tuple[int, int, bytes]] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath) / name
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_mode, st.st_mtime_ns, b"" if p.is_dir() else p.read_bytes())
    return out


def dry(root: Path, *targets: str, **opts: object) -> list[tuple[str, Decision, list[ReasonKind]]]:
    """What ``api.dry_run`` started, in its order: (step id, decision, reason kinds)."""
    old = os.getcwd()
    os.chdir(root)
    try:
        session = api.open_session(api.Options(targets=list(targets), dry_run=True, **opts), readonly=True)  # type: ignore[arg-type]
        try:
            plans = api.dry_run(session, api._selected_steps(session))
        finally:
            session.close()
    finally:
        os.chdir(old)
    return [(sp.step.id, sp.decision, [r.kind for r in sp.reasons]) for sp in plans]


ORDERED = """
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
"""


def test_dry_run_starts_steps_in_the_order_a_real_run_does(tmp_path: Path) -> None:
    flowfile(tmp_path, ORDERED)
    before = snapshot(tmp_path)
    planned = [sid for sid, _, _ in dry(tmp_path, cores=1)]
    assert snapshot(tmp_path) == before  # not even .flowmake/ (no store, no lock file)
    real = run_in_process(tmp_path, cores=1)
    assert planned == real.backend.steps + ["all"]  # the target rule has no job of its own


TEMP_CHAIN = """
rule all:
    input: "c.txt"
rule a:
    input: "src.txt"
    output: temp("a.txt")
    shell: "cp {input} {output}"
rule b:
    input: "a.txt"
    output: protected("b.txt")
    shell: "cp {input} {output}"
rule c:
    input: "b.txt"
    output: "c.txt"
    shell: "cp {input} {output}"
"""


@pytest.fixture
def half_built(tmp_path: Path) -> Iterator[Path]:
    """a.txt (temp, kept by --notemp) and b.txt (protected) made, c.txt not: a real run would
    delete a.txt once c.txt's step, its last consumer, is done."""
    flowfile(tmp_path, TEMP_CHAIN)
    (tmp_path / "src.txt").write_text("source\n")
    run_in_process(tmp_path, "b.txt", notemp=True)
    assert (tmp_path / "a.txt").exists()
    yield tmp_path


def test_dry_run_writes_no_trace_lock_history_or_output_and_keeps_temp_files(half_built: Path) -> None:
    before = snapshot(half_built)
    assert dry(half_built) == [("c:c.txt", Decision.RUN, [ReasonKind.MISSING]),
                               ("all", Decision.PENDING, [ReasonKind.UPSTREAM_CHANGED])]
    assert snapshot(half_built) == before  # a.txt stays although its last consumer "ran"


def test_dry_run_keeps_a_pending_step_pending(half_built: Path) -> None:
    (half_built / "c.txt").write_text("c\n")
    run_in_process(half_built)  # records c.txt
    (half_built / "src.txt").write_text("changed\n")
    os.chmod(half_built / "b.txt", 0o644)
    before = snapshot(half_built)
    assert dry(half_built) == [("a:a.txt", Decision.RUN, [ReasonKind.INPUT_CHANGED]),
                               ("b:b.txt", Decision.PENDING, [ReasonKind.UPSTREAM_CHANGED]),
                               ("c:c.txt", Decision.PENDING, [ReasonKind.UPSTREAM_CHANGED]),
                               ("all", Decision.PENDING, [ReasonKind.UPSTREAM_CHANGED])]
    assert snapshot(half_built) == before


def test_dry_run_honours_until(half_built: Path) -> None:
    assert [sid for sid, _, _ in dry(half_built, until=["b"])] == []
    (half_built / "src.txt").write_text("changed\n")
    assert [sid for sid, _, _ in dry(half_built, until=["b"])] == ["a:a.txt", "b:b.txt"]


CHECKPOINT = """
rule all:
    input: "total.txt"
checkpoint split:
    output: directory("parts")
    shell: "mkdir -p {output} && touch {output}/x.txt {output}/y.txt"
def parts(wildcards):
    d = checkpoints.split.get().output[0]
    return expand(d + "/{p}.txt", p=glob_wildcards(d + "/{p}.txt").p)
rule total:
    input: parts
    output: "total.txt"
    shell: "ls {input} > {output}"
"""


def test_dry_run_shows_a_step_waiting_on_its_checkpoint_unexpanded(tmp_path: Path) -> None:
    flowfile(tmp_path, CHECKPOINT)
    assert dry(tmp_path) == [("split:parts", Decision.RUN, [ReasonKind.MISSING]),
                             ("total:total.txt", Decision.PENDING, [ReasonKind.CHECKPOINT]),
                             ("all", Decision.PENDING, [ReasonKind.UPSTREAM_CHANGED])]
    assert os.listdir(tmp_path) == ["Flowfile"]
