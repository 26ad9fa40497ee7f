"""The shared cache in S3: ``cache.BlobStore`` over a bucket and prefix, through boto3.

Layout under ``s3://bucket/prefix``: ``ac/<key>.json`` (manifests) and ``cas/<d[:2]>/<d>``
(blobs), as in the directory store. Credentials come from boto3's standard chain only
(environment, ``~/.aws`` with ``profile``, an instance role); ``endpoint_url`` and ``region`` pick
the server. No message carries a credential: errors name the object's URL, the server's error code
and message, and a hint.

Why this is correct without locks, and without conditional writes:

- A PUT is atomic on every S3 implementation (a multipart upload becomes visible when it is
  completed, whole): a reader sees a blob or a manifest whole, or not at all.
- A publisher writes every blob of an entry before its manifest (``cache.Cache.publish``), so a
  manifest that can be read names blobs that were all present when it was written.
- ``write_manifest`` writes nothing when a manifest is there (a HEAD), and asks for
  ``IfNoneMatch="*"`` (first writer wins), which AWS and moto honour. On a server that ignores it
  (``rclone serve s3``) two publishers of one key racing past the HEAD both write, and the second
  manifest replaces the first. That is harmless: the second manifest is whole too, and its own blobs were
  written before it, so whichever manifest a reader gets, it restores; two manifests of one key
  differ only when the step is not deterministic, and either is a correct result of that step.
- A blob is never trusted: the restore hashes it while it streams (``Cache.restore``), so a blob
  damaged on the server is a miss, never a wrong file.

Nothing relies on user metadata (``rclone serve s3`` drops or capitalises it) nor on ETags being
MD5s.
"""

from __future__ import annotations

import io
import os
import re
import threading
import time
from typing import Any, BinaryIO, Iterator

from flowmake.cache import check_key
from flowmake.digest import DIGEST_BYTES, hasher
from flowmake.errors import CacheError
from flowmake.storage_s3 import s3_client

# Parts of a multipart transfer. 8 MiB is boto3's own default and above S3's 5 MiB minimum; the
# transfer manager keeps at most a few parts in memory per upload.
PART = 8 << 20
CONCURRENCY = 4
# Above this a blob is fetched in parallel ranged GETs. One GET streams at whatever one connection
# gets (about 100 MB/s from AWS S3, which recommends ranges for large objects); on loopback one
# GET is as fast or faster (rclone 443 MB/s against 410 ranged, moto 900 against 120: moto
# copies the object for each range), so small and middling blobs keep the one GET.
STREAM_MAX = 4 * PART
# A hit refreshes its manifest's Last-Modified (gc's least-recently-used order) when it is older
# than this: a write per entry a day, not per lookup.
REFRESH_SECONDS = 86400
_CHUNK = 1 << 20
_DIGEST = re.compile(r"[0-9a-f]{%d}\Z" % (2 * DIGEST_BYTES))
_MISSING = ("404", "NoSuchKey", "NotFound")
_TAKEN = ("412", "PreconditionFailed", "409", "ConditionalRequestConflict")
_UNSUPPORTED = ("501", "NotImplemented")
_EMPTY = ("416", "InvalidRange")  # a range of an empty object: there is no byte 0
# The server cannot be reached at all: later calls fail at once with the same error.
_DOWN = ("EndpointConnectionError", "ConnectTimeoutError", "ProxyConnectionError")
_SLOW = ("ReadTimeoutError", "ConnectionClosedError")  # this request failed; the next may not
_STALE_KEPT = 64  # manifests read and not yet used(): Cache.lookup calls used() right after


