#!/usr/bin/env python3
"""Run Snakemake's own test cases with flowmake's CLI, and say which pass.

A developer tool, not part of the pytest suite: it needs a copy of Snakemake's repository.

    python scripts/snakemake_suite.py PATH/TO/snakemake/tests [--report FILE] [-j N] [-k WORD]
    python scripts/snakemake_suite.py https://github.com/snakemake/snakemake.git

Snakemake's tests call ``run(dpath("NAME"), **kwargs)`` (tests/common.py): copy the directory
NAME to a temporary directory, run the workflow there, and compare every file under
``expected-results/`` with what the run made (md5 of the stripped bytes, unless
``check_md5=False``; nothing unless the run should succeed or ``check_results=True``). This
script reads those calls with ``ast`` (only literal arguments; a parametrized test becomes one
case per parameter set), turns the keyword arguments into ``python -m flowmake`` flags, runs each
case in a fresh copy with a timeout and makes the same comparison. A test function is one case:
it passes when each of its ``run()`` calls does. Any other Python in the test function (extra
asserts, files written between runs) is not run; such cases are marked ``run() only``.

Outcomes: ``pass``; ``fail`` with the first error line; ``skip`` with the reason it is out of
scope (conda, containers, cluster executors, remote storage, reports, linting, network, Python
API-only calls, Windows-only).
"""
from __future__ import annotations

import argparse
import ast
import concurrent.futures
import dataclasses
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
INTERNAL = "internal error"

# The cases' reader lives beside this script (also when a test loads this file by its path).
sys.path.insert(0, str(Path(__file__).resolve().parent))
from snakemake_suite_cases import (  # noqa: E402
    Call, Case, collect)


def flags(kwargs: dict[str, Any]) -> list[str]:
    """flowmake arguments for one run() call (Snakemake's defaults: Snakefile, 3 cores)."""
    # Targets first: the list-valued flags (--config, -R, ...) would take them as their values.
    args = [_path(t) for t in _as_list(kwargs.get("targets") or [])]
    args += ["-s", kwargs.get("snakefile", "Snakefile"), "-c", str(kwargs.get("cores", 3))]
    executor = kwargs.get("executor", "local")
    args += {"dryrun": ["-n"], "touch": ["--touch"]}.get(executor, [])
    for key, flag in (("forceall", "-F"), ("printshellcmds", "-p"), ("all_temp", "--all-temp"),
                      ("benchmark_extended", "--benchmark-extended"), ("cache", "--cache")):
        if kwargs.get(key):
            args.append(flag)
            if key == "cache" and isinstance(kwargs[key], list):
                args += kwargs[key]
    for key, flag in (("forcerun", "-R"), ("until", "--until"), ("omit_from", "--omit-from"),
                      ("configfiles", "--configfile"), ("batch", "--batch"),
                      ("cleanup_metadata", "--cleanup-metadata")):
        if kwargs.get(key):
            args += [flag, *[_path(v) for v in _as_list(kwargs[key])]]
    if kwargs.get("config"):
        args += ["--config", *[f"{k}={_config_value(v)}" for k, v in kwargs["config"].items()]]
    for key, flag in (("resources", "--resources"), ("default_resources", "--default-resources"),
                      ("overwrite_resource_scopes", "--set-resource-scopes"),
                      ("group_components", "--group-components"), ("overwrite_groups",
                      "--groups"), ("overwrite_scatter", "--set-scatter")):
        value = kwargs.get(key)
        if value:
            items = value if isinstance(value, list) else [f"{k}={v}" for k, v in value.items()]
            args += [flag, *map(str, items)]
    for rule, res in (kwargs.get("overwrite_resources") or {}).items():
        args += ["--set-resources", *[f"{rule}:{k}={v}" for k, v in res.items()]]
    if kwargs.get("max_threads"):
        args += ["--max-threads", str(kwargs["max_threads"])]
    if kwargs.get("retries"):
        args += ["--retries", str(kwargs["retries"])]
    if kwargs.get("shadow_prefix"):
        args += ["--shadow-prefix", str(kwargs["shadow_prefix"])]
    if kwargs.get("rerun_triggers"):
        args += ["--rerun-triggers", *map(str, _as_list(kwargs["rerun_triggers"]))]
    return args


def _as_list(v: Any) -> list[Any]:
    return list(v) if isinstance(v, (list, tuple, set, frozenset)) else [v]


