"""The ssh backend against real sshd hosts in network namespaces (the ``ssh_hosts`` fixture).

fmhost0 and fmhost1 share this machine's filesystem; fmhost2 has a private one (it cannot see the
test's workdirs), so jobs there only work if staging does.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import blake3
import pytest

from flowmake.backend import Backend, JobState
from flowmake.errors import BackendError
from tests.services.jobs import spec, wait_for, wait_one

pytestmark = [pytest.mark.ssh, pytest.mark.slow]


@pytest.fixture
def workdir(ssh_hosts) -> Path:
    # Under the hosts' shared tree: visible to fmhost0/1, hidden from the private fmhost2.
    d = ssh_hosts.fs / "work" / uuid.uuid4().hex[:8]
    d.mkdir(parents=True)
    return d


@pytest.fixture
def make_backend(ssh_hosts):
    from flowmake.backends.ssh import SshBackend

    made = []

    def make(*hosts: str, **settings):
        b = SshBackend(settings=ssh_hosts.settings(*hosts, **settings), cores=2)
        made.append(b)
        return b

    yield make
    for b in made:
        b.close()


def test_is_a_backend(make_backend, ssh_hosts):
    b = make_backend("fmhost0", "fmhost1", slots={ssh_hosts.host("fmhost0").address: 2})
    assert isinstance(b, Backend)
    assert b.capacity() == 3


def test_job_on_shared_fs_writes_its_output(make_backend, ssh_hosts, workdir):
    b = make_backend("fmhost0", shared_fs=True)
    h = b.submit(spec(workdir, "s1", "mkdir -p out; hostname > out/host.txt",
                      outputs=["out/host.txt"]))
    ev = wait_one(b, h)
    assert ev.state is JobState.SUCCEEDED, ev
    assert (ev.exit_code, ev.host) == (0, ssh_hosts.host("fmhost0").address)
    assert (workdir / "out/host.txt").read_text() == "fmhost0\n"


def test_failing_job_is_failed_with_exit_code_and_log(make_backend, workdir):
    b = make_backend("fmhost0")
    ev = wait_one(b, b.submit(spec(workdir, "bad", "echo oops >&2; exit 7")))
    assert (ev.state, ev.exit_code) == (JobState.FAILED, 7)
    assert (workdir / "logs/bad.log").read_text() == "oops\n"
    assert b.capacity() == 1  # a job's failure is not the host's


def test_private_host_stages_inputs_and_fetches_verified_outputs(make_backend, workdir):
    b = make_backend("fmhost2", shared_fs=False)
    (workdir / "data").mkdir()
    (workdir / "data/in.txt").write_text("alpha\nbeta\n")
    (workdir / "ref").mkdir()
    (workdir / "ref/a.txt").write_text("A")
    (workdir / "ref/sub").mkdir()
    (workdir / "ref/sub/b.txt").write_text("B")
    digest = blake3.blake3(b"alpha\nbeta\n").hexdigest()
    cmd = ("test ! -e " + str(workdir) + "  # the host cannot see our workdir\n"
           "hostname > where; wc -l < data/in.txt > out/count.txt\n"
           "mkdir -p out/parts; cat ref/a.txt ref/sub/b.txt > out/parts/ab; touch out/parts/empty\n"
           "echo to-the-log")
    s = spec(workdir, "stage", cmd, inputs=[("data/in.txt", digest), ("ref", "")],
             outputs=["out/count.txt", "where"], directories=["out/parts"])
    ev = wait_one(b, b.submit(s))
    assert ev.state is JobState.SUCCEEDED, (ev, (workdir / "logs/stage.log").read_text())
    assert (workdir / "where").read_text() == "fmhost2\n"
    assert (workdir / "out/count.txt").read_text() == "2\n"
    assert (workdir / "out/parts/ab").read_text() == "AB"
    assert (workdir / "out/parts/empty").exists()
    assert (workdir / "logs/stage.log").read_text() == "to-the-log\n"
    assert not list(workdir.rglob(".*flowmake-*"))  # no temporaries left behind
    assert (b.uploads, b.downloads) == (3, 4)

    # Same input again (and one new file): only the new file travels.
    (workdir / "data/other.txt").write_text("gamma\n")
    s2 = spec(workdir, "again", "cat data/in.txt data/other.txt > both",
              inputs=[("data/in.txt", digest), ("data/other.txt", "")], outputs=["both"])
    assert wait_one(b, b.submit(s2)).state is JobState.SUCCEEDED
    assert (workdir / "both").read_text() == "alpha\nbeta\ngamma\n"
    assert b.uploads == 4

    # A fresh backend (another run) checks what the host has instead of sending it again.
    b2 = make_backend("fmhost2", shared_fs=False)
    assert wait_one(b2, b2.submit(s2)).state is JobState.SUCCEEDED
    assert b2.uploads == 0


def test_private_host_missing_output_is_failed(make_backend, workdir):
    b = make_backend("fmhost2", shared_fs=False)
    ev = wait_one(b, b.submit(spec(workdir, "m", "echo hi > other", outputs=["wanted"])))
    assert ev.state is JobState.FAILED
    assert "missing output: wanted" in ev.message
    assert not (workdir / "other").exists()


def test_cancel_kills_the_remote_process_group(make_backend, workdir):
    b = make_backend("fmhost0")
    h = b.submit(spec(workdir, "long", "(sleep 60; echo late > child) & sleep 60; echo x > never"))
    deadline = time.monotonic() + 10
    while h.pgid is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert h.pgid, "the job never started"
    os.killpg(h.pgid, 0)  # the hosts share our pid namespace: the group is visible from here
    b.cancel(h)
    ev = wait_one(b, h, timeout=20)
    assert ev.state is JobState.CANCELLED
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the background child too, not just the shell
        try:
            os.killpg(h.pgid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"process group {h.pgid} still alive after cancel")


def test_dead_host_is_lost_and_the_rerun_succeeds_elsewhere(ssh_hosts, tmp_path_factory):
    # Its own hosts: killing one must not take the session's hosts with it.
    from flowmake.backends.ssh import SshBackend
    from tests.services.ssh import start_ssh_hosts

    hosts = start_ssh_hosts(tmp_path_factory.mktemp("ssh-kill"), n=2)
    b = SshBackend(settings=hosts.settings(shared_fs=False), cores=2)
    try:
        wd = hosts.fs / "work"
        wd.mkdir()
        (wd / "in").write_text("x")
        s = spec(wd, "victim", "sleep 30; cp in out", inputs=[("in", "")], outputs=["out"])
        s2 = spec(wd, "other", "sleep 30; cp in out2", inputs=[("in", "")], outputs=["out2"])
        h1, h2 = b.submit(s), b.submit(s2)
        time.sleep(1.5)
        victim = next(h for h in hosts.hosts if h.spec == h1.host.spec)
        t0 = time.monotonic()
        hosts.kill(victim.name)
        ev = wait_one(b, h1, timeout=30)
        assert ev.state is JobState.LOST, ev
        assert time.monotonic() - t0 < 10
        assert b.capacity() == 1
        b.cancel(h2)
        assert wait_one(b, h2).state is JobState.CANCELLED
        rerun = b.submit(spec(wd, "victim", "cp in out", inputs=[("in", "")], outputs=["out"]))
        ev2 = wait_one(b, rerun)
        assert ev2.state is JobState.SUCCEEDED and ev2.host != ev.host
        assert (wd / "out").read_text() == "x"
    finally:
        b.close()
        hosts.stop()


def test_changed_host_key_is_refused(make_backend, ssh_hosts, workdir, tmp_path):
    other = ssh_hosts.host_keys["fmhost1"]  # a real key, but not fmhost0's
    pub = " ".join(Path(f"{other}.pub").read_text().split()[:2])
    bad = tmp_path / "known_hosts"
    address = ssh_hosts.host("fmhost0").address
    bad.write_text(f"{address} {pub}\n")
    b = make_backend("fmhost0", known_hosts=str(bad))
    with pytest.raises(BackendError) as err:
        b.submit(spec(workdir, "k", "true"))
    text = str(err.value)
    assert f"host key of {address} does not match known_hosts file {bad}" in text


def test_unknown_host_key_is_refused(make_backend, ssh_hosts, workdir, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    b = make_backend("fmhost1", known_hosts=str(empty))
    with pytest.raises(BackendError) as err:
        b.submit(spec(workdir, "k", "true"))
    address = ssh_hosts.host("fmhost1").address
    assert f"host key of {address} is not in known_hosts file {empty}" in str(err.value)


def test_parallel_jobs_spread_over_hosts(make_backend, workdir):
    b = make_backend("fmhost0", "fmhost1", slots=2)
    handles = [b.submit(spec(workdir, f"p{i}", f"sleep 1; hostname > h{i}")) for i in range(6)]
    t0 = time.monotonic()
    events = wait_for(b, handles, timeout=30)
    assert all(e.state is JobState.SUCCEEDED for e in events.values())
    assert time.monotonic() - t0 < 5.5  # 6 jobs on 4 slots: two rounds; one slot would take 6 s
    assert {(workdir / f"h{i}").read_text() for i in range(6)} == {"fmhost0\n", "fmhost1\n"}


def test_unreachable_host_is_marked_down_and_others_carry_on(make_backend, ssh_hosts, workdir):
    settings = ssh_hosts.settings("fmhost0")
    other = ssh_hosts.host("fmhost1")
    settings["hosts"].append(f"{other.user}@{other.address}:2222")  # nothing listens there
    from flowmake.backends.ssh import SshBackend

    b = SshBackend(settings=settings, cores=1)
    try:
        assert b.capacity() == 2  # nothing is known before the first submit
        ev = wait_one(b, b.submit(spec(workdir, "u", "hostname > h")))
        assert (ev.state, ev.host) == (JobState.SUCCEEDED, ssh_hosts.host("fmhost0").address)
        assert b.capacity() == 1
    finally:
        b.close()


def test_runtime_limit_is_timeout(make_backend, workdir):
    from dataclasses import replace

    b = make_backend("fmhost1")
    s = spec(workdir, "slow", "sleep 30", runtime_min=1)
    s = replace(s, resources=replace(s.resources, runtime_min=0.02))  # 1.2 s, for the test's sake
    ev = wait_one(b, b.submit(s), timeout=30)
    assert ev.state is JobState.TIMEOUT


def test_flowmake_runs_a_pipeline_on_a_private_host(ssh_hosts, workdir):
    # The whole path: scheduler → staging → remote job → verified outputs, through the CLI.
    import json
    import subprocess
    import sys

    settings = ssh_hosts.settings("fmhost2", shared_fs=False, slots=2)
    toml = "".join(f"{k} = {json.dumps(v) if not isinstance(v, bool) else str(v).lower()}\n"
                   for k, v in settings.items())
    (workdir / "flowmake.toml").write_text(f'backend = "ssh"\n\n[backends.ssh]\n{toml}')
    (workdir / "in").mkdir()
    for n in (1, 2, 3):
        (workdir / "in" / f"{n}.txt").write_text(f"{n}\n")
    (workdir / "Flowfile").write_text('''
rule all:
    input: "out/sum.txt", "out/d"

rule square:
    input: "in/{n}.txt"
    output: "out/{n}.sq"
    shell: "echo $(( $(cat {input}) * $(cat {input}) )) > {output}; hostname"

rule total:
    input: expand("out/{n}.sq", n=[1, 2, 3])
    output: "out/sum.txt"
    shell: "cat {input} | awk '{{s += $1}} END {{print s}}' > {output}"

rule d:
    input: "out/sum.txt"
    output: directory("out/d")
    shell: "mkdir -p {output}/x; cp {input} {output}/x/copy"
''')

    def flowmake(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "flowmake", "-c", "2", *args], cwd=workdir,
                              capture_output=True, text=True, timeout=120)

    res = flowmake()
    assert res.returncode == 0, res.stderr
    assert (workdir / "out/sum.txt").read_text() == "14\n"
    assert (workdir / "out/d/x/copy").read_text() == "14\n"
    logs = list((workdir / ".flowmake").rglob("square*.log"))
    assert logs and all(p.read_text() == "fmhost2\n" for p in logs)
    res = flowmake("-n", "--json")
    assert res.returncode == 0 and json.loads(res.stdout) == {"steps": []}