class S3Store:
    """``s3://bucket/prefix`` as a ``BlobStore``. ``writable=False`` refuses every write."""

    def __init__(self, url: str, *, endpoint_url: str | None = None, region: str | None = None,
                 profile: str | None = None, writable: bool = True) -> None:
        self.bucket, self.prefix = parse_url(url)
        self.url = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        self.writable = writable
        self.endpoint_url = endpoint_url
        self._stale: dict[str, tuple[str, bytes]] = {}  # key -> (ETag, bytes) of an old manifest read
        self._down: CacheError | None = None  # the server could not be reached: fail fast after
        self._lock = threading.Lock()
        from botocore.exceptions import BotoCoreError

        try:
            # Few retries: a cache that is down must not stall every lookup of a build.
            self.client = s3_client(endpoint_url=endpoint_url, region=region, profile=profile,
                                    retries=2)
        except BotoCoreError as e:  # ProfileNotFound, an unknown region spelling
            raise CacheError(f"cannot open the cache {self.url}: {e}", hint=_hint(e)) from None
        except ValueError as e:  # botocore's word for an endpoint_url it cannot parse
            raise CacheError(f"cannot open the cache {self.url}: {e}",
                             hint="[cache] endpoint_url is a URL, e.g. https://s3.lab.example.org:9000") from None

    # -- names ----------------------------------------------------------------------------------

    def manifest_key(self, key: str) -> str:
        return f"{self.prefix}ac/{check_key(key)}.json"

    def blob_key(self, digest: str) -> str:
        if not _DIGEST.match(digest):
            raise CacheError(f"not a blob digest: {digest!r}")
        return f"{self.prefix}cas/{digest[:2]}/{digest}"

    def _url(self, name: str) -> str:
        return f"s3://{self.bucket}/{name}"

    # -- the BlobStore protocol -----------------------------------------------------------------

    def read_manifest(self, key: str) -> bytes | None:
        name = self.manifest_key(key)
        resp = self._call("read", name, "get_object", Bucket=self.bucket, Key=name)
        if resp is None:
            return None
        try:
            data: bytes = resp["Body"].read()
        except Exception as e:  # a connection that broke off: botocore's or urllib3's error
            raise CacheError(f"cannot read {self._url(name)}: {e}") from None
        modified = resp.get("LastModified")
        if modified is not None and time.time() - modified.timestamp() >= REFRESH_SECONDS:
            with self._lock:  # for used(), should this be a hit
                self._stale[key] = (str(resp.get("ETag", "")), data)
                if len(self._stale) > _STALE_KEPT:  # a reader that never calls used()
                    del self._stale[next(iter(self._stale))]
        return data

    def write_manifest(self, key: str, data: bytes) -> None:
        name = self.manifest_key(key)
        self._require_writable(name)
        # A HEAD first: on a server that ignores IfNoneMatch, an entry written before stays.
        if self._call("read", name, "head_object", Bucket=self.bucket, Key=name) is not None:
            return
        args = dict(Bucket=self.bucket, Key=name, Body=data, ContentType="application/json")
        try:
            self._call("write", name, "put_object", IfNoneMatch="*", **args)
        except _Refused as e:
            if e.code in _TAKEN:
                return  # another publisher's manifest is there: first writer wins
            if e.code not in _UNSUPPORTED:
                raise e.error from None
            self._call("write", name, "put_object", **args)  # see the module's docstring

    def has_blob(self, digest: str) -> bool:
        name = self.blob_key(digest)
        return self._call("read", name, "head_object", Bucket=self.bucket, Key=name) is not None

    def open_blob(self, digest: str) -> BinaryIO | None:
        """The blob as a stream: one GET up to ``STREAM_MAX``; a larger blob comes through the
        transfer manager's parallel ranged GETs, in order, through a pipe (``_Parts``)."""
        name = self.blob_key(digest)
        try:
            resp = self._call("read", name, "get_object", Bucket=self.bucket, Key=name,
                              Range=f"bytes=0-{STREAM_MAX - 1}")
        except _Refused as e:
            if e.code not in _EMPTY:
                raise e.error from None
            resp = self._call("read", name, "get_object", Bucket=self.bucket, Key=name)
        if resp is None:
            return None
        total = _total(resp.get("ContentRange"))
        if total is None or total <= STREAM_MAX:  # all of it (or a server that ignores Range)
            return io.BufferedReader(_Body(resp["Body"], self._url(name)), buffer_size=_CHUNK)
        resp["Body"].close()
        return io.BufferedReader(_Parts(self, name), buffer_size=_CHUNK)

    def _transfer_config(self) -> Any:
        from boto3.s3.transfer import TransferConfig

        config = TransferConfig(multipart_threshold=PART, multipart_chunksize=PART,
                                max_concurrency=CONCURRENCY)
        # At most 64 chunks (16 MiB) of a download wait in memory for the stream's reader
        # (s3transfer's setting, which boto3's constructor does not take).
        config.max_in_memory_download_chunks = 64
        return config

    def write_blob(self, digest: str, src: str) -> None:
        """Upload ``src`` unless the blob is there already (a HEAD); multipart above ``PART``.

        The file is hashed as it is read for the upload: one that no longer has ``digest`` (it
        changed after the step) is deleted again and refused, so no blob lies about its name.
        """
        name = self.blob_key(digest)
        self._require_writable(name)
        if self.has_blob(digest):
            return
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            with open(src, "rb") as fh:
                reader = _Hashing(fh)
                self.client.upload_fileobj(reader, self.bucket, name, Config=self._transfer_config())
        except OSError as e:
            raise CacheError(f"cannot publish {src} to {self._url(name)}: {e}") from None
        except (BotoCoreError, ClientError, S3UploadFailedError) as e:
            raise self._error("write", name, e) from None
        if reader.digest() != digest:
            self.remove_blob(digest)
            raise CacheError(f"{src} changed while it was published to {self._url(name)}")

    def remove_blob(self, digest: str) -> None:
        self.remove(self.blob_key(digest))

    def used(self, key: str) -> None:
        """Refresh a manifest's Last-Modified (gc's order) when it is a day old; best effort.

        The refresh writes back the bytes just read, with ``IfMatch`` their ETag: a server that
        honours it never brings back a manifest gc removed meanwhile. One that ignores it may,
        and the entry's blobs may be gone: such an entry restores as a miss (every blob is
        checked) and the next gc removes it. (A copy onto itself would not do: rclone keeps the
        old Last-Modified.)
        """
        with self._lock:
            stale = self._stale.pop(key, None)
        if not self.writable or stale is None:
            return
        name = self.manifest_key(key)
        args = dict(Bucket=self.bucket, Key=name, Body=stale[1], ContentType="application/json")
        try:
            try:
                self._call("write", name, "put_object", IfMatch=stale[0], **args)
            except _Refused as e:
                if e.code in _UNSUPPORTED:
                    self._call("write", name, "put_object", **args)
        except CacheError:  # only gc's order suffers
            pass

    # -- what `flowmake cache stats/gc` needs -----------------------------------------------------

    def listing(self, kind: str) -> Iterator[tuple[str, int, float]]:
        """(name, size, Last-Modified) of every object under ``ac/`` or ``cas/``: manifests by
        key, blobs by digest. Names that are not ours (a stray upload) are skipped."""
        from botocore.exceptions import BotoCoreError, ClientError

        top = f"{self.prefix}{kind}/"
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=top):
                for obj in page.get("Contents", ()):
                    tail = obj["Key"][len(top):].rsplit("/", 1)[-1]
                    name = tail[:-len(".json")] if kind == "ac" and tail.endswith(".json") else tail
                    if (kind == "ac" and tail.endswith(".json")) or (kind == "cas" and _DIGEST.match(tail)):
                        yield name, int(obj.get("Size", 0)), obj["LastModified"].timestamp()
        except (BotoCoreError, ClientError) as e:
            raise self._error("list", top, e) from None

    def remove_manifest(self, key: str) -> None:
        self.remove(self.manifest_key(key))

    def remove(self, name: str) -> None:
        self._require_writable(name)
        self._call("write", name, "delete_object", Bucket=self.bucket, Key=name)

    # -- plumbing -------------------------------------------------------------------------------

    def _require_writable(self, name: str) -> None:
        if not self.writable:
            raise CacheError(f"the cache {self.url} is read-only here; {self._url(name)} was not written")

    def _call(self, action: str, name: str, method: str, **kw: Any) -> Any:
        """One request; None when the object is absent. A refusal the caller may handle is
        ``_Refused``; everything else a ``CacheError`` with the URL and a hint."""
        from botocore.exceptions import BotoCoreError, ClientError

        if self._down is not None:
            raise self._down
        try:
            return getattr(self.client, method)(**kw)
        except ClientError as e:
            code = _code(e)
            if code in _MISSING and method in ("get_object", "head_object"):
                return None
            error = self._error(action, name, e)
            if code in _TAKEN + _UNSUPPORTED + _EMPTY:
                raise _Refused(code, error) from None
            raise error from None
        except BotoCoreError as e:
            error = self._error(action, name, e)
            if type(e).__name__ in _DOWN:
                self._down = error
            raise error from None

    def _error(self, action: str, name: str, e: Exception) -> CacheError:
        why = _why(e) if hasattr(e, "response") else str(e)
        if _code(e) == "NoSuchBucket":
            why = f"no bucket {self.bucket!r}"
        return CacheError(f"cannot {action} {self._url(name)}: {why}", hint=_hint(e, self.endpoint_url))


