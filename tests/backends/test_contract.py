"""One contract, every backend: the same workflows through `flowmake` on local, docker, ssh, slurm and spot.

Each test runs the real CLI in a workdir whose flowmake.toml selects the backend; the services
behind docker, ssh and slurm are the real ones the session fixtures start.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest

BACKENDS = [
    "local",
    pytest.param("docker", marks=[pytest.mark.docker, pytest.mark.slow]),
    pytest.param("ssh", marks=[pytest.mark.ssh, pytest.mark.slow]),
    pytest.param("slurm", marks=[pytest.mark.slurm, pytest.mark.slow]),
    pytest.param("spot", marks=[pytest.mark.spot, pytest.mark.slow]),
]


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):  # an inline table, e.g. the spot backend's prices
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_value(x)}" for k, x in v.items()) + "}"
    return json.dumps(str(v))


@dataclass
class Backend:
    name: str
    settings: dict[str, Any]
    root: Path  # where workdirs go: a filesystem every host of the backend sees
    env: dict[str, str] = field(default_factory=dict)
    image: str | None = None  # an image rules may name in container:

    def workdir(self, label: str) -> Path:
        d = self.root / f"{label}-{os.getpid()}-{time.monotonic_ns()}"
        d.mkdir(parents=True)
        lines = [f'backend = "{self.name}"', "", f"[backends.{self.name}]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in self.settings.items()]
        (d / "flowmake.toml").write_text("\n".join(lines) + "\n")
        return d

    def run(self, wd: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "flowmake", "-c", "2", *args], cwd=wd, text=True,
                              capture_output=True, timeout=timeout, env={**os.environ, **self.env})

    def popen(self, wd: Path, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "flowmake", "-c", "2", *args], cwd=wd, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **self.env})


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    name = request.param
    if name == "local":
        yield Backend("local", {}, tmp_path)
    elif name == "docker":
        engine = request.getfixturevalue("docker_engine")
        yield Backend("docker", {"image": engine.busybox_image}, tmp_path, {"DOCKER_HOST": engine.host},
                      image=engine.busybox_image)
    elif name == "ssh":
        hosts = request.getfixturevalue("ssh_hosts")
        shared = [h.name for h in hosts.hosts if not h.private]
        root = hosts.fs / "contract"
        root.mkdir(parents=True, exist_ok=True)
        yield Backend("ssh", hosts.settings(*shared, shared_fs=True, slots=2), root)
    elif name == "spot":
        # Instances that share the test's filesystem (an EFS-like shared_fs), so the contract's
        # probes of the workdir see what a running job wrote; staging is test_spot.py's.
        lab = request.getfixturevalue("ec2_lab")
        lab.private = False
        root = lab.fs / "contract"
        root.mkdir(parents=True, exist_ok=True)
        try:
            yield Backend("spot", lab.settings(shared_fs=True, idle_timeout=5), root, lab.env())
        finally:
            lab.private = True
        assert lab.alive_instances() == [], "the spot backend left instances running"
    else:
        cluster = request.getfixturevalue("slurm_cluster")
        yield Backend("slurm", cluster.settings(), tmp_path, {"SLURM_CONF": str(cluster.conf)})


def write(wd: Path, text: str) -> None:
    (wd / "Flowfile").write_text(textwrap.dedent(text).lstrip())


def assert_ok(res: subprocess.CompletedProcess[str]) -> None:
    assert res.returncode == 0, f"exit {res.returncode}\n--- stdout\n{res.stdout}\n--- stderr\n{res.stderr}"


PIPELINE = """
rule all:
    input: "out/sum.txt"

rule square:
    input: "in/{n}.txt"
    output: "out/{n}.sq"
    params: factor=2
    threads: 1
    shell: "echo $(( $(cat {input}) * $(cat {input}) * {params.factor} )) > {output}; echo squared {wildcards.n}"

rule total:
    input: expand("out/{n}.sq", n=[1, 2, 3])
    output: "out/sum.txt"
    shell: "cat {input} | awk '{{s += $1}} END {{print s}}' > {output}"
