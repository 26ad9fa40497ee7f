"""The slurm backend's sacct path, against a real SLURM with slurmdbd (``slurm_accounting``).

Jobs are left to finish and to be forgotten by the controller (short ``MinJobAge``) before the
backend first polls, so ``squeue --states=all`` no longer lists them and only ``sacct`` can say
how they ended.
"""

from __future__ import annotations

import time

import pytest

from flowmake.backend import JobState
from tests.services.jobs import spec, wait_for

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def _wait_forgotten(cluster, ids: set[str], timeout: float = 150) -> None:
    """Until squeue no longer lists ``ids`` and sacct has recorded them as ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listed = set(cluster.cmd("squeue", "-h", "--states=all", "-o", "%i").split())
        if not ids & listed:
            rows = cluster.cmd("sacct", "-X", "-n", "-P", "-o", "JobID,State",
                               "-j", ",".join(sorted(ids)))
            ended = {line.split("|")[0] for line in rows.splitlines()
                     if line.split("|")[-1] in ("COMPLETED", "FAILED")}
            if ended >= ids:
                return
        time.sleep(0.5)
    raise AssertionError(f"jobs {sorted(ids)} still in squeue (or not in sacct) after {timeout}s")


def test_forgotten_jobs_are_reported_from_sacct(slurm_accounting, tmp_path):
    from flowmake.backends.slurm import SlurmBackend

    b = SlurmBackend(settings=slurm_accounting.settings(poll_interval=0.2), cores=2)
    try:
        ok = b.submit(spec(tmp_path, "ok", "echo fine"))
        bad = b.submit(spec(tmp_path, "bad", "echo 'oh no' >&2; exit 3"))
        _wait_forgotten(slurm_accounting, {ok.native_id, bad.native_id})
        assert b.queries == 0  # nothing polled yet: all the backend learns comes from now on

        done = wait_for(b, [ok, bad], timeout=30)
        assert b.queries == 2, "expected one squeue and one sacct call"
        assert (done[ok].state, done[ok].exit_code) == (JobState.SUCCEEDED, 0), done[ok]
        assert (done[bad].state, done[bad].exit_code) == (JobState.FAILED, 3), done[bad]
        assert done[ok].host == done[bad].host == slurm_accounting.node
        assert (tmp_path / "logs/ok.log").read_text() == "fine\n"
        assert (tmp_path / "logs/bad.log").read_text() == "oh no\n"
    finally:
        b.close()
