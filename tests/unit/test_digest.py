"""Digests: content decides, the stat cache only saves reads, directories are Merkle trees."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import blake3
import pytest

from flowmake import digest as digest_mod
from flowmake.digest import Digester, StatCache


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Paths actually read by the hashing function, in order."""
    seen: list[str] = []
    real = digest_mod._hash_file

    def counting(path: str, size: int) -> str:
        seen.append(os.path.basename(path))
        return real(path, size)

    monkeypatch.setattr(digest_mod, "_hash_file", counting)
    return seen


@pytest.fixture
def no_racy(monkeypatch: pytest.MonkeyPatch) -> None:
    # Files in tests are always seconds old at most; racy handling is tested on its own.
    monkeypatch.setattr(digest_mod, "RACY_WINDOW_NS", 0)


def write(path: Path, data: bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path)


def test_file_digest_is_truncated_blake3_and_missing_is_none(tmp_path: Path) -> None:
    p = write(tmp_path / "a.txt", b"hello\n")
    d = Digester(StatCache())
    assert d.digest(p) == blake3.blake3(b"hello\n").hexdigest(16)
    assert len(d.digest(p) or "") == 32
    assert d.digest(str(tmp_path / "missing")) is None


def test_unchanged_file_is_never_read_again(tmp_path: Path, reads: list[str], no_racy: None) -> None:
    p = write(tmp_path / "a.txt", b"data")
    cache = StatCache()
    first = Digester(cache).digest(p)
    assert reads == ["a.txt"]
    assert Digester(cache).digest(p) == first  # a later run, same stat cache
    assert reads == ["a.txt"]


def test_touch_rehashes_once_and_keeps_digest(tmp_path: Path, reads: list[str], no_racy: None) -> None:
    p = write(tmp_path / "a.txt", b"data")
    cache = StatCache()
    first = Digester(cache).digest(p)
    os.utime(p, ns=(1_000_000_000, 1_000_000_000))
    assert Digester(cache).digest(p) == first
    assert Digester(cache).digest(p) == first
    assert reads == ["a.txt", "a.txt"]


def test_same_content_rewrite_and_copy_keep_digest(tmp_path: Path, no_racy: None) -> None:
    p = write(tmp_path / "a.txt", b"data")
    cache = StatCache()
    first = Digester(cache).digest(p)
    write(tmp_path / "a.txt", b"data")
    shutil.copy2(p, tmp_path / "b.txt")
    d = Digester(cache)
    assert d.digest(p) == first
    assert d.digest(str(tmp_path / "b.txt")) == first
    write(tmp_path / "a.txt", b"datb")
    assert Digester(cache).digest(p) != first


def test_racy_entry_is_flagged_and_rehashed_once(tmp_path: Path, reads: list[str]) -> None:
    p = write(tmp_path / "a.txt", b"data")  # mtime is "now": within the racy window
    cache = StatCache()
    first = Digester(cache).digest(p)
    assert cache[p][4] == digest_mod.RACY  # stored, but flagged
    digest_mod_window = digest_mod.RACY_WINDOW_NS
    try:
        digest_mod.RACY_WINDOW_NS = 0  # time has passed
        assert Digester(cache).digest(p) == first
        assert Digester(cache).digest(p) == first
    finally:
        digest_mod.RACY_WINDOW_NS = digest_mod_window
    assert reads == ["a.txt", "a.txt"]


def test_settled_files_are_trusted_at_once(tmp_path: Path, reads: list[str]) -> None:
    p = write(tmp_path / "a.txt", b"fresh output of a finished job")
    cache = StatCache()
    first = Digester(cache).digest(p, settled=True)
    assert cache[p][4] != digest_mod.RACY
    assert Digester(cache).digest(p) == first
    assert reads == ["a.txt"]


def test_stat_is_memoised_until_invalidated(tmp_path: Path, no_racy: None) -> None:
    p = write(tmp_path / "a.txt", b"one")
    d = Digester(StatCache())
    first = d.digest(p)
    write(tmp_path / "a.txt", b"two, longer")
    assert d.digest(p) == first  # planning assumes a still tree
    d.invalidate(p)
    assert d.digest(p) != first


def test_changes_are_tracked_for_the_store(tmp_path: Path, no_racy: None) -> None:
    cache = StatCache()
    p = write(tmp_path / "a.txt", b"x")
    Digester(cache).digest(p)
    changes = cache.take_changes()
    assert [c[0] for c in changes] == [p]
    assert cache.take_changes() == []
    Digester(cache).digest(p)
    assert cache.take_changes() == []  # a hit writes nothing


