"""Real services for the backend tests: started and stopped by the tests, all state in a temp dir.

Each ``start_*`` function either returns a running service or raises ``ServiceUnavailable`` with a
reason. The fixtures in ``tests/backends/conftest.py`` turn that into a skip that prints the reason,
or, under ``CI=true``, into a failure: in CI a missing service is a broken machine, not a pass.

- ``docker.start_docker(dir) -> DockerEngine``: ``.host`` (a DOCKER_HOST value), ``.env()``,
  ``.docker(*args)``, ``.inspect(name)``, ``.busybox_image``, ``.python_image()``, ``.stop()``.
- ``ssh.start_ssh_hosts(dir, n=3, private=(2,), block=0) -> SshHosts`` (hosts fmhost0.. in network
  namespaces) or ``ssh.start_sshd_local(dir)`` (one sshd on 127.0.0.1): ``.hosts``, ``.host(name)``,
  ``.settings(*names, **extra)`` (ready ``[backends.ssh]`` settings), ``.fs`` (put workdirs here),
  ``.identity_file``, ``.known_hosts``, ``.host_keys``, ``.kill(name)``, ``.stop()``.
- ``slurm.start_slurm(dir) -> SlurmCluster``: ``.conf``, ``.env()`` (SLURM_CONF),
  ``.settings(**extra)`` (ready ``[backends.slurm]`` settings), ``.cmd(*args)``, ``.stop()``.
- ``s3.s3_server`` (a session fixture: moto's S3 on 127.0.0.1, a free port) -> ``S3Server``:
  ``.endpoint``, ``.env()``, ``.client()``, ``.bucket()``, ``.requests`` / ``.count(...)``.
- ``rclone.rclone_server`` (a session fixture: ``rclone serve s3`` on 127.0.0.1, a second S3
  implementation) -> ``RcloneServer``: ``.endpoint``, ``.env()``, ``.client()``, ``.bucket()``,
  ``.root`` (the folder it serves), ``.requests()`` / ``.writes(bucket)`` (from its debug log).
- ``ec2.start_ec2_lab(dir) -> Ec2Lab`` (the ``ec2_lab`` session fixture): moto's EC2 on 127.0.0.1
  whose instances boot as sshd hosts in network namespaces (10.214.0.0/24): ``.settings(**extra)``
  (ready ``[backends.spot]`` settings), ``.env()``, ``.client()``, ``.refuse(type=, spot=)`` /
  ``.allow()``, ``.interrupt(id)``, ``.processes(id)``, ``.instances()``, ``.calls``, ``.peak``.
- ``jobs.spec(...)``, ``jobs.wait_one(backend, handle)``, ``jobs.wait_for(backend, handles)``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, Sequence


class ServiceUnavailable(Exception):
    """The service cannot run here (no root, missing binary, no namespaces, ...)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise ServiceUnavailable(f"{what} needs root (run scripts/install-services.sh as root)")


def require_binaries(what: str, names: Sequence[str]) -> dict[str, str]:
    """Absolute paths of the binaries, or ServiceUnavailable naming the missing ones."""
    found: dict[str, str] = {}
    missing = []
    for name in names:
        # sbin is not on every PATH (non-login shells, CI runners).
        candidates = [f"{d}/{name}" for d in ("/usr/sbin", "/sbin", "/usr/bin")]
        path = shutil.which(name) or next((p for p in candidates if os.access(p, os.X_OK)), None)
        if path:
            found[name] = path
        else:
            missing.append(name)
    if missing:
        raise ServiceUnavailable(
            f"{what}: missing {', '.join(missing)} (run scripts/install-services.sh)"
        )
    return found


def free_port() -> int:
    # Bind-and-release: racy in theory, fine for tests that start the service right away.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check: Callable[[], bool], timeout: float, what: str,
               log: Path | None = None) -> None:
    """Poll ``check`` until true; ServiceUnavailable with the log's tail when it never is."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:  # a service that is still starting refuses in many ways
            pass
        time.sleep(0.05)
    raise ServiceUnavailable(f"{what} not ready after {timeout:.0f}s{log_tail(log)}")


def log_tail(log: Path | None, lines: int = 15) -> str:
    if log is None or not log.exists():
        return ""
    text = log.read_text(errors="replace").splitlines()[-lines:]
    return "\n  " + "\n  ".join(text)


def run(cmd: Sequence[str], **kw) -> subprocess.CompletedProcess:
    """Run a setup command; its failure is ServiceUnavailable with the command's output."""
    proc = subprocess.run(list(cmd), capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        raise ServiceUnavailable(
            f"{' '.join(cmd)} failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()}"
        )
    return proc


def stop_process(proc: subprocess.Popen | None, grace: float = 5.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
