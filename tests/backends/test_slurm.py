"""The slurm backend against a real single-node SLURM (the ``slurm_cluster`` fixture)."""

from __future__ import annotations

import re
import time

import pytest

from flowmake.backend import Backend, JobState
from flowmake.errors import BackendError
from tests.services.jobs import spec, wait_for, wait_one

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@pytest.fixture
def make_backend(slurm_cluster):
    from flowmake.backends.slurm import SlurmBackend

    made = []

    def make(**settings):
        b = SlurmBackend(settings=slurm_cluster.settings(**settings), cores=2)
        made.append(b)
        return b

    yield make
    for b in made:
        b.close()


def _show(cluster, job_id: str) -> dict[str, str]:
    text = cluster.cmd("scontrol", "show", "job", "-o", job_id)
    return dict(re.findall(r"(\S+?)=(\S*)", text))


def _wait_state(cluster, job_id: str, states: set[str], timeout: float = 30) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = _show(cluster, job_id)
        if info["JobState"] in states:
            return info
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} never reached {states}: {info['JobState']}")


def test_is_a_backend(make_backend):
    assert isinstance(make_backend(), Backend)


def test_job_writes_its_output(make_backend, tmp_path):
    b = make_backend()
    h = b.submit(spec(tmp_path, "ok", 'mkdir -p out; echo hi > out/x; echo "logged by $WHO"',
                      outputs=["out/x"], env=(("WHO", "it's me"),)))
    ev = wait_one(b, h, timeout=60)
    assert ev.state is JobState.SUCCEEDED, ev
    assert ev.exit_code == 0 and ev.host
    assert (tmp_path / "out/x").read_text() == "hi\n"
    assert (tmp_path / "logs/ok.log").read_text() == "logged by it's me\n"


def test_failing_job_is_failed_with_exit_code_and_log(make_backend, tmp_path):
    b = make_backend()
    ev = wait_one(b, b.submit(spec(tmp_path, "bad", "echo 'oh no' >&2; false; echo unreached")))
    assert (ev.state, ev.exit_code) == (JobState.FAILED, 1)
    assert (tmp_path / "logs/bad.log").read_text() == "oh no\n"
    ev = wait_one(b, b.submit(spec(tmp_path, "bad2", "exit 42")))
    assert (ev.state, ev.exit_code) == (JobState.FAILED, 42)


def test_resources_reach_sbatch(make_backend, slurm_cluster, tmp_path):
    b = make_backend(partition="debug")
    h = b.submit(spec(tmp_path, "res", "sleep 30", rule="align", threads=2, mem_mb=300,
                      runtime_min=7, extra={"slurm_extra": "--comment=flowmake-test"}))
    info = _show(slurm_cluster, h.native_id)
    assert info["JobName"] == "align"
    assert info["NumCPUs"] == "2" and info["CPUs/Task"] == "2"
    assert info["MinMemoryNode"] == "300M"
    assert info["TimeLimit"] == "00:07:00"
    assert info["Partition"] == "debug"
    assert info["StdOut"] == str(tmp_path / "logs/res.log")
    assert info["WorkDir"] == str(tmp_path)
    assert "flowmake-test" in slurm_cluster.cmd("squeue", "-h", "-j", h.native_id, "-o", "%k")
    b.cancel(h)
    assert wait_one(b, h).state is JobState.CANCELLED


def test_cancel_kills_a_running_job(make_backend, slurm_cluster, tmp_path):
    b = make_backend()
    h = b.submit(spec(tmp_path, "long", "sleep 60; echo done > never"))
    _wait_state(slurm_cluster, h.native_id, {"RUNNING"})
    t0 = time.monotonic()
    b.cancel(h)
    ev = wait_one(b, h, timeout=30)
    assert ev.state is JobState.CANCELLED
    assert time.monotonic() - t0 < 10
    assert not (tmp_path / "never").exists()


def test_state_mapping():
    from flowmake.backends.slurm import STATES, _exit_code

    assert STATES["COMPLETED"] is JobState.SUCCEEDED
    assert STATES["OUT_OF_MEMORY"] is JobState.OOM
    assert STATES["TIMEOUT"] is JobState.TIMEOUT
    assert {STATES[s] for s in ("PREEMPTED", "NODE_FAIL", "BOOT_FAIL")} == {JobState.LOST}
    assert "RUNNING" not in STATES and "COMPLETING" not in STATES
    assert _exit_code(3 << 8) == 3 and _exit_code(9) == 137
    assert _exit_code({"return_code": 4, "signal": {"signal_id": 0}}) == 4


def test_bad_partition_is_a_backend_error(make_backend, tmp_path):
    b = make_backend(partition="nosuchpartition")
    with pytest.raises(BackendError) as err:
        b.submit(spec(tmp_path, "p", "true", rule="count"))
    assert "sbatch refused the job of rule 'count'" in str(err.value)
    assert "partition" in str(err.value).lower()


