"""The docker backend against a real dockerd (started by the ``docker_engine`` fixture)."""

from __future__ import annotations

import os
import socket
import time

import pytest

from flowmake.backend import Backend, JobState
from flowmake.errors import BackendError
from tests.services.jobs import spec, wait_one

pytestmark = [pytest.mark.docker, pytest.mark.slow]


@pytest.fixture
def backend(docker_engine):
    from flowmake.backends.docker import DockerBackend

    b = DockerBackend(settings={"image": docker_engine.busybox_image}, cores=2)
    yield b
    b.close()


def _wait_container(engine, name: str, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc = engine.docker("inspect", name, check=False)
        if proc.returncode == 0:
            info = engine.inspect(name)
            if info["State"]["Running"]:
                return info
        time.sleep(0.05)
    raise AssertionError(f"container {name} never ran")


def test_is_a_backend(backend):
    assert isinstance(backend, Backend)
    assert backend.capacity() == 2


def test_job_writes_its_output_as_the_caller(backend, tmp_path):
    h = backend.submit(spec(tmp_path, "s1", "mkdir -p out && echo hello > out/a.txt; id -u; pwd",
                            outputs=["out/a.txt"]))
    ev = wait_one(backend, h)
    assert ev.state is JobState.SUCCEEDED, (tmp_path / "logs/s1.log").read_text()
    assert ev.exit_code == 0 and ev.runtime_s is not None and ev.host == "docker"
    out = tmp_path / "out/a.txt"
    assert out.read_text() == "hello\n"
    assert out.stat().st_uid == os.getuid()
    log = (tmp_path / "logs/s1.log").read_text().split()
    assert log == [str(os.getuid()), str(tmp_path)]


def test_user_setting_reaches_docker(docker_engine, tmp_path):
    from flowmake.backends.docker import DockerBackend

    tmp_path.chmod(0o777)
    b = DockerBackend(settings={"image": docker_engine.busybox_image, "user": "1234:2345"}, cores=1)
    try:
        ev = wait_one(b, b.submit(spec(tmp_path, "u", "echo x > owned")))
    finally:
        b.close()
    assert ev.state is JobState.SUCCEEDED
    st = (tmp_path / "owned").stat()
    assert (st.st_uid, st.st_gid) == (1234, 2345)


def test_failing_job_is_failed_with_its_exit_code_and_log(backend, tmp_path):
    h = backend.submit(spec(tmp_path, "bad", "echo before; exit 3; echo after"))
    ev = wait_one(backend, h)
    assert (ev.state, ev.exit_code) == (JobState.FAILED, 3)
    assert (tmp_path / "logs/bad.log").read_text() == "before\n"


def test_strict_mode_stops_at_the_first_failing_pipeline(backend, tmp_path):
    ev = wait_one(backend, backend.submit(spec(tmp_path, "pf", "false | true\necho reached")))
    assert ev.state is JobState.FAILED
    assert "reached" not in (tmp_path / "logs/pf.log").read_text()


def test_resources_reach_docker(backend, docker_engine, tmp_path):
    h = backend.submit(spec(tmp_path, "res", "sleep 30", threads=2, mem_mb=96))
    info = _wait_container(docker_engine, h.native_id)
    host = info["HostConfig"]
    assert host["NanoCpus"] == 2 * 10**9
    assert host["Memory"] == 96 * 1024 * 1024
    assert host["NetworkMode"] == "none"
    assert info["Config"]["User"] == f"{os.getuid()}:{os.getgid()}"
    assert [m["Destination"] for m in info["Mounts"]] == [str(tmp_path)]
    backend.cancel(h)
    assert wait_one(backend, h).state is JobState.CANCELLED


def test_cancel_kills_the_container(backend, docker_engine, tmp_path):
    h = backend.submit(spec(tmp_path, "long", "sleep 60 & sleep 60; echo done > never"))
    _wait_container(docker_engine, h.native_id)
    t0 = time.monotonic()
    backend.cancel(h)
    ev = wait_one(backend, h, timeout=20)
    assert ev.state is JobState.CANCELLED
    assert time.monotonic() - t0 < 10
    assert not (tmp_path / "never").exists()
    # The container is gone, not just stopped.
    assert docker_engine.docker("inspect", h.native_id, check=False).returncode != 0


def test_oom_is_reported_as_oom(backend, tmp_path):
    # Holds ~64 MB in a shell variable: far above the 16 MB limit.
    hog = 'x=$(head -c 67108864 /dev/zero | tr "\\0" a); echo ${#x}'
    ev = wait_one(backend, backend.submit(spec(tmp_path, "oom", hog, mem_mb=16)))
    assert ev.state is JobState.OOM, (ev, (tmp_path / "logs/oom.log").read_text())
    assert ev.exit_code == 137


def test_a_job_that_exits_137_itself_is_not_oom(backend, tmp_path):
    ev = wait_one(backend, backend.submit(spec(tmp_path, "k", "exit 137", mem_mb=64)))
    assert (ev.state, ev.exit_code) == (JobState.FAILED, 137)


def test_runtime_limit_is_timeout(backend, tmp_path):
    from dataclasses import replace

    s = spec(tmp_path, "slow", "sleep 30", runtime_min=1)
    s = replace(s, resources=replace(s.resources, runtime_min=0.02))  # 1.2 s, for the test's sake
    ev = wait_one(backend, backend.submit(s), timeout=30)
    assert ev.state is JobState.TIMEOUT


def test_env_reaches_the_container(backend, tmp_path):
    ev = wait_one(backend, backend.submit(spec(tmp_path, "env", 'echo "$GREETING" > g',
                                               env=(("GREETING", "hi there"),))))
    assert ev.state is JobState.SUCCEEDED
    assert (tmp_path / "g").read_text() == "hi there\n"


def test_localrule_and_imageless_jobs_run_locally(docker_engine, tmp_path):
    from flowmake.backends.docker import DockerBackend

    b = DockerBackend(settings={}, cores=1)
    try:
        ev = wait_one(b, b.submit(spec(tmp_path, "loc", "echo $BASH_VERSION > v")))
    finally:
        b.close()
    assert (ev.state, ev.host) == (JobState.SUCCEEDED, socket.gethostname())
    assert (tmp_path / "v").read_text().strip()


def test_image_digest(backend, docker_engine):
    digest = backend.image_digest(docker_engine.busybox_image)
    assert digest.startswith("sha256:") and len(digest) == 71
    with pytest.raises(BackendError) as err:
        backend.image_digest("flowmake-test/nonexistent:0")
    assert "flowmake-test/nonexistent:0" in str(err.value)


def test_close_kills_running_jobs(docker_engine, tmp_path):
    from flowmake.backends.docker import DockerBackend

    b = DockerBackend(settings={"image": docker_engine.busybox_image}, cores=2)
    h = b.submit(spec(tmp_path, "c", "sleep 60"))
    _wait_container(docker_engine, h.native_id)
    b.close()
    assert docker_engine.docker("inspect", h.native_id, check=False).returncode != 0


def test_rule_image_with_python(backend, docker_engine, docker_python_image, tmp_path):
    # run:/script: rules need python in the image; this one is built once per session (~40 s).
    image = docker_python_image
    s = spec(tmp_path, "py", "python3 -c 'import sys; print(sys.version_info[0])' > major",
             image=image)
    ev = wait_one(backend, backend.submit(s), timeout=120)
    assert ev.state is JobState.SUCCEEDED, (tmp_path / "logs/py.log").read_text()
    assert (tmp_path / "major").read_text() == "3\n"
    assert backend.image_digest(image) != backend.image_digest(docker_engine.busybox_image)


def test_cancel_right_after_submit(backend, docker_engine, tmp_path):
    # The container may not exist yet when cancel comes: it must still die, promptly.
    h = backend.submit(spec(tmp_path, "early", "sleep 60"))
    backend.cancel(h)
    t0 = time.monotonic()
    assert wait_one(backend, h, timeout=30).state is JobState.CANCELLED
    assert time.monotonic() - t0 < 15
