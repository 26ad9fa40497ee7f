"""One measuring script run in a fresh child per tool and rep (micro.py, cache_restore.py).

The child gets the tool's environment (its PYTHONPATH picks the flowmake code), a fresh temp dir
as its only argument and working directory, and prints one JSON object as its last line. The
tools alternate who goes first rep by rep, as in compare.py.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from typing import Any, Callable, Sequence


def run_each(script: str, measurements: Sequence[str], what: str, tools: Sequence[Any], reps: int,
             timeout: float, log: Callable[[str], None],
             show: Callable[[str, float], str]) -> dict[str, dict[str, Any]]:
    """tool name -> measurement -> the value of each rep, or tool name -> {"failed": why}."""
    out: dict[str, dict[str, Any]] = {t.name: {m: [] for m in measurements} for t in tools}
    for rep in range(reps):
        for t in (tools if rep % 2 == 0 else list(reversed(tools))):
            if "failed" in out[t.name]:
                continue
            with tempfile.TemporaryDirectory(prefix=f"flowmake-{what}-") as wd:
                try:
                    res = subprocess.run([sys.executable, os.path.abspath(script), wd],
                                         capture_output=True, text=True, timeout=timeout,
                                         cwd=wd, env={**os.environ, **t.env})
                except subprocess.TimeoutExpired:
                    out[t.name] = {"failed": f"timeout after {timeout:.0f}s"}
                    continue
            if res.returncode != 0:
                why = (res.stderr.strip().splitlines() or ["no output"])[-1][:160]
                out[t.name] = {"failed": why.replace("|", "/")}
                log(f"  {what} {t.name}: FAILED {why}")
                continue
            data = json.loads(res.stdout.strip().splitlines()[-1])
            for m in measurements:
                out[t.name][m].append(data[m])
            log(f"  {what} {t.name:14} rep {rep + 1}: " + ", ".join(show(m, data[m]) for m in measurements))
    return out