class _Refused(Exception):
    def __init__(self, code: str, error: CacheError) -> None:
        super().__init__(code)
        self.code = code
        self.error = error


class _Body(io.RawIOBase):
    """A GET's streaming body whose failures are ``OSError`` (``Cache.restore`` reports those as
    a blob that broke off): botocore raises its own error for a body shorter than announced."""

    def __init__(self, body: Any, url: str) -> None:
        self._body = body
        self._url = url

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        try:
            data = self._body.read(len(buf))
        except Exception as e:  # botocore's IncompleteReadError, urllib3's ProtocolError, ...
            raise OSError(f"{self._url}: {e}") from None
        n = len(data)
        buf[:n] = data
        return n

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


class _Parts(io.RawIOBase):
    """A large blob downloaded by boto3's transfer manager (``PART``-sized ranged GETs, a few at
    once) into a pipe, read from the pipe's other end as it comes. The transfer manager writes a
    non-seekable target in order. Its failure is an ``OSError`` at the reader's end of the data;
    a reader that stops early closes the pipe, which ends the download."""

    def __init__(self, store: S3Store, name: str) -> None:
        rfd, wfd = os.pipe()
        self._pipe = os.fdopen(rfd, "rb", buffering=0)
        self._url = store._url(name)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._download, args=(store, name, wfd),
                                        name="flowmake-cache-get", daemon=True)
        self._thread.start()

    def _download(self, store: S3Store, name: str, wfd: int) -> None:
        try:
            with os.fdopen(wfd, "wb", buffering=0) as sink:
                store.client.download_fileobj(store.bucket, name, sink, Config=store._transfer_config())
        except BaseException as e:  # reported to the reader; a closed pipe ends up here too
            self._error = e

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        n = self._pipe.readinto(buf)
        if not n:
            self._thread.join()
            if self._error is not None:
                raise OSError(f"{self._url}: {self._error}")
        return n or 0

    def close(self) -> None:
        if not self.closed:
            self._pipe.close()
            self._thread.join()
        super().close()


