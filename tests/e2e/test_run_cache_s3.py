"""The shared cache in S3 end to end: two clones of a workflow, one bucket, ``python -m flowmake``.

Run against moto and against ``rclone serve s3`` (which ignores ``IfNoneMatch``). The cache is
configured as a lab would: ``[cache]`` in each clone's flowmake.toml with ``url`` and
``endpoint_url``; credentials come from the environment only (the standard chain).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from flowmake.digest import Digester, StatCache
from tests.cache_stores import Backend, s3  # noqa: F401  # the fixture
from tests.e2e.test_run_cache import clone, ran
from tests.services.rclone import rclone_server  # noqa: F401  # the fixture
from tests.services.s3 import SECRET_KEY, s3_server  # noqa: F401  # the fixture

pytestmark = pytest.mark.s3


def _configure(root: Path, s3: Backend, mode: str = "readwrite") -> None:
    (root / "flowmake.toml").write_text(
        f'[cache]\nurl = "{s3.url}"\nendpoint_url = "{s3.endpoint}"\nmode = "{mode}"\n')


def test_a_second_clone_restores_everything_from_s3(tmp_path: Path, s3: Backend) -> None:
    first, second = clone(tmp_path, "alice"), clone(tmp_path, "bob")
    _configure(first.root, s3)
    _configure(second.root, s3)
    err = first.ok("-c", "1")
    assert ran(first) == ["a", "b", "c"] and "3 published to the cache" in err
    err = second.ok("-c", "1")
    assert ran(second) == [] and "0 steps ran, 3 steps restored from the cache" in err
    for name in ("a.txt", "b.sh", "c.txt", "logs/c.log"):
        assert (second.root / name).read_bytes() == (first.root / name).read_bytes(), name
    assert os.stat(second.root / "b.sh").st_mode & stat.S_IXUSR
    assert SECRET_KEY not in err


def test_a_blob_damaged_in_s3_reruns_its_step_and_nothing_damaged_lands(tmp_path: Path, s3: Backend) -> None:
    first, second = clone(tmp_path, "alice"), clone(tmp_path, "bob")
    _configure(first.root, s3)
    _configure(second.root, s3)
    first.ok("-c", "1")
    digest = Digester(StatCache()).digest(str(first.root / "b.sh"))
    assert digest is not None
    s3.put_blob(digest, b"#!/bin/sh\nrm -rf everything\n")
    second.ok("-c", "1")
    assert "b" in ran(second)
    for name in ("a.txt", "b.sh", "c.txt"):
        assert (second.root / name).read_bytes() == (first.root / name).read_bytes(), name


def test_read_only_runs_write_nothing_to_s3(tmp_path: Path, s3: Backend) -> None:
    first, second = clone(tmp_path, "alice"), clone(tmp_path, "bob")
    _configure(first.root, s3)
    first.ok("-c", "1")
    held, sent = s3.content(), s3.writes()
    _configure(second.root, s3, mode="read")
    second.file("in.txt", "another input\n")  # everything runs: nothing in the cache fits
    second.ok("-c", "1")
    assert ran(second) == ["a", "b", "c"]
    second.file("in.txt", "hello\n")  # now everything is in the cache: restored, never touched
    err = second.ok("-c", "1")
    assert "3 steps restored from the cache" in err
    assert s3.content() == held and s3.writes() == sent
