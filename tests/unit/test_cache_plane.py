"""The S3 cache's data plane: presigned URLs that plain urllib can use, and the scripts hosts run
with them (``backends/ssh_dataplane.py``), here run by a local python against moto on 127.0.0.1."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from flowmake.cache import Mode, open_cache
from flowmake.cache_plane import DataPlane, data_plane
from flowmake.digest import hash_bytes
from flowmake.errors import CacheError
from tests.services.s3 import S3Server, s3_server  # noqa: F401  # the fixture

pytestmark = pytest.mark.s3

BODY = b"a blob's bytes\n" * 500


def plane(server: S3Server, monkeypatch: pytest.MonkeyPatch, mode: Mode = Mode.READWRITE) -> Any:
    for k, v in server.env().items():
        monkeypatch.setenv(k, v)
    cache = open_cache(f"s3://{server.bucket()}/team", mode, endpoint_url=server.endpoint)
    p = data_plane(cache)
    assert isinstance(p, DataPlane)
    return p


def test_a_put_url_and_a_get_url_work_with_plain_urllib(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    p = plane(s3_server, monkeypatch)
    d = hash_bytes(BODY)
    assert p.get_url(d) is None  # not in the cache
    # A content type of its own: urllib's default (a form) is parsed, and dropped, by moto's server.
    put = urllib.request.Request(p.put_url(d), data=BODY, method="PUT",
                                 headers={"Content-Type": "application/octet-stream"})
    urllib.request.urlopen(put).close()
    assert p.has_blob(d)
    assert p.store.client.get_object(Bucket=p.store.bucket, Key=f"team/cas/{d[:2]}/{d}")["Body"].read() == BODY
    url = p.get_url(d)
    assert url is not None and "Signature" in url and "flowmake-test-secret" not in url
    with urllib.request.urlopen(url) as r:
        assert r.read() == BODY
    # That a URL is good for its one object and method only is S3's to enforce (its signature
    # covers both): moto does not check a presigned URL's signature, so it is not tested here.


def test_a_read_only_cache_gives_get_urls_only_and_a_directory_cache_no_plane(
        s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    p = plane(s3_server, monkeypatch, Mode.READ)
    with pytest.raises(CacheError, match="read-only"):
        p.put_url(hash_bytes(BODY))
    assert data_plane(open_cache(str(tmp_path / "c"), Mode.READWRITE)) is None


def host_script(script: str, args: list[str], stdin: Any, cwd: Path) -> Any:
    out = subprocess.run([sys.executable, "-c", script, *args], input=json.dumps(stdin), text=True,
                         capture_output=True, cwd=cwd, check=True, timeout=60)
    return json.loads(out.stdout)


def test_the_hosts_scripts_fetch_checked_blobs_and_upload_hashed_ones(
        s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from backends.ssh_dataplane import FETCH_PY, PUT_PY

    p = plane(s3_server, monkeypatch)
    (tmp_path / "out.txt").write_bytes(BODY)
    d = hash_bytes(BODY)
    done = host_script(PUT_PY, [], [["out.txt", d, p.put_url(d)]], tmp_path)
    assert done == {d: len(BODY)}
    cas = tmp_path / "cas"
    cas.mkdir()
    url = p.get_url(d)
    full = d + "f" * 32  # a CAS name may be the whole 256-bit digest: its first half is the blob's
    done = host_script(FETCH_PY, [str(cas)], [[d, url, 0o444], [full, url, 0o444]], tmp_path)
    assert done == {d: len(BODY), full: -2}
    assert (cas / d).read_bytes() == BODY and (cas / d).stat().st_mode & 0o777 == 0o444
    assert sorted(x.name for x in cas.iterdir()) == [d]  # the failed one left no temporary file
    assert host_script(FETCH_PY, [str(cas)], [[d, url, 0o444]], tmp_path) == {d: 0}  # had it
    # A damaged blob in the bucket does not pass the host's check.
    p.store.client.put_object(Bucket=p.store.bucket, Key=f"team/cas/{d[:2]}/{d}", Body=b"damaged")
    (cas / d).chmod(0o644)
    (cas / d).unlink()
    assert host_script(FETCH_PY, [str(cas)], [[d, url, 0o444]], tmp_path) == {d: -2}  # damaged
    assert list(cas.iterdir()) == []
    p.drop_if_damaged(d)  # what the submitter does then: checks it, and removes it
    assert not p.has_blob(d)


def test_a_blob_a_host_calls_damaged_stays_when_it_is_sound(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    p = plane(s3_server, monkeypatch)
    d = hash_bytes(BODY)
    p.store.client.put_object(Bucket=p.store.bucket, Key=f"team/cas/{d[:2]}/{d}", Body=BODY)
    p.drop_if_damaged(d)
    assert p.has_blob(d)


def test_a_host_without_blake3_says_so_and_fetches_nothing(tmp_path: Path) -> None:
    from backends.ssh_dataplane import FETCH_PY

    # -S: no site-packages, so no blake3 (what a host's plain python3 is like).
    out = subprocess.run([sys.executable, "-S", "-c", FETCH_PY, str(tmp_path)], input='[["%s", "http://x/", 292]]' % ("0" * 32),
                         text=True, capture_output=True, check=True, timeout=60)
    assert json.loads(out.stdout) == "no blake3" and list(tmp_path.iterdir()) == []