def _total(content_range: str | None) -> int | None:
    """The object's size from a ranged GET's ``Content-Range: bytes 0-99/1234``."""
    if not content_range or "/" not in content_range:
        return None
    tail = content_range.rsplit("/", 1)[1]
    return int(tail) if tail.isdigit() else None


class _Hashing(io.RawIOBase):
    """A file read once, front to back, hashing what it hands out. Not seekable on purpose: the
    transfer manager then reads it in order (each part once), so the hash is of what was sent."""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self._hash = hasher()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readinto(self, buf: Any) -> int:
        data = self._fh.read(len(buf))
        self._hash.update(data)
        n = len(data)
        buf[:n] = data
        return n

    def digest(self) -> str:
        return str(self._hash.hexdigest(DIGEST_BYTES))


def parse_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` → ("bucket", "some/prefix/"); ``s3://bucket`` → ("bucket", "")."""
    rest = url[len("s3://"):] if url.startswith("s3://") else ""
    bucket, _, prefix = rest.partition("/")
    if not bucket or not re.fullmatch(r"[a-z0-9][a-z0-9.\-_]{1,254}", bucket):
        raise CacheError(f"cache URL {url!r} names no S3 bucket", hint="e.g. s3://my-bucket/flowmake-cache")
    parts = [p for p in prefix.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise CacheError(f"cache URL {url!r}: the prefix may not hold '.' or '..'")
    return bucket, "".join(p + "/" for p in parts)


def _code(e: Any) -> str:
    return str(getattr(e, "response", {}).get("Error", {}).get("Code", ""))


def _why(e: Any) -> str:
    err = getattr(e, "response", {}).get("Error", {})
    return f"{err.get('Code', '?')}: {err.get('Message', '') or 'no message'}"


def _hint(e: Exception, endpoint_url: str | None = None) -> str | None:
    name, code = type(e).__name__, _code(e)
    if name in ("NoCredentialsError", "PartialCredentialsError") or code in (
            "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"):
        return ("credentials come from the standard AWS chain: AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, ~/.aws/credentials ([cache] profile = ...) or an instance role")
    if code in ("403", "AccessDenied"):
        return ("these credentials may not do this (S3 also answers 403 for a missing object "
                "when s3:ListBucket is not allowed); with read access only, set [cache] mode = "
                "\"read\" (or --cache-mode read)")
    if name == "ProfileNotFound":
        return "check [cache] profile against the profiles in ~/.aws/config and ~/.aws/credentials"
    if code == "NoSuchBucket":
        return "create the bucket, or check the bucket in [cache] url"
    if name in _DOWN + _SLOW:
        where = f" ({endpoint_url})" if endpoint_url else ""
        return f"is the S3 server{where} up? check [cache] endpoint_url"
    return None