def test_fifty_jobs_one_query_per_poll_interval(make_backend, tmp_path):
    b = make_backend(poll_interval=0.2)
    handles = [b.submit(spec(tmp_path, f"j{i}", f"sleep 0.5; echo {i} > o{i}")) for i in range(50)]
    assert b.queries == 0  # submitting costs no queries
    polls = 0
    seen = {}
    t0 = time.monotonic()
    while len(seen) < len(handles) and time.monotonic() - t0 < 120:
        for ev in b.poll(0.2):
            seen[ev.handle] = ev
        polls += 1
    elapsed = time.monotonic() - t0
    assert len(seen) == 50, f"{len(seen)} of 50 finished"
    assert all(ev.state is JobState.SUCCEEDED for ev in seen.values())
    # One squeue per poll(0.2) call, never one per job; and never more than one per interval.
    assert b.queries <= polls
    assert b.queries <= elapsed / 0.2 + 1
    assert b.queries >= polls - 1
    assert [(tmp_path / f"o{i}").read_text() for i in range(50)] == [f"{i}\n" for i in range(50)]


def test_close_cancels_everything(make_backend, slurm_cluster, tmp_path):
    b = make_backend()
    handles = [b.submit(spec(tmp_path, f"c{i}", "sleep 60")) for i in range(3)]
    b.close()
    for h in handles:
        _wait_state(slurm_cluster, h.native_id, {"CANCELLED"})
    assert wait_for(b, [], timeout=1) == {}


def test_job_gone_from_squeue_is_looked_up_once_then_lost(make_backend, tmp_path):
    # No slurmdbd here: sacct cannot say how a forgotten job ended, so it is LOST (rerun).
    from flowmake.backends.slurm import SlurmHandle

    b = make_backend()
    ghosts = [SlurmHandle(spec(tmp_path, f"g{i}", "true"), str(990000 + i)) for i in range(3)]
    for h in ghosts:
        h.submitted -= 60  # long enough ago that squeue should list it
        b._jobs[h.native_id] = h
    events = b.poll(1.0)
    assert {e.handle for e in events} == set(ghosts)
    assert {e.state for e in events} == {JobState.LOST}
    assert "sacct" in events[0].message
    assert b.queries == 2  # one squeue for all, one sacct for all


def test_snakemake_plugin_resource_names_reach_sbatch(make_backend, slurm_cluster, tmp_path):
    # The names Snakemake's SLURM executor plugin reads: cpus_per_task over threads, tasks,
    # mem_mb_per_cpu instead of mem_mb, runtime as a timespan, slurm_extra with several flags.
    b = make_backend()
    h = b.submit(spec(tmp_path, "names", "sleep 30", rule="names", threads=1, mem_mb=900,
                      runtime_min=90, extra={"cpus_per_task": 2, "tasks": 1, "mem_mb_per_cpu": 200,
                                             "nodes": 1, "slurm_partition": "debug",
                                             "slurm_extra": "--comment=from-profile --nice=7"}))
    info = _show(slurm_cluster, h.native_id)
    assert info["CPUs/Task"] == "2" and info["NumTasks"] == "1" and info["NumNodes"] in ("1", "1-1")
    assert info["MinMemoryCPU"] == "200M"  # --mem-per-cpu wins over --mem, as in the plugin
    assert info["TimeLimit"] == "01:30:00"
    assert info["Partition"] == "debug" and info["Nice"] == "7"
    assert "from-profile" in slurm_cluster.cmd("squeue", "-h", "-j", h.native_id, "-o", "%k")
    b.cancel(h)
    assert wait_one(b, h).state is JobState.CANCELLED


def test_latency_wait_holds_success_until_outputs_appear(make_backend, tmp_path):
    # A shared filesystem may show a job's outputs late: the success is reported once they are
    # visible, or after latency_wait, when the scheduler names what is missing.
    b = make_backend(latency_wait=3)
    late = b.submit(spec(tmp_path, "late", "true", outputs=["late.txt"]))
    t0 = time.monotonic()
    ev = wait_one(b, late, timeout=60)
    assert ev.state is JobState.SUCCEEDED and time.monotonic() - t0 >= 3
    ok = b.submit(spec(tmp_path, "ok2", "echo x > ok2.txt", outputs=["ok2.txt"]))
    assert wait_one(b, ok, timeout=60).state is JobState.SUCCEEDED


def test_max_jobs_per_timespan_spaces_submissions(make_backend, tmp_path):
    b = make_backend(max_jobs_per_timespan="2/1s")
    t0 = time.monotonic()
    handles = [b.submit(spec(tmp_path, f"t{i}", "true")) for i in range(5)]
    assert time.monotonic() - t0 >= 2.0  # 5 submissions at 2 per second: two full waits
    wait_for(b, handles, timeout=60)
