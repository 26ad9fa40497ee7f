"""``flowmake cache stats`` and ``flowmake cache gc``, on a directory, moto's S3 and rclone's S3."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from flowmake import cache_admin, cache_s3
from flowmake.cache import Cache, Mode
from flowmake.cache_admin import gc, listing, stats
from tests.cache_stores import Backend, backend, digests, s3, tree, workdir  # noqa: F401  # fixtures
from tests.services.rclone import rclone_server  # noqa: F401  # the fixture
from tests.services.s3 import s3_server  # noqa: F401  # the fixture

OUTS = ["out/a.txt", "out/run.sh", "out/tree"]
KEYS = [c * 64 for c in "123"]


def _publish(backend: Backend, tmp_path: Path, key: str, ordered: bool = False) -> Path:
    """An entry of its own (a random 300 kB blob) that shares a.txt and run.sh with the others.
    ``ordered``: the next write is seen as later (moto's Last-Modified, as S3's, is in seconds)."""
    wd = workdir(tmp_path, f"wd-{key[:4]}")
    backend.open(Mode.READWRITE).publish(key, OUTS, str(wd), digests(wd))
    if ordered:
        time.sleep(1.05 if backend.name == "moto" else 0.05)
    return wd


def _restores(cache: Cache, key: str, wd: Path, tmp_path: Path) -> bool:
    m = cache.lookup(key)
    if m is None:
        return False
    clone = tmp_path / f"clone-{key[:4]}-{time.monotonic_ns()}"
    clone.mkdir()
    cache.restore(m, str(clone))
    return tree(clone / "out") == tree(wd / "out")


def test_stats_counts_entries_blobs_and_bytes(backend: Backend, tmp_path: Path) -> None:
    for key in KEYS[:2]:
        _publish(backend, tmp_path, key)
    got = stats(listing(backend.open(Mode.READ).store))  # type: ignore[arg-type]
    held = {name.rsplit("@", 1)[0]: data for name, data in backend.content().items()}
    assert (got.entries, got.blobs) == (2, 4)  # a.txt and run.sh are shared
    assert got.bytes == sum(len(d) for d in held.values())
    assert str(got).startswith("2 entries, 4 blobs, 60") and str(got).endswith(" kB")


def test_gc_drops_the_least_recently_used_entries_then_their_blobs(
        backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wds = {key: _publish(backend, tmp_path, key, ordered=True) for key in KEYS}
    monkeypatch.setattr(cache_s3, "REFRESH_SECONDS", 0)  # S3 refreshes a day-old entry on a hit
    rw = backend.open(Mode.READWRITE)
    assert rw.lookup(KEYS[0]) is not None  # a hit: the oldest entry becomes the newest
    where = listing(rw.store)  # type: ignore[arg-type]
    before = stats(where)
    done = gc(where, before.bytes - 1, min_age=0)  # room for two entries
    assert (done.entries, done.blobs) == (1, 1)
    ro = backend.open(Mode.READ)
    assert ro.lookup(KEYS[1]) is None
    assert _restores(ro, KEYS[0], wds[KEYS[0]], tmp_path)
    assert _restores(ro, KEYS[2], wds[KEYS[2]], tmp_path)
    assert (done.kept.entries, done.kept.blobs) == (2, 4)
    assert done.kept.bytes == before.bytes - done.bytes < before.bytes - 300_000


def test_gc_under_the_size_removes_only_what_no_entry_names(backend: Backend, tmp_path: Path) -> None:
    wd = _publish(backend, tmp_path, KEYS[0])
    stray = b"left by a publisher that died before its manifest\n"
    backend.put_blob("f" * 32, stray)
    where = listing(backend.open(Mode.READWRITE).store)  # type: ignore[arg-type]
    done = gc(where, 10**12, min_age=0)
    assert (done.entries, done.blobs, done.bytes) == (0, 1, len(stray))
    assert _restores(backend.open(Mode.READ), KEYS[0], wd, tmp_path)


def test_gc_removes_nothing_younger_than_min_age(backend: Backend, tmp_path: Path) -> None:
    _publish(backend, tmp_path, KEYS[0])
    backend.put_blob("f" * 32, b"a publisher's first blob: its manifest is still to come\n")
    where = listing(backend.open(Mode.READWRITE).store)  # type: ignore[arg-type]
    done = gc(where, 0, min_age=3600)
    # The entry goes (the store is above 0 B); none of the blobs does: all are young.
    assert (done.entries, done.blobs, done.young) == (1, 0, 4)
    assert backend.open(Mode.READ).store.has_blob("f" * 32)


def test_gc_removes_entries_that_could_only_be_misses(backend: Backend, tmp_path: Path) -> None:
    wd = _publish(backend, tmp_path, KEYS[0])
    broken_wd = _publish(backend, tmp_path, KEYS[1])
    rw = backend.open(Mode.READWRITE)
    m = rw.lookup(KEYS[1])
    assert m is not None
    backend.drop_blob(m.files[[f.path for f in m.files].index("out/tree/sub/b.bin")].digest)
    rw.store.write_manifest(KEYS[2], b"not a manifest")
    done = gc(listing(rw.store), 10**12, min_age=0)  # type: ignore[arg-type]
    assert done.entries == 2
    assert rw.lookup(KEYS[1]) is None and rw.store.read_manifest(KEYS[2]) is None
    assert _restores(rw, KEYS[0], wd, tmp_path)
    assert broken_wd.exists()


def test_gc_while_publishing_leaves_only_whole_entries(backend: Backend, tmp_path: Path) -> None:
    keys = [f"{i:02d}" * 32 for i in range(6)]
    wds = {k: workdir(tmp_path, f"p{k[:2]}") for k in keys}
    errors: list[BaseException] = []

    def publish() -> None:
        try:
            for k in keys:
                backend.open(Mode.READWRITE).publish(k, OUTS, str(wds[k]), digests(wds[k]))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    if backend.name == "dir":
        Path(backend.url[len("file://"):]).mkdir()
    t = threading.Thread(target=publish)
    t.start()
    where = listing(backend.open(Mode.READWRITE).store)  # type: ignore[arg-type]
    while t.is_alive():
        gc(where, 0, min_age=3600)
    t.join()
    assert errors == []
    ro = backend.open(Mode.READ)
    for k in keys:  # whatever gc left restores whole
        m = ro.lookup(k)
        if m is not None:
            assert _restores(ro, k, wds[k], tmp_path)


def _cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "flowmake", "cache", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, cwd=cwd, timeout=60)


def test_the_commands_on_a_directory_cache(tmp_path: Path) -> None:
    from tests.cache_stores import dir_backend

    b = dir_backend(tmp_path / "cache")
    _publish(b, tmp_path, KEYS[0])
    url = f"file://{tmp_path / 'cache'}"
    got = _cli("stats", "--cache", url)
    assert got.returncode == 0 and got.stderr == ""
    assert got.stdout == f"cache {url}: 1 entry, 3 blobs, {cache_admin.human_bytes(stats(listing(b.open(Mode.READ).store)).bytes)}\n"  # type: ignore[arg-type]
    got = _cli("gc", "--cache", url, "--max-size", "0", "--min-age", "0")
    assert got.returncode == 0, got.stderr
    assert got.stdout.startswith(f"cache {url}: removed 1 entry and 3 blobs (30") and got.stdout.endswith(
        "now 0 entries, 0 blobs, 0 B\n")
    got = _cli("gc", "--cache", url, "--max-size", "lots")
    assert (got.returncode, got.stderr) == (2, "usage error: 'lots' is not a size (e.g. 500MB, 4GB, 1.5GiB)\n")
    got = _cli("stats", cwd=tmp_path)
    assert got.returncode == 2 and got.stderr.startswith("usage error: no cache to look at\n")
    (tmp_path / "lab").mkdir()
    (tmp_path / "lab" / "flowmake.toml").write_text(f'[cache]\nurl = "{url}"\nmode = "read"\n')
    for args, cwd in ((("stats",), tmp_path / "lab"), (("stats", "-d", "lab"), tmp_path)):
        got = _cli(*args, cwd=cwd)  # [cache] url of flowmake.toml, here or in -d DIR
        assert (got.returncode, got.stdout) == (0, f"cache {url}: 0 entries, 0 blobs, 0 B\n"), got.stderr


def test_the_commands_on_s3_and_their_errors(s3: Backend, tmp_path: Path) -> None:
    _publish(s3, tmp_path, KEYS[0])
    env = {k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    endpoint = s3.endpoint or ""
    got = _cli("stats", "--cache", s3.url, "--endpoint-url", endpoint, env=env)
    assert got.returncode == 0, got.stderr
    assert got.stdout.startswith(f"cache {s3.url.rstrip('/')}: 1 entry, 3 blobs, 30")
    got = _cli("gc", "--cache", s3.url, "--endpoint-url", endpoint, "--max-size", "50G", env=env)
    assert got.returncode == 0 and "removed 0 entries and 0 blobs (0 B)" in got.stdout
    got = _cli("stats", "--cache", "s3://no-such-bucket/x", "--endpoint-url", endpoint, env=env)
    assert got.returncode == 2 and "Traceback" not in got.stderr
    assert got.stderr.startswith("cache error: cannot list s3://no-such-bucket/x/ac/: no bucket")


def test_gc_on_a_directory_ages_blobs_by_mtime_and_clears_dead_publishers_leftovers(tmp_path: Path) -> None:
    from tests.cache_stores import dir_backend

    root = tmp_path / "cache"
    b = dir_backend(root)
    wd = _publish(b, tmp_path, KEYS[0])
    hour_ago = time.time() - 3700
    stray, young = "e" * 32, "f" * 32
    for d in (stray, young):
        b.put_blob(d, b"no manifest names this\n")
    os.utime(root / "cas" / stray[:2] / stray, (hour_ago, hour_ago))
    dead = root / "cas" / "ee" / f"{stray}.tmp-0123456789ab"  # a publisher killed mid-copy
    dead.write_bytes(b"half")
    os.utime(dead, (hour_ago, hour_ago))
    fresh = root / "ac" / f"{KEYS[1]}.json.tmp-0123456789ab"  # one writing right now
    fresh.write_bytes(b"{")
    done = gc(listing(b.open(Mode.READWRITE).store), 10**12, min_age=3600)  # type: ignore[arg-type]
    assert (done.entries, done.blobs, done.young, done.leftovers) == (0, 1, 1, 1)
    assert not (root / "cas" / stray[:2] / stray).exists() and not dead.exists()
    assert (root / "cas" / young[:2] / young).exists() and fresh.exists()
    assert _restores(b.open(Mode.READ), KEYS[0], wd, tmp_path)