def _path(v: Any) -> str:
    return str(v[1]) if isinstance(v, tuple) else str(v)


def _config_value(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes().strip(), usedforsecurity=False).hexdigest()


def compare(results: Path, workdir: Path, check_md5: bool) -> str | None:
    """What run() in Snakemake's tests/common.py would assert about expected-results/."""
    for f in sorted(results.rglob("*")):
        rel = f.relative_to(results).as_posix()
        # glob("**/**") in common.py skips hidden names, so .gitignore and .gitkeep too
        if f.is_dir() or any(part.startswith(".") for part in rel.split("/")) or \
                rel.endswith("_WIN"):
            continue
        target = workdir / rel
        if not target.exists():
            return f'expected file "{rel}" not produced'
        if check_md5 and (target.is_dir() or md5(target) != md5(f)):
            return f"wrong result produced for file '{rel}'"
    return None


def first_error(text: str) -> str:
    """The line that says best why a run failed."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if any("this is a bug" in ln or ln.startswith("Traceback") for ln in lines):
        last = next((ln for ln in reversed(lines) if re.match(r"^\w[\w.]*(Error|Exception)", ln)),
                    lines[-1])
        return f"{INTERNAL}: {last}"
    for i, ln in enumerate(lines):
        if ln.startswith("FAILED "):
            log = next((x for x in lines[i + 1:] if x.startswith("| ")), "")
            return f"{ln} {log}".strip()
    for ln in lines:
        if re.match(r"^(\S+:\d+: |[\w ]*error\b|flowmake: error)", ln):
            return ln
    for ln in lines:
        if re.search(r"\berror\b|Error\b|exception|unrecognized|invalid", ln, re.I):
            return ln
    # flowmake prints an error's message first, after any "[n/m] step" progress lines.
    return next((ln for ln in lines if not ln.startswith("[")), lines[-1] if lines else "(no output)")


def run_call(call: Call, tests: Path, workdir: Path, python: str, timeout: float,
             env: dict[str, str]) -> str | None:
    """None when the call behaves as its test expects, else why not."""
    kw = call.kwargs
    shouldfail = bool(kw.get("shouldfail"))
    if kw.get("shellcmd"):
        cmd = kw["shellcmd"].strip()
        cmd = f"{shlex.quote(python)} -m flowmake{cmd[len('snakemake'):]}"
        argv: list[str] | str = ["/bin/sh", "-c", cmd]
    else:
        argv = [python, "-m", "flowmake", *flags(kw)]
    try:
        proc = subprocess.Popen(argv, cwd=workdir, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return f"timeout after {timeout:.0f} s"
    # The copy's path and flowmake's own say nothing about the case: "." and "<flowmake>".
    text = out.decode(errors="replace").replace(str(workdir), ".").replace(str(ROOT), "<flowmake>")
    failed = proc.returncode != 0
    if failed and first_error(text).startswith(INTERNAL):
        return first_error(text)
    if shouldfail and not failed:
        return "expected the run to fail; it succeeded"
    if failed and not shouldfail:
        return first_error(text)
    check = kw.get("check_results", not shouldfail)
    if check:
        return compare(tests / call.name / "expected-results", workdir,
                       kw.get("check_md5", True))
    return None


def run_case(case: Case, tests: Path, python: str, timeout: float) -> Case:
    import time
    start = time.monotonic()
    env = dict(os.environ)
    # Workflows that call python or snakemake in their commands get the same environment.
    env["PATH"] = os.pathsep.join([os.path.dirname(os.path.abspath(python)), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    kept: dict[str, Path] = {}
    made: list[Path] = []
    try:
        for call in case.calls:
            src = tests / call.name
            snakefile = src / call.kwargs.get("snakefile", "Snakefile")
            if not call.kwargs.get("shellcmd") and not snakefile.exists():
                case.outcome, case.detail = "fail", f"harness: no {snakefile.name} in {call.name}"
                return case
            if call.reuse and call.reuse in kept:
                workdir = kept[call.reuse]
            else:
                workdir = Path(tempfile.mkdtemp(prefix=f"smk-{call.name.replace('/', '_')}-"))
                made.append(workdir)
                for entry in src.iterdir():
                    dst = workdir / entry.name
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.copytree(entry, dst, symlinks=True)
                    else:
                        shutil.copy(entry, dst, follow_symlinks=False)
            if call.keep_as:
                kept[call.keep_as] = workdir
            try:
                why = run_call(call, tests, workdir, python, timeout, env)
            except OSError as e:
                why = f"harness: {e}"
            if why:
                case.outcome, case.detail = "fail", why
                return case
        case.outcome = "pass"
        return case
    finally:
        case.seconds = time.monotonic() - start
        for d in made:
            shutil.rmtree(d, ignore_errors=True)


# -- the report ----------------------------------------------------------------------------------

def summary(cases: list[Case], total: int) -> str:
    tried = [c for c in cases if not c.skip]
    count = {o: sum(c.outcome == o for c in tried) for o in ("pass", "fail")}
    lines = [f"test functions read: {total}; cases calling run(dpath(...)): {len(cases)}",
             f"tried: {len(tried)}  passed: {count['pass']}  failed: {count['fail']}  "
             f"skipped (out of scope): {len(cases) - len(tried)}",
             f"passed with extra Python in the test not run: "
             f"{sum(c.outcome == 'pass' and c.extra_code for c in tried)}"]
    return "\n".join(lines)


def table(cases: list[Case]) -> str:
    rows = []
    for c in cases:
        outcome = "skip" if c.skip else c.outcome
        note = c.skip or c.detail
        if c.extra_code and not c.skip:
            note = ("run() only; " + note).rstrip("; ")
        rows.append(f"{outcome:5} {c.test:70} {note}")
    return "\n".join(rows)


def markdown(cases: list[Case], total: int, source: str) -> str:
    out = ["# Snakemake's test cases under flowmake", "",
           f"Source: `{os.path.basename(source.rstrip('/')) or source}`. Generated by "
           "`scripts/snakemake_suite.py`.", "", "```",
           summary(cases, total), "```", "", "## Skipped, by reason", ""]
    reasons: dict[str, int] = {}
    for c in cases:
        if c.skip:
            reasons[c.skip] = reasons.get(c.skip, 0) + 1
    out += [f"- {r}: {n}" for r, n in sorted(reasons.items(), key=lambda x: -x[1])]
    out += ["", "## Failures", "", "| test | first error |", "|---|---|"]
    for c in cases:
        if not c.skip and c.outcome == "fail":
            out.append(f"| `{c.test}` | {c.detail.replace('|', '/')[:200]} |")
    out += ["", "## Passed", ""]
    out += [f"- `{c.test}`" + (" (run() only)" if c.extra_code else "")
            for c in cases if not c.skip and c.outcome == "pass"]
    return "\n".join(out) + "\n"


def checkout(source: str) -> tuple[Path, tempfile.TemporaryDirectory[str] | None]:
    if os.path.isdir(source):
        path = Path(source).resolve()
        return (path / "tests" if (path / "tests" / "common.py").is_file() else path), None
    tmp = tempfile.TemporaryDirectory(prefix="snakemake-")
    subprocess.run(["git", "clone", "--depth", "1", "-q", source, tmp.name], check=True)
    return Path(tmp.name) / "tests", tmp


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source", help="a Snakemake checkout's tests/ (or the checkout), or a git URL")
    p.add_argument("--report", metavar="FILE", help="write a Markdown report")
    p.add_argument("--json", metavar="FILE", help="write every case's outcome as JSON")
    p.add_argument("-j", "--jobs", type=int, default=2, help="cases at once (default 2)")
    p.add_argument("-k", metavar="WORD", help="only tests whose name contains WORD")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per run() (default 60)")
    p.add_argument("--python", default=sys.executable, help="the Python that runs flowmake")
    a = p.parse_args(argv)
    tests, tmp = checkout(a.source)
    try:
        cases, total = collect(tests)
        if a.k:
            cases = [c for c in cases if a.k in c.test]
        todo = [c for c in cases if not c.skip]
        with concurrent.futures.ThreadPoolExecutor(max(1, a.jobs)) as pool:
            for c in pool.map(lambda c: run_case(c, tests, a.python, a.timeout), todo):
                print(f"{c.outcome:5} {c.seconds:5.1f}s {c.test}  {c.detail}", flush=True)
        print(table(cases))
        print(summary(cases, total))
        if a.report:
            Path(a.report).write_text(markdown(cases, total, a.source), encoding="utf-8")
        if a.json:
            Path(a.json).write_text(json.dumps([dataclasses.asdict(c) for c in cases],
                                               indent=1, default=str), encoding="utf-8")
    finally:
        if tmp:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