"""


def test_outputs_and_noop(backend: Backend) -> None:
    wd = backend.workdir("outputs")
    write(wd, PIPELINE)
    for n in (1, 2, 3):
        (wd / "in").mkdir(exist_ok=True)
        (wd / "in" / f"{n}.txt").write_text(f"{n}\n")
    assert_ok(backend.run(wd))
    assert (wd / "out" / "sum.txt").read_text() == "28\n"
    res = backend.run(wd, "-n", "--json")
    assert_ok(res)
    assert json.loads(res.stdout) == {"steps": []}


def test_logs_capture_job_output(backend: Backend) -> None:
    wd = backend.workdir("logs")
    write(wd, PIPELINE)
    (wd / "in").mkdir()
    for n in (1, 2, 3):
        (wd / "in" / f"{n}.txt").write_text(f"{n}\n")
    assert_ok(backend.run(wd))
    logs = list((wd / ".flowmake" / "logs" / "square").glob("*.log"))
    assert logs and any("squared 2" in p.read_text() for p in logs)


def test_failure_removes_outputs_keeps_log_and_exits_1(backend: Backend) -> None:
    wd = backend.workdir("failure")
    write(wd, """
        rule bad:
            output: "bad.txt"
            shell: "echo partial > {output}; echo 'something broke' >&2; exit 3"
    """)
    res = backend.run(wd)
    assert res.returncode == 1, res.stderr
    assert "bad:bad.txt: exit code 3" in res.stderr
    assert "something broke" in res.stderr  # the log's tail is shown
    assert not (wd / "bad.txt").exists()
    logs = list((wd / ".flowmake" / "logs" / "bad").glob("*.log"))
    assert logs and "something broke" in logs[0].read_text()


def test_retries(backend: Backend) -> None:
    wd = backend.workdir("retries")
    write(wd, """
        rule flaky:
            output: "ok.txt"
            retries: 2
            shell: "if [ -e tried ]; then echo ok > {output}; else touch tried; exit 1; fi"
    """)
    res = backend.run(wd)
    assert_ok(res)
    assert (wd / "ok.txt").read_text() == "ok\n"
    assert "retry 1 of 2" in res.stderr


def test_cancel_on_ctrl_c(backend: Backend) -> None:
    wd = backend.workdir("cancel")
    write(wd, """
        rule slow:
            output: "slow.txt"
            shell: "echo started > started.txt; echo partial > {output}; sleep 60; echo done >> {output}"
    """)
    proc = backend.popen(wd)
    deadline = time.monotonic() + 60
    while not (wd / "started.txt").exists():
        assert time.monotonic() < deadline, "the job never started"
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert not (wd / "slow.txt").exists()
    time.sleep(1.5)
    assert not (wd / "slow.txt").exists(), "a cancelled job kept running and wrote its output"


def test_resources_reach_the_job(backend: Backend) -> None:
    if backend.name in ("local", "ssh", "spot"):
        pytest.skip(f"{backend.name} runs jobs as plain processes: threads and mem_mb only limit scheduling")
    wd = backend.workdir("resources")
    probe = ("cat /sys/fs/cgroup/cpu.max /sys/fs/cgroup/memory.max 2>/dev/null || "
             "cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/memory/memory.limit_in_bytes")
    if backend.name == "slurm":
        probe = "echo $SLURM_CPUS_PER_TASK $SLURM_MEM_PER_NODE"
    write(wd, f"""
        rule probe:
            output: "res.txt"
            threads: 2
            resources: mem_mb=100
            shell: "{{{{ {probe}; }}}} > {{output}}"
    """)
    assert_ok(backend.run(wd))
    text = (wd / "res.txt").read_text().split()
    if backend.name == "slurm":
        assert text == ["2", "100"]
    else:
        assert text[0] == "200000" and text[-1] == str(100 * 1024 * 1024)


@pytest.mark.docker
@pytest.mark.slow
def test_container_rule_runs_in_its_image_on_docker(docker_engine: Any, tmp_path: Path) -> None:
    be = Backend("docker", {}, tmp_path, {"DOCKER_HOST": docker_engine.host})
    wd = be.workdir("container")
    write(wd, f"""
        rule inside:
            output: "where.txt"
            container: "{docker_engine.busybox_image}"
            shell: "ls /bin/busybox > {{output}}; id -u >> {{output}}"
    """)
    assert_ok(be.run(wd))
    lines = (wd / "where.txt").read_text().split()
    assert lines == ["/bin/busybox", str(os.getuid())]
    assert (wd / "where.txt").stat().st_uid == os.getuid()
    # The image is part of the step key: the same rule is up to date, and -n --why shows the digest.
    res = be.run(wd, "-n", "--json")
    assert_ok(res)
    assert json.loads(res.stdout) == {"steps": []}


REPO = Path(__file__).resolve().parents[2]


def _example_into(wd: Path) -> None:
    import shutil

    shutil.copy(REPO / "Flowfile.example", wd / "Flowfile")
    shutil.copytree(REPO / "example", wd / "example", ignore=shutil.ignore_patterns("out"))


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and "logs" not in p.parts}


@pytest.mark.slow
@pytest.mark.parametrize("backend", [pytest.param("ssh", marks=pytest.mark.ssh),
                                     pytest.param("slurm", marks=pytest.mark.slurm),
                                     pytest.param("spot", marks=pytest.mark.spot)], indirect=True)
def test_example_end_to_end_matches_local(backend: Backend, tmp_path: Path) -> None:
    local = Backend("local", {}, tmp_path / "local")
    (tmp_path / "local").mkdir()
    ref = local.workdir("example")
    _example_into(ref)
    assert_ok(local.run(ref))
    wd = backend.workdir("example")
    _example_into(wd)
    assert_ok(backend.run(wd))
    assert _tree(wd / "example" / "out") == _tree(ref / "example" / "out")
