"""The shared cache's stores for the tests: a directory, moto's S3 and rclone's S3, each as a
``Backend`` (its URL, and ways to damage and inspect it behind the store's back).

``backend`` is a fixture parametrized over the three, ``s3`` over the two servers (both carry the
``s3`` marker; their servers start once per session). Import the fixtures, and ``s3_server`` and
``rclone_server``, into the test module.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from flowmake.cache import Cache, Mode, open_cache
from flowmake.digest import Digester, StatCache
from tests.services.rclone import RcloneServer
from tests.services.s3 import S3Server


@dataclass
class Backend:
    name: str
    url: str
    endpoint: str | None
    put_blob: Callable[[str, bytes], None]  # replace (or create) a blob's bytes behind the store
    drop_blob: Callable[[str], None]
    content: Callable[[], dict[str, bytes]]  # every object the store holds, by name
    writes: Callable[[], list[str]]  # write requests the server answered so far (S3)

    def open(self, mode: Mode) -> Cache:
        return open_cache(self.url, mode, endpoint_url=self.endpoint)


def blob_name(digest: str) -> str:
    return f"cas/{digest[:2]}/{digest}"


def dir_backend(root: Path) -> Backend:
    def put(digest: str, data: bytes) -> None:
        p = root / blob_name(digest)
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.exists():
            p.chmod(0o644)
        p.write_bytes(data)

    def content() -> dict[str, bytes]:  # mtimes too: gc's order lives in them
        return {f"{p.relative_to(root)}@{p.stat().st_mtime_ns}": p.read_bytes()
                for p in root.rglob("*") if p.is_file()}

    return Backend("dir", f"file://{root}", None, put, lambda d: (root / blob_name(d)).unlink(),
                   content, lambda: [])


def s3_backend(name: str, server: S3Server | RcloneServer, monkeypatch: pytest.MonkeyPatch) -> Backend:
    for k, v in server.env().items():
        monkeypatch.setenv(k, v)
    bucket, prefix = server.bucket(), "team/cache/"
    client = server.client()

    def content() -> dict[str, bytes]:
        out = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", ()):
                out[f"{obj['Key']}@{obj['LastModified']}"] = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
        return out

    def writes() -> list[str]:
        if isinstance(server, S3Server):
            return [f"{r.method} {r.key}" for r in server.requests
                    if r.bucket == bucket and r.method in ("PUT", "POST", "DELETE")]
        return server.writes(bucket)

    made = len(writes())  # creating the bucket is the test's doing, not the store's
    return Backend(
        name, f"s3://{bucket}/{prefix}", server.endpoint,
        lambda d, data: client.put_object(Bucket=bucket, Key=prefix + blob_name(d), Body=data),
        lambda d: client.delete_object(Bucket=bucket, Key=prefix + blob_name(d)),
        content, lambda: writes()[made:])


@pytest.fixture(params=["dir", pytest.param("moto", marks=pytest.mark.s3),
                        pytest.param("rclone", marks=pytest.mark.s3)])
def backend(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Backend:
    if request.param == "dir":
        return dir_backend(tmp_path / "cache")
    server = request.getfixturevalue("s3_server" if request.param == "moto" else "rclone_server")
    return s3_backend(request.param, server, monkeypatch)


@pytest.fixture(params=[pytest.param("moto", marks=pytest.mark.s3),
                        pytest.param("rclone", marks=pytest.mark.s3)])
def s3(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Backend:
    server = request.getfixturevalue("s3_server" if request.param == "moto" else "rclone_server")
    return s3_backend(request.param, server, monkeypatch)


def workdir(tmp_path: Path, name: str = "wd") -> Path:
    wd = tmp_path / name
    (wd / "out" / "tree" / "sub").mkdir(parents=True)
    (wd / "out" / "tree" / "empty").mkdir()
    (wd / "out" / "a.txt").write_text("alpha\n")
    (wd / "out" / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (wd / "out" / "run.sh").chmod(0o755)
    (wd / "out" / "tree" / "sub" / "b.bin").write_bytes(os.urandom(300_000))
    os.symlink("sub/b.bin", wd / "out" / "tree" / "link")
    return wd


def digests(wd: Path) -> Callable[[str], str | None]:
    d = Digester(StatCache())
    return lambda p: d.digest(os.path.join(wd, p))


def tree(root: Path) -> dict[str, tuple[str, int]]:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = ("link:" + os.readlink(p), 0)
        elif p.is_dir():
            out[rel] = ("dir", 0)
        else:
            out[rel] = (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mode & 0o777)
    return out
