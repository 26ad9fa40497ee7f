"""Golden-directory cases, in Snakemake's style: a workflow, its inputs and the files it must make.

Each directory ``tests/cases/<name>/`` (``tutorial`` has its own test) holds a rule file, its input
files, ``case.toml`` (or ``case.json``) and ``expected/``. The case is copied to a temporary
directory and ``python -m flowmake ARGS`` runs there. ``case.toml`` keys:

``description``       what the case shows (one line).
``args``              the command-line arguments (list; default ``["-c", "2"]``); ``{case}`` in
                      them (and in ``noop_args``) is the copy's absolute path.
``exit_code``         the expected exit code (default 0).
``stderr``            the exact expected stderr (after the copy's path is replaced by ``.``).
``stderr_contains``   lines that must each appear in stderr.
``stdout``            the exact expected stdout.
``stdout_contains``   lines that must each appear in stdout.
``absent``            paths that must not exist after the run.
``present``           paths that must exist after the run (content not compared).
``read_only``         paths that must exist without write permission (``protected()``).
``second_run_noop``   run again with ``-n --json`` (plus ``noop_args``) and expect no steps.
``noop_args``         extra arguments for that second run (e.g. the same targets or ``--config``).
``edit_before_noop``  path → new text, written before that second run (an ``ancient()`` input).
``timeout``           seconds the run may take (default 120); longer fails the case.
``xfail``             a reason: the case documents a known bug (not strict).
``requires``          programs that must be on PATH (e.g. ``jupyter-nbconvert``); else the case skips.

Every file under ``expected/`` must exist after the run with identical bytes. Error text is part
of the interface, so error cases assert it exactly.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

CASES = Path(__file__).resolve().parents[1] / "cases"
OWNED_ELSEWHERE = {"tutorial"}
KNOWN_KEYS = {"description", "args", "exit_code", "stderr", "stderr_contains", "stdout",
              "stdout_contains", "absent", "present", "read_only", "second_run_noop", "noop_args",
              "edit_before_noop", "timeout", "xfail", "requires"}


def load_case(case: Path) -> dict[str, Any]:
    if (case / "case.toml").is_file():
        spec = tomllib.loads((case / "case.toml").read_text(encoding="utf-8"))
    else:
        spec = json.loads((case / "case.json").read_text(encoding="utf-8"))
    unknown = set(spec) - KNOWN_KEYS
    assert not unknown, f"{case.name}: unknown case keys {sorted(unknown)}"
    return spec


def case_dirs() -> list[Path]:
    return sorted(p for p in CASES.iterdir()
                  if p.is_dir() and p.name not in OWNED_ELSEWHERE
                  and ((p / "case.toml").is_file() or (p / "case.json").is_file()))


def params() -> list[Any]:
    out = []
    for case in case_dirs():
        reason = load_case(case).get("xfail")
        marks = [pytest.mark.xfail(reason=reason, strict=False)] if reason else []
        out.append(pytest.param(case, id=case.name, marks=marks))
    return out


def run_flowmake(args: list[str], cwd: Path,
                 timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWMAKE_") and k != "SNAKEMAKE_PROFILE"}
    try:
        return subprocess.run([sys.executable, "-m", "flowmake", *args], cwd=cwd,
                              capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"flowmake {' '.join(args)} took longer than {timeout} s")


def relative(text: str, work: Path) -> str:
    """Paths under the copy that messages give in full read ``.`` in the case's expectations."""
    for prefix in {str(work), os.path.realpath(work)}:
        text = text.replace(prefix, ".")
    return text


def expected_files(case: Path) -> list[Path]:
    expected = case / "expected"
    if not expected.is_dir():
        return []
    return sorted(p.relative_to(expected) for p in expected.rglob("*") if p.is_file())


def test_every_case_checks_something() -> None:
    for case in case_dirs():
        spec = load_case(case)
        checks = expected_files(case) or any(
            k in spec for k in ("stderr", "stderr_contains", "stdout", "stdout_contains", "absent",
                                "present", "second_run_noop"))
        assert checks, f"{case.name}: asserts nothing"


@pytest.mark.parametrize("case", params())
def test_case(case: Path, tmp_path: Path) -> None:
    spec = load_case(case)
    missing = [p for p in spec.get("requires", []) if shutil.which(p) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} on PATH")
    work = tmp_path / case.name
    shutil.copytree(case, work, ignore=shutil.ignore_patterns("expected", "case.toml", "case.json",
                                                              "__pycache__", ".flowmake"))
    args = [a.replace("{case}", str(work)) for a in spec.get("args", ["-c", "2"])]
    res = run_flowmake(args, work, spec.get("timeout", 120))
    out, err = relative(res.stdout, work), relative(res.stderr, work)
    context = f"flowmake {' '.join(args)}\n--- stdout\n{out}--- stderr\n{err}"

    assert res.returncode == spec.get("exit_code", 0), context
    assert "internal error" not in err, context
    if res.returncode == 2:  # the user's mistake: one message, never a traceback
        assert "Traceback" not in err, context
    if "stderr" in spec:
        assert err == spec["stderr"], context
    for line in spec.get("stderr_contains", []):
        assert line in err, f"missing in stderr: {line!r}\n{context}"
    if "stdout" in spec:
        assert out == spec["stdout"], context
    for line in spec.get("stdout_contains", []):
        assert line in out, f"missing in stdout: {line!r}\n{context}"
    for rel in spec.get("absent", []):
        assert not os.path.lexists(work / rel), f"{rel} exists but must not\n{context}"
    for rel in spec.get("present", []):
        assert os.path.lexists(work / rel), f"{rel} is missing\n{context}"
    for rel in spec.get("read_only", []):
        mode = (work / rel).stat().st_mode
        writable = mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
        assert not writable, f"{rel} is writable\n{context}"
    for rel in expected_files(case):
        produced = work / rel
        assert produced.is_file(), f"{rel} was not produced\n{context}"
        want = (case / "expected" / rel).read_bytes()
        assert produced.read_bytes() == want, (
            f"{rel} differs: got {produced.read_bytes()!r}, want {want!r}\n{context}")

    if spec.get("second_run_noop"):
        for rel, text in spec.get("edit_before_noop", {}).items():
            (work / rel).write_text(text, encoding="utf-8")
        noop_args = [a.replace("{case}", str(work)) for a in spec.get("noop_args", [])]
        again = run_flowmake(["-n", "--json", *noop_args], work)
        assert again.returncode == 0, relative(again.stderr, work)
        steps = json.loads(again.stdout)["steps"]
        assert steps == [], f"second run would do: {steps}"
