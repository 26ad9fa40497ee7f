"""The ssh backend's launch script, run by a local bash the way sshd runs it (``$SHELL -c``).

No sshd here: what is checked is the shell text the host gets. A launch too long for one argument
(the host refuses one over 128 KiB) goes on stdin and must behave exactly like a short one.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from flowmake.backend import INLINE_MAX
from flowmake.backends import ssh_staging as staging


def host_runs(command: str, stdin: bytes, cwd: Path, tmp: Path) -> tuple[int, bytes]:
    proc = subprocess.run(["bash", "-c", command], input=stdin, cwd=cwd, capture_output=True,
                          env={**os.environ, "TMPDIR": str(tmp)}, timeout=60)
    return proc.returncode, proc.stdout


@pytest.mark.parametrize("size", [10, 300_000])
def test_a_launch_of_any_length_runs_the_job_and_cleans_up(tmp_path: Path, size: int) -> None:
    work, tmp = tmp_path / "work", tmp_path / "tmp"
    work.mkdir()
    tmp.mkdir()
    name = b"caf\xe9.txt"  # not UTF-8: the job must see these bytes
    script = ("set -euo pipefail\n" + f"printf %s {'y' * size} | wc -c > count.txt\n"
              + f"echo done > {os.fsdecode(name)}\n")
    launch = staging.Launch(rundir=str(work), log="logs/job.log")
    command, stdin = staging.launch_command(launch, script), b""
    if len(os.fsencode(command)) > INLINE_MAX:
        command, stdin = staging.launch_via_stdin(launch, script)
        assert len(os.fsencode(command)) < 1000
    assert (size > INLINE_MAX) == bool(stdin)
    code, out = host_runs(command, stdin, work, tmp)
    assert code == 0, out
    assert staging.parse_pid(out) is not None, "the first line is the job's pgid"
    assert int((work / "count.txt").read_text()) == size
    assert (Path(os.fsdecode(bytes(work) + b"/" + name))).read_text() == "done\n"
    assert os.listdir(tmp) == [], "no launch or job file is left on the host"


def test_a_failing_long_job_reports_its_exit_status(tmp_path: Path) -> None:
    launch = staging.Launch(rundir=str(tmp_path), log="job.log")
    command, stdin = staging.launch_via_stdin(launch, "echo " + "x" * 200_000 + "\nexit 7\n")
    code, _ = host_runs(command, stdin, tmp_path, tmp_path)
    assert code == 7
    assert (tmp_path / "job.log").read_text().startswith("x")
