"""One contract for every store behind the shared cache: a directory, moto's S3 and rclone's S3.

Each test runs on the three (``backend`` is parametrized; the S3 ones carry the ``s3`` marker and
start their server once per session). The stores are reached through ``cache.open_cache`` with
their URLs, as a run reaches them; S3 credentials come from the environment (the standard chain).
A store's content is damaged behind its back (the directory's file, or a ``put_object``), and
"writes nothing" is checked on what the store holds and, for S3, on the server's request log.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

import pytest

from flowmake.cache import Cache, CacheCorrupt, FileEntry, Manifest, Mode
from flowmake.errors import CacheError
from tests.cache_stores import Backend, backend, digests, s3, tree, workdir  # noqa: F401  # fixtures
from tests.services.rclone import rclone_server  # noqa: F401  # the fixture
from tests.services.s3 import s3_server  # noqa: F401  # the fixture

KEY = "ab" * 32
OTHER = "cd" * 32
OUTS = ["out/a.txt", "out/run.sh", "out/tree"]


def _published(backend: Backend, tmp_path: Path) -> tuple[Path, Cache]:
    wd = workdir(tmp_path)
    cache = backend.open(Mode.READWRITE)
    cache.publish(KEY, OUTS, str(wd), digests(wd))
    return wd, cache


# -- the store itself --------------------------------------------------------------------------

def test_manifests_are_whole_and_the_first_one_stays(backend: Backend) -> None:
    store = backend.open(Mode.READWRITE).store
    assert store.read_manifest(KEY) is None
    store.write_manifest(KEY, b'{"first": 1}')
    assert store.read_manifest(KEY) == b'{"first": 1}'
    store.write_manifest(KEY, b'{"second": 2}')
    assert store.read_manifest(KEY) == b'{"first": 1}'
    assert store.read_manifest(OTHER) is None


def test_blobs_present_and_absent_and_a_present_blob_is_not_sent_again(backend: Backend, tmp_path: Path) -> None:
    store = backend.open(Mode.READWRITE).store
    src = tmp_path / "blob"
    src.write_bytes(b"some bytes\n" * 1000)
    d = digests(tmp_path)("blob")
    assert d is not None
    assert not store.has_blob(d) and store.open_blob(d) is None
    store.write_blob(d, str(src))
    assert store.has_blob(d)
    with store.open_blob(d) as fh:  # type: ignore[union-attr]
        assert fh.read() == src.read_bytes()
    before = backend.writes()
    store.write_blob(d, str(src))
    assert backend.writes() == before
    store.remove_blob(d)
    assert not store.has_blob(d)
    (tmp_path / "empty").write_bytes(b"")
    e = digests(tmp_path)("empty")
    assert e is not None
    store.write_blob(e, str(tmp_path / "empty"))
    with store.open_blob(e) as fh:  # type: ignore[union-attr]
        assert fh.read() == b""


def test_a_blob_whose_file_changed_is_refused_and_not_left_behind(backend: Backend, tmp_path: Path) -> None:
    store = backend.open(Mode.READWRITE).store
    src = tmp_path / "blob"
    src.write_bytes(b"old\n")
    d = digests(tmp_path)("blob")
    assert d is not None
    src.write_bytes(b"new\n")
    with pytest.raises(CacheError, match="changed while it was published"):
        store.write_blob(d, str(src))
    assert not store.has_blob(d)


def test_a_large_blob_travels_in_parts(s3: Backend, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    backend = s3
    store = backend.open(Mode.READWRITE).store
    src = tmp_path / "big"
    src.write_bytes(os.urandom((33 << 20) + 5))  # above STREAM_MAX: five parts each way
    d = digests(tmp_path)("big")
    assert d is not None
    store.write_blob(d, str(src))
    multipart = [w for w in backend.writes() if w.startswith("POST") or "multipart" in w]
    assert len(multipart) >= 2  # initiated and completed: more than one PUT
    with store.open_blob(d) as fh:  # type: ignore[union-attr]
        assert hashlib.sha256(fh.read()).digest() == hashlib.sha256(src.read_bytes()).digest()
    if backend.name == "moto":  # one ranged GET to learn the size, then one per 8 MiB part
        server = request.getfixturevalue("s3_server")
        bucket, _, prefix = backend.url[len("s3://"):].partition("/")
        assert server.count("GET", bucket, f"{prefix}cas/{d[:2]}/{d}") == 6
    with store.open_blob(d) as fh:  # type: ignore[union-attr]
        assert len(fh.read(1000)) == 1000  # a reader that stops early ends the download
    backend.put_blob(d, src.read_bytes()[: 33 << 20])  # 5 bytes short, on the server
    wd = tmp_path / "wd"
    wd.mkdir()
    # moto: 33 MiB arrive and do not hash to the name; rclone sends the whole object's CRC with
    # each range of a one-PUT object, which botocore refuses: the blob broke off. Both are misses.
    with pytest.raises(CacheCorrupt, match=f"has {33 << 20} bytes|broke off"):
        backend.open(Mode.READ).restore(Manifest(KEY, {"big": d}, (FileEntry("big", d, (33 << 20) + 5, 0o644),)), str(wd))
    assert list(wd.iterdir()) == []


# -- through the cache ---------------------------------------------------------------------------

def test_published_outputs_restore_byte_identical_elsewhere(backend: Backend, tmp_path: Path) -> None:
    wd, cache = _published(backend, tmp_path)
    m = backend.open(Mode.READ).lookup(KEY)
    assert m is not None
    clone = tmp_path / "clone"
    clone.mkdir()
    got = backend.open(Mode.READ).restore(m, str(clone))
    assert got.bytes == 300_000 + 6 + 18
    assert tree(clone / "out") == tree(wd / "out")
    assert not list(clone.rglob("*tmp-*"))


def test_two_publishers_of_one_key_at_once_both_succeed_and_the_entry_is_whole(backend: Backend, tmp_path: Path) -> None:
    wd = workdir(tmp_path)
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def publish() -> None:
        try:
            cache = backend.open(Mode.READWRITE)
            start.wait()
            cache.publish(KEY, OUTS, str(wd), digests(wd))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=publish) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    m = backend.open(Mode.READ).lookup(KEY)
    assert m is not None
    clone = tmp_path / "clone"
    clone.mkdir()
    backend.open(Mode.READ).restore(m, str(clone))
    assert tree(clone / "out") == tree(wd / "out")


@pytest.mark.parametrize("damage", ["corrupt", "truncate"])
def test_a_damaged_blob_never_lands_in_theworkdir(backend: Backend, tmp_path: Path, damage: str) -> None:
    wd, cache = _published(backend, tmp_path)
    m = cache.lookup(KEY)
    assert m is not None
    digest = m.files[[f.path for f in m.files].index("out/tree/sub/b.bin")].digest
    good = (wd / "out" / "tree" / "sub" / "b.bin").read_bytes()
    backend.put_blob(digest, good[:1000] + b"X" + good[1001:] if damage == "corrupt" else good[:150_000])
    clone = tmp_path / "clone"
    (clone / "out" / "tree").mkdir(parents=True)
    (clone / "out" / "tree" / "old").write_text("what was there\n")
    with pytest.raises(CacheCorrupt) as err:
        cache.restore(m, str(clone), ["out/tree"])
    assert err.value.path == "out/tree"
    assert tree(clone) == {"out": ("dir", 0), "out/tree": ("dir", 0),
                            "out/tree/old": (hashlib.sha256(b"what was there\n").hexdigest(), 0o644)}
    assert not cache.store.has_blob(digest)  # a writable cache drops it, so a publisher replaces it


def test_a_manifest_whose_blobs_are_missing_restores_nothing(backend: Backend, tmp_path: Path) -> None:
    wd, cache = _published(backend, tmp_path)
    m = cache.lookup(KEY)
    assert m is not None
    backend.drop_blob(m.outputs["out/run.sh"])
    clone = tmp_path / "clone"
    clone.mkdir()
    with pytest.raises(CacheCorrupt, match="missing"):
        cache.restore(m, str(clone))
    assert list(clone.iterdir()) == [] or tree(clone) == {"out": ("dir", 0)}


def test_read_only_writes_nothing(backend: Backend, tmp_path: Path) -> None:
    wd, _ = _published(backend, tmp_path)
    held, sent = backend.content(), backend.writes()
    ro = backend.open(Mode.READ)
    m = ro.lookup(KEY)
    assert m is not None
    clone = tmp_path / "clone"
    clone.mkdir()
    ro.restore(m, str(clone))
    assert ro.publish(OTHER, OUTS, str(wd), digests(wd)).blobs == 0
    assert ro.lookup(OTHER) is None
    assert backend.content() == held and backend.writes() == sent
    backend.put_blob(m.outputs["out/a.txt"], b"damaged\n")
    held, sent = backend.content(), backend.writes()
    with pytest.raises(CacheCorrupt):  # found damaged, and left there: not this reader's to fix
        ro.restore(m, str(clone), ["out/a.txt"])
    assert backend.content() == held and backend.writes() == sent


def test_a_read_only_s3_store_refuses_writes(s3: Backend, tmp_path: Path) -> None:
    from flowmake.cache_s3 import S3Store

    store = S3Store(s3.url, endpoint_url=s3.endpoint, writable=False)
    src = tmp_path / "f"
    src.write_text("x\n")
    with pytest.raises(CacheError, match="read-only"):
        store.write_manifest(KEY, b"{}")
    with pytest.raises(CacheError, match="read-only"):
        store.write_blob(D, str(src))
    store.used(KEY)
    assert s3.writes() == []


def _hostile(base: dict) -> bytes:
    body = {"version": 1, "key": KEY, "outputs": {}, "files": [], "links": [], "dirs": []}
    body.update(base)
    return json.dumps(body).encode()


D = "0" * 32


@pytest.mark.parametrize("body", [
    {"outputs": {"../x": D}, "files": [["../x", D, 1, 0o644]]},
    {"outputs": {"/tmp/x": D}, "files": [["/tmp/x", D, 1, 0o644]]},
    {"outputs": {"out": D}, "links": [["out/l", "../../.."]]},  # a link pointing outside
    {"outputs": {"out": D}, "links": [["out/l", "/"]]},
    {"outputs": {"out": D}, "links": [["out/l", "sub"]], "dirs": ["out/sub"],
     "files": [["out/l/x", D, 1, 0o644]]},  # a path through a linked folder
], ids=["dotdot", "absolute", "link-out", "link-abs", "through-link"])
def test_a_hostile_manifest_writes_nothing_outside_theworkdir(backend: Backend, tmp_path: Path, body: dict) -> None:
    wd = tmp_path / "deep" / "wd"
    wd.mkdir(parents=True)
    backend.put_blob(D, b"x")
    backend.open(Mode.READWRITE).store.write_manifest(KEY, _hostile(body))
    before = sorted(tmp_path.rglob("*"))
    cache = backend.open(Mode.READ)
    m = cache.lookup(KEY)
    assert m is None and "ignored" in cache.warnings[0]
    assert sorted(tmp_path.rglob("*")) == before


# -- S3 errors: one typed error with the URL and a hint, never a traceback, never a credential ---

def _no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def test_s3_errors_name_the_url_and_say_what_to_check(s3: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    from flowmake.cache_s3 import S3Store
    from tests.services import free_port
    from tests.services.s3 import SECRET_KEY

    nobucket = S3Store("s3://no-such-bucket/p", endpoint_url=s3.endpoint)
    with pytest.raises(CacheError) as err:
        nobucket.read_manifest(KEY)
    assert str(err.value).startswith(f"cache error: cannot read s3://no-such-bucket/p/ac/{KEY}.json: no bucket")
    assert "create the bucket" in str(err.value)

    with pytest.raises(CacheError, match="check \\[cache\\] profile"):
        S3Store(s3.url, endpoint_url=s3.endpoint, profile="no-such-profile")
    with pytest.raises(CacheError, match="Invalid endpoint: localhost:9000") as err:
        S3Store(s3.url, endpoint_url="localhost:9000")
    assert "endpoint_url is a URL" in str(err.value)

    down = S3Store(s3.url, endpoint_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(CacheError, match="is the S3 server .* up") as err:
        down.has_blob(D)
    with pytest.raises(CacheError) as again:  # told once: later calls fail at once, the same way
        down.read_manifest(KEY)
    assert str(again.value) == str(err.value)

    if s3.name == "rclone":  # moto accepts any signature; rclone checks its keys
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
        with pytest.raises(CacheError, match="standard AWS chain") as err:
            S3Store(s3.url, endpoint_url=s3.endpoint).read_manifest(KEY)
        assert "not-the-secret" not in str(err.value) and SECRET_KEY not in str(err.value)

    _no_credentials(monkeypatch)
    with pytest.raises(CacheError, match="standard AWS chain") as err:
        S3Store(s3.url, endpoint_url=s3.endpoint).read_manifest(KEY)
    assert s3.url in str(err.value)
