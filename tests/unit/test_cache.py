"""What ``flowmake.cache`` decides whatever the store: which manifests it trusts, which outputs a
restore places, what each mode allows. (Publishing, restoring, damage, concurrency and read-only
on every store: ``test_cache_store.py``.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flowmake.cache import Manifest, Mode, open_cache
from flowmake.digest import Digester, StatCache
from flowmake.errors import CacheError
from tests.cache_stores import digests, workdir

KEY = "ab" * 32
OUTS = ["out/a.txt", "out/run.sh", "out/tree"]


def test_only_the_asked_outputs_are_placed_and_they_have_the_claimed_digests(tmp_path: Path) -> None:
    wd = workdir(tmp_path)
    cache = open_cache(str(tmp_path / "cache"), Mode.READWRITE)
    cache.publish(KEY, OUTS, str(wd), digests(wd))
    other = tmp_path / "clone"
    other.mkdir()
    m = cache.lookup(KEY)
    assert m is not None
    got = cache.restore(m, str(other), ["out/a.txt", "out/tree"])
    assert not (other / "out" / "run.sh").exists()
    d = Digester(StatCache())
    for out in ("out/a.txt", "out/tree"):
        assert d.digest(str(other / out)) == m.outputs[out]
    assert set(got.files) == {f.path for f in m.files if f.path != "out/run.sh"}


def _stored(tmp_path: Path, body: dict) -> Path:
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
    {"outputs": {"out": D}, "files": [["out/f", D, 1, 0o644]]},  # the listing does not add up to D
    {"outputs": {"out/a": D}, "files": [["out/a", "1" * 32, 1, 0o644]]},  # nor the file's digest
    {"outputs": {"out/a": "not-a-digest"}},
    {"outputs": {"out": D, "out/a": D}},  # one output inside another
    {"key": "cd" * 32, "outputs": {"out/a": D}, "files": [["out/a", D, 1, 0o644]]},  # another key's
])
def test_a_hostile_or_broken_manifest_is_a_miss_with_a_warning(tmp_path: Path, body: dict) -> None:
    cache = open_cache(str(_stored(tmp_path, body)), Mode.READ)
    assert cache.lookup(KEY) is None
    assert cache.warnings and "ignored" in cache.warnings[0]


def test_each_mode_does_only_what_it_says_and_a_bad_url_is_a_typed_error(tmp_path: Path) -> None:
    wd = workdir(tmp_path)
    w = open_cache(str(tmp_path / "cache"), Mode.WRITE)
    assert w.publish(KEY, OUTS, str(wd), digests(wd)).blobs == 3
    assert w.lookup(KEY) is None, "write mode never restores"
    r = open_cache(f"file://{tmp_path}/cache", Mode.READ)
    assert r.publish("cd" * 32, OUTS, str(wd), digests(wd)).blobs == 0, "read mode never writes"
    m = r.lookup(KEY)
    assert m is not None and m.size == sum(f.size for f in m.files) > 0
    assert Manifest.decode(m.encode(), KEY) == m
    with pytest.raises(CacheError, match="only file:// and s3://"):
        open_cache("gs://bucket", Mode.READ)