def test_directory_merkle_digest(tmp_path: Path, reads: list[str], no_racy: None) -> None:
    root = tmp_path / "out"
    write(root / "a.txt", b"a")
    write(root / "sub" / "b.txt", b"b")
    cache = StatCache()
    first = Digester(cache).digest(str(root))
    assert sorted(reads) == ["a.txt", "b.txt"]

    os.utime(root / "sub" / "b.txt", ns=(1_000_000_000, 1_000_000_000))
    assert Digester(cache).digest(str(root)) == first  # touch: same digest

    write(root / "sub" / "b.txt", b"B")
    changed = Digester(cache).digest(str(root))
    assert changed != first

    (root / "empty").mkdir()
    with_empty = Digester(cache).digest(str(root))
    assert with_empty != changed  # empty directories count by path

    os.rename(root / "a.txt", root / "c.txt")
    assert Digester(cache).digest(str(root)) != with_empty  # names count


def test_directory_digest_never_equals_a_file_digest(tmp_path: Path, no_racy: None) -> None:
    root = tmp_path / "d"
    root.mkdir()
    d = Digester(StatCache())
    empty = d.digest(str(root))
    assert empty is not None and empty != blake3.blake3(b"").hexdigest(16)


def test_invalidate_refreshes_enclosing_directory(tmp_path: Path, no_racy: None) -> None:
    root = tmp_path / "d"
    write(root / "x" / "f", b"1")
    d = Digester(StatCache())
    first = d.digest(str(root))
    write(root / "x" / "f", b"22")
    d.invalidate(str(root / "x" / "f"))
    assert d.digest(str(root)) != first


def test_large_file_uses_mmap_and_matches(tmp_path: Path, no_racy: None) -> None:
    data = os.urandom(1024) * (9 * 1024 + 1)  # just over 9 MiB > MMAP_THRESHOLD
    p = write(tmp_path / "big.bin", data)
    assert Digester(StatCache()).digest(p) == blake3.blake3(data).hexdigest(16)


def test_invalidate_sees_new_directories_and_is_cheap(tmp_path: Path, no_racy: None) -> None:
    d = Digester(StatCache())
    out = tmp_path / "out"
    assert d.digest(str(out / "x")) is None and d.digest(str(out)) is None
    write(out / "x", b"made by a job")
    d.invalidate(str(out / "x"))
    assert d.digest(str(out / "x")) is not None and d.digest(str(out)) is not None
    for i in range(20_000):  # a big memo must not make each invalidate a full scan
        d._stats[str(tmp_path / f"other{i}")] = None
    start = time.perf_counter()
    for _ in range(2_000):
        d.invalidate(str(out / "x"))
    assert time.perf_counter() - start < 0.5


def test_fifo_is_not_read(tmp_path: Path, reads: list[str], no_racy: None) -> None:
    root = tmp_path / "d"
    write(root / "f", b"x")
    os.mkfifo(root / "pipe")
    d = Digester(StatCache())
    assert d.digest(str(root / "pipe")) is not None
    assert d.digest(str(root)) is not None
    assert reads == ["f"]


def test_deleted_file_leaves_the_stat_cache(tmp_path: Path, no_racy: None) -> None:
    cache = StatCache()
    p = write(tmp_path / "a", b"x")
    Digester(cache).digest(p)
    cache.take_changes()
    os.unlink(p)
    assert Digester(cache).digest(p) is None
    assert p not in cache and cache.take_changes() == [(p, None)]


def test_files_of_a_missing_folder_cost_one_stat_and_appear_once_made(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_racy: None) -> None:
    # A dry-run of a clean tree asks for every output of a folder that does not exist yet.
    monkeypatch.chdir(tmp_path)
    stats: list[str] = []
    real = digest_mod._sys_stat
    monkeypatch.setattr(digest_mod, "_sys_stat", lambda p: stats.append(p) or real(p))
    d = Digester(StatCache())
    assert all(d.digest(f"out/c/{i}.txt") is None for i in range(100))
    assert stats == ["out/c/0.txt", "out/c", "out"]
    os.makedirs("out/c")
    Path("out/c/7.txt").write_text("x")
    d.invalidate("out/c/7.txt")  # what the scheduler does once a job wrote it
    assert d.digest("out/c/7.txt") is not None and d.stat("out/c") is not None
    assert d.digest("out/c/8.txt") is None
