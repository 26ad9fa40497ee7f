"""The Snakemake tutorial, tools swapped for stand-ins: flowmake must produce Snakemake's bytes.

`tests/cases/tutorial/expected/` holds what real Snakemake wrote for `snakemake -c 2` (the logs
record `threads: 8` capped to the 2 cores, as Snakemake does). When Snakemake is installed in the
test environment, it is also run on a second copy, so a Snakemake upgrade that changes behaviour
shows up here rather than as a silent drift of the golden files.
"""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CASE = Path(__file__).resolve().parents[1] / "cases" / "tutorial"
EXPECTED = CASE / "expected"


def expected_files() -> list[Path]:
    return sorted(p.relative_to(EXPECTED) for p in EXPECTED.rglob("*") if p.is_file())


def copy_case(dest: Path) -> Path:
    shutil.copytree(CASE, dest, ignore=shutil.ignore_patterns("expected", "__pycache__"))
    return dest


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stdout}\n{res.stderr}"
    return res


def assert_matches_expected(workdir: Path) -> None:
    for rel in expected_files():
        produced = workdir / rel
        assert produced.is_file(), f"{rel} was not produced"
        assert produced.read_bytes() == (EXPECTED / rel).read_bytes(), f"{rel} differs"


def snakemake_command() -> list[str] | None:
    if importlib.util.find_spec("snakemake") is not None:
        return [sys.executable, "-m", "snakemake"]
    exe = shutil.which("snakemake")
    return [exe] if exe else None


def test_expected_outputs_are_complete() -> None:
    # Guards the golden directory itself: every target of `rule all` and every log is there.
    names = {str(p) for p in expected_files()}
    assert {"plots/quals.svg", "calls/summary.tsv", "calls/all.vcf",
            "logs/bwa_mem/A.log", "logs/bwa_mem/B.log"} <= names


def test_flowmake_reproduces_snakemake_outputs(tmp_path: Path) -> None:
    work = copy_case(tmp_path / "flowmake")
    run([sys.executable, "-m", "flowmake", "-c", "2"], work)
    assert_matches_expected(work)


def test_second_flowmake_run_does_nothing(tmp_path: Path) -> None:
    work = copy_case(tmp_path / "flowmake")
    run([sys.executable, "-m", "flowmake", "-c", "2"], work)
    before = {p: p.stat().st_mtime_ns for p in (work / rel for rel in expected_files())}
    run([sys.executable, "-m", "flowmake", "-c", "2"], work)
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_flowmake_and_snakemake_agree(tmp_path: Path) -> None:
    smk = snakemake_command()
    if smk is None:
        pytest.skip("snakemake is not installed in this environment")
    theirs = copy_case(tmp_path / "snakemake")
    run([*smk, "-c", "2"], theirs)
    assert_matches_expected(theirs)
    ours = copy_case(tmp_path / "flowmake")
    run([sys.executable, "-m", "flowmake", "-c", "2"], ours)
    for rel in expected_files():
        assert (ours / rel).read_bytes() == (theirs / rel).read_bytes(), f"{rel} differs"
