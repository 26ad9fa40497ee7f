"""The cache's manifests, directory store, verified restore and publish (``flowmake.cache``)."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

import pytest

from flowmake.cache import CacheCorrupt, Manifest, Mode, open_cache
from flowmake.digest import Digester, StatCache
from flowmake.errors import CacheError

KEY = "ab" * 32


def _workdir(tmp_path: Path) -> Path:
    wd = tmp_path / "wd"
    (wd / "out" / "tree" / "sub").mkdir(parents=True)
    (wd / "out" / "tree" / "empty").mkdir()
    (wd / "out" / "a.txt").write_text("alpha\n")
    (wd / "out" / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (wd / "out" / "run.sh").chmod(0o755)
    (wd / "out" / "tree" / "sub" / "b.bin").write_bytes(os.urandom(3 << 20))
    os.symlink("sub/b.bin", wd / "out" / "tree" / "link")
    return wd


OUTS = ["out/a.txt", "out/run.sh", "out/tree"]


def _digester(wd: Path) -> Digester:
    d = Digester(StatCache())
    return lambda p: d.digest(os.path.join(wd, p))  # type: ignore[return-value]


def _tree(root: Path) -> dict[str, tuple[str, int]]:
    out = {}
    for base, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(base) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link:" + os.readlink(p), 0)
            elif p.is_dir():
                out[rel] = ("dir", 0)
            else:
                out[rel] = (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mode & 0o777)
    return out


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_published_outputs_restore_byte_identical_with_modes_links_and_empty_folders(tmp_path: Path) -> None:
    wd = _workdir(tmp_path)
    cache = open_cache(f"file://{tmp_path}/cache", Mode.READWRITE)
    pub = cache.publish(KEY, OUTS, str(wd), _digester(wd))
    assert pub.blobs == 3 and pub.bytes == (3 << 20) + 6 + 18
    assert cache.publish(KEY, OUTS, str(wd), _digester(wd)).blobs == 0  # already there: nothing
    other = tmp_path / "clone"
    other.mkdir()
    m = cache.lookup(KEY)
    assert m is not None and set(m.outputs) == set(OUTS)
    got = cache.restore(m, str(other))
    assert got.bytes == pub.bytes and set(got.files) == {"out/a.txt", "out/run.sh", "out/tree/sub/b.bin"}
    assert _tree(other / "out") == _tree(wd / "out")
    assert (other / "out" / "run.sh").stat().st_mode & 0o111
    d = Digester(StatCache())
    for out in OUTS:  # what restoring placed has the digests the manifest claims
        assert d.digest(str(other / out)) == m.outputs[out]
    assert not [p for p in other.rglob("*tmp-*")]


def test_only_the_asked_outputs_are_placed(tmp_path: Path) -> None:
    wd = _workdir(tmp_path)
    cache = open_cache(str(tmp_path / "cache"), Mode.READWRITE)
    cache.publish(KEY, OUTS, str(wd), _digester(wd))
    other = tmp_path / "clone"
    other.mkdir()
    m = cache.lookup(KEY)
    assert m is not None
    cache.restore(m, str(other), ["out/a.txt"])
    assert sorted(str(p.relative_to(other)) for p in other.rglob("*")) == ["out", "out/a.txt"]


@pytest.mark.parametrize("damage", ["flip", "truncate", "missing"])
def test_a_damaged_blob_is_detected_places_nothing_and_is_removed(tmp_path: Path, damage: str) -> None:
    wd = _workdir(tmp_path)
    cache = open_cache(str(tmp_path / "cache"), Mode.READWRITE)
    cache.publish(KEY, OUTS, str(wd), _digester(wd))
    m = cache.lookup(KEY)
    assert m is not None
    blob = next(tmp_path.joinpath("cache", "cas").rglob(m.outputs["out/a.txt"]))
    blob.chmod(0o644)
    if damage == "flip":
        blob.write_text("alphA\n")
    elif damage == "truncate":
        blob.write_text("alp")
    else:
        blob.unlink()
    other = tmp_path / "clone"
    other.mkdir()
    (other / "out").mkdir()
    (other / "out" / "a.txt").write_text("what was there\n")
    with pytest.raises(CacheCorrupt) as err:
        cache.restore(m, str(other), ["out/a.txt"])
    assert err.value.path == "out/a.txt"
    assert (other / "out" / "a.txt").read_text() == "what was there\n"
    assert [p.name for p in (other / "out").iterdir()] == ["a.txt"]
    assert not blob.exists()  # a writable directory cache drops it, so a publisher replaces it


def _hostile(tmp_path: Path, body: dict) -> Path:
    cache_dir = tmp_path / "cache"
    (cache_dir / "ac").mkdir(parents=True, exist_ok=True)
    base = {"version": 1, "key": KEY, "outputs": {}, "files": [], "links": [], "dirs": []}
    base.update(body)
    (cache_dir / "ac" / f"{KEY}.json").write_text(json.dumps(base))
    return cache_dir


D = "0" * 32


@pytest.mark.parametrize("body", [
    {"outputs": {"../escape": D}, "files": [["../escape", D, 1, 0o644]]},
    {"outputs": {"/etc/escape": D}, "files": [["/etc/escape", D, 1, 0o644]]},
    {"outputs": {"out/x": D}, "files": [["out/x/../../../escape", D, 1, 0o644]]},
    {"outputs": {"out": D}, "links": [["out/l", "../.."]], "files": [["out/l/escape", D, 1, 0o644]]},
    {"outputs": {"out": D}, "links": [["out/l", "/etc"]]},
    {"outputs": {"out/a": D}, "files": [["elsewhere", D, 1, 0o644]]},
    {"outputs": {"out": D}, "files": [["out/f", D, 1, 0o644]]},  # the listing does not add up
    {"outputs": {"out/a": "not-a-digest"}},
])
def test_a_hostile_or_broken_manifest_is_a_miss(tmp_path: Path, body: dict) -> None:
    cache = open_cache(str(_hostile(tmp_path, body)), Mode.READ)
    assert cache.lookup(KEY) is None
    assert cache.warnings and "ignored" in cache.warnings[0]


def test_read_only_never_writes(tmp_path: Path) -> None:
    wd = _workdir(tmp_path)
    rw = open_cache(str(tmp_path / "cache"), Mode.READWRITE)
    rw.publish(KEY, ["out/a.txt"], str(wd), _digester(wd))
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (tmp_path / "cache").rglob("*") if p.is_file()}
    ro = open_cache(str(tmp_path / "cache"), Mode.READ)
    assert ro.publish("cd" * 32, OUTS, str(wd), _digester(wd)).blobs == 0
    m = ro.lookup(KEY)
    assert m is not None
    ro.restore(m, str(tmp_path))
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (tmp_path / "cache").rglob("*") if p.is_file()}
    assert after == before


def test_concurrent_publishers_of_one_key_leave_a_whole_entry(tmp_path: Path) -> None:
    wd = _workdir(tmp_path)
    errors: list[BaseException] = []

    def publish() -> None:
        try:
            open_cache(str(tmp_path / "cache"), Mode.READWRITE).publish(KEY, OUTS, str(wd), _digester(wd))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=publish) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    m = open_cache(str(tmp_path / "cache"), Mode.READ).lookup(KEY)
    assert m is not None
    other = tmp_path / "clone"
    other.mkdir()
    open_cache(str(tmp_path / "cache"), Mode.READ).restore(m, str(other))
    assert _snapshot(other / "out") == _snapshot(wd / "out")


def test_write_mode_never_restores_and_a_bad_url_is_a_typed_error(tmp_path: Path) -> None:
    wd = _workdir(tmp_path)
    w = open_cache(str(tmp_path / "cache"), Mode.WRITE)
    w.publish(KEY, OUTS, str(wd), _digester(wd))
    assert w.lookup(KEY) is None
    with pytest.raises(CacheError, match="only file:// and s3://"):
        open_cache("gs://bucket", Mode.READ)
    assert Manifest.decode(open_cache(str(tmp_path / "cache"), Mode.READ).store.read_manifest(KEY) or b"", KEY).size > 0
