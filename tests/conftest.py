"""Shared helpers for end-to-end tests: a workflow in a temp dir, run as a real ``flowmake`` process.

``flow`` writes a Flowfile into ``tmp_path`` and runs ``python -m flowmake`` there as a subprocess,
so the tests exercise what a user runs: argument parsing, signals, process groups, exit codes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest


class Flow:
    """One workdir. ``run`` returns ``(rc, stdout, stderr)``; ``plan`` the outputs ``-n --json`` lists."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def write(self, text: str, name: str = "Flowfile") -> None:
        self.file(name, textwrap.dedent(text).lstrip())

    def file(self, name: str, text: str) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def read(self, name: str) -> str:
        return (self.root / name).read_text()

    def exists(self, name: str) -> bool:
        return (self.root / name).exists()

    def env(self) -> dict[str, str]:
        # $SNAKEMAKE_PROFILE names a profile every run would read (see flowmake/profiles.py).
        return {k: v for k, v in os.environ.items() if not k.startswith("FLOWMAKE_") and k != "SNAKEMAKE_PROFILE"}

    def run(self, *args: str, timeout: float = 60) -> tuple[int, str, str]:
        res = subprocess.run([sys.executable, "-m", "flowmake", *args], cwd=self.root, capture_output=True,
                             text=True, timeout=timeout, env=self.env())
        return res.returncode, res.stdout, res.stderr

    def ok(self, *args: str) -> str:
        """Run and require success; returns stderr (where progress goes) for further checks."""
        rc, out, err = self.run(*args)
        assert rc == 0, f"flowmake {' '.join(args)} exited {rc}\n--- stdout\n{out}\n--- stderr\n{err}"
        assert "Traceback" not in err, err
        return err

    def popen(self, *args: str, **kw: Any) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "flowmake", *args], cwd=self.root, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env(), **kw)

    def plan(self, *args: str) -> list[dict[str, Any]]:
        rc, out, err = self.run("-n", "--json", *args)
        assert rc == 0, err
        return json.loads(out)["steps"]  # type: ignore[no-any-return]

    def planned(self, *args: str) -> list[str]:
        """First output of every step a dry run lists, sorted: what would run."""
        return sorted(s["outputs"][0] if s["outputs"] else s["rule"] for s in self.plan(*args))

    def wait_for(self, name: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not self.exists(name):
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} did not appear within {timeout} s")
            time.sleep(0.02)


@pytest.fixture
def flow(tmp_path: Path) -> Flow:
    return Flow(tmp_path)

