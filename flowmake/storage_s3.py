"""S3 objects behind storage paths: HEAD, download, upload, and the digests of what they hold.

Credentials come from boto3's standard chain only (environment, ``~/.aws`` and ``profile``, the
instance's role); no setting carries one and no message prints one: errors name the object, the
server's error code and message. ``endpoint_url``, ``region`` and ``profile`` choose the client.

Digests (see ``storage.Storage``): an object's digest is the BLAKE3 digest of its content. It is
known without a GET from the ``flowmake-blake3`` metadata flowmake writes when it uploads, or from
``.flowmake/storage-digests.json``, which maps each object's (ETag, size, Last-Modified) to the
digest its content had when it was last downloaded or uploaded; otherwise the object is
downloaded once. An unchanged object is never downloaded again while its local copy (kept in
``.flowmake/storage/``) still holds its content.

Transfers: a GET is made with ``IfMatch`` the ETag the run planned with, into a temporary file
renamed into place, so a job never reads half an object nor another version than its key names;
an upload is boto3's ``upload_file`` (one PUT, or a multipart upload that S3 completes
atomically), so a reader sees the old object or the new one. The objects of one step move in
parallel, in a small thread pool.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable

from flowmake.digest import hash_bytes
from flowmake.errors import StorageError

if TYPE_CHECKING:
    from flowmake.digest import Digester
    from flowmake.storage import Provider, Remote

META = "flowmake-blake3"  # the user metadata an upload carries: the content's digest
CACHE_FILE = "storage-digests.json"
_CHUNK = 1 << 20
_WORKERS = 8


@dataclass(frozen=True)
class Head:
    etag: str
    size: int
    modified: str
    digest: str | None  # the flowmake-blake3 metadata, when flowmake uploaded the object
    modified_ns: int = 0  # Last-Modified (whole seconds on S3)

    @property
    def identity(self) -> list[Any]:
        return [self.etag, self.size, self.modified]


class S3Objects:
    """The server side of one invocation: clients, one HEAD per object, the digest cache."""

    def __init__(self, store_dir: str) -> None:
        self._cache_path = os.path.join(store_dir, CACHE_FILE)
        self._cache: dict[str, list[Any]] = _load(self._cache_path)
        self._changed: dict[str, list[Any]] = {}
        self._heads: dict[str, Head | None] = {}
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    # -- the client ---------------------------------------------------------------------------

    def client(self, provider: Provider) -> Any:
        with self._lock:
            c = self._clients.get(provider.name)
            if c is None:
                c = self._clients[provider.name] = _make_client(provider)
            return c

    # -- reading ------------------------------------------------------------------------------

    def head(self, r: Remote) -> Head | None:
        """The object's HEAD, asked once per invocation (None: no such object)."""
        if r.local in self._heads:
            return self._heads[r.local]
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            resp = self.client(r.provider).head_object(Bucket=r.bucket, Key=r.key)
        except ClientError as e:
            if _code(e) in ("404", "NoSuchKey", "NotFound"):
                self._heads[r.local] = None
                return None
            raise StorageError(f"cannot read {r.url}: {_why(e)}", hint=_hint(e)) from None
        except BotoCoreError as e:
            raise StorageError(f"cannot read {r.url}: {e}", hint=_hint(e)) from None
        meta = {k.lower(): v for k, v in (resp.get("Metadata") or {}).items()}
        modified = resp.get("LastModified")
        head = Head(str(resp.get("ETag", "")), int(resp.get("ContentLength", 0)),
                    modified.isoformat() if modified is not None else "", meta.get(META),
                    int(modified.timestamp() * 1e9) if modified is not None else 0)
        self._heads[r.local] = head
        return head

    def prefetch(self, remotes: Iterable[Remote]) -> None:
        """HEAD the objects not asked yet, in parallel: what planning then asks is memoised. A
        HEAD that fails is not remembered, so the later one raises with the reason."""
        todo = list({r.local: r for r in remotes if r.local not in self._heads}.values())
        if len(todo) < 2:
            return
        for f in [self._pool_().submit(self.head, r) for r in todo]:
            try:
                f.result()
            except StorageError:
                pass

    def _pool_(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=_WORKERS,
                                                               thread_name_prefix="flowmake-s3")
        return self._pool

    def digest(self, r: Remote, digester: Digester, *, download: bool) -> str | None:
        head = self.head(r)
        if head is None:
            return None
        known = self._cache.get(r.local)
        if known is not None and known[:3] == head.identity:
            return str(known[3])
        if head.digest is not None:
            self._remember(r.local, head, head.digest)
            return head.digest
        if not download:  # a dry run: an object never seen is keyed by what the server says of it
            return hash_bytes(f"s3 object\0{r.url}\0{head.etag}\0{head.size}\0{head.modified}".encode())
        self._download(r, head)  # content never seen: hashed once, and the copy kept
        digester.invalidate(r.local)
        local = digester.digest(r.local, settled=True)
        if local is not None:
            self._remember(r.local, head, local)
        return local

    def _download(self, r: Remote, head: Head) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        os.makedirs(os.path.dirname(r.local), exist_ok=True)
        tmp = f"{r.local}.part{os.getpid()}.{threading.get_ident()}"
        try:
            resp = self.client(r.provider).get_object(Bucket=r.bucket, Key=r.key, IfMatch=head.etag)
            with open(tmp, "wb") as fh:
                for chunk in resp["Body"].iter_chunks(_CHUNK):
                    fh.write(chunk)
            os.replace(tmp, r.local)
        except ClientError as e:
            _discard(tmp)
            if _code(e) in ("412", "PreconditionFailed"):
                raise StorageError(f"{r.url} changed on the server while this run used it",
                                   hint="run flowmake again once it is final") from None
            raise StorageError(f"cannot download {r.url}: {_why(e)}", hint=_hint(e)) from None
        except (BotoCoreError, OSError) as e:
            _discard(tmp)
            raise StorageError(f"cannot download {r.url}: {e}") from None

    def fetch(self, wanted: Iterable[Remote], digester: Digester) -> str | None:
        """Make each local copy hold its object's content (as digested at planning), in parallel."""
        todo = []
        for r in wanted:
            try:
                d = self.digest(r, digester, download=True)
            except StorageError as e:
                return e.message
            if d is None:
                return f"{r.url} does not exist (any more)"
            digester.invalidate(r.local)
            if digester.digest(r.local) != d:
                todo.append(r)
        why = self._each(todo, lambda r: self._refetch(r, digester))
        if why is not None:
            return why
        for r in todo:
            digester.invalidate(r.local)
            if digester.digest(r.local, settled=True) != self.digest(r, digester, download=False):
                return f"{r.url}: its content does not match its {META} metadata"
        return None

    def _refetch(self, r: Remote, digester: Digester) -> None:
        head = self._heads[r.local]
        if head is None:  # digested above, so its HEAD answered; never None here
            raise StorageError(f"{r.url}: no longer on the server")
        self._download(r, head)

    # -- writing ------------------------------------------------------------------------------

    def upload(self, wanted: Iterable[Remote], digester: Digester) -> str | None:
        """Upload each local file to its object, then record the object's identity and digest."""
        todo = list(wanted)
        for r in todo:
            if os.path.isdir(r.local):
                return f"{r.local}: directories cannot be storage outputs (only files)"
        return self._each(todo, lambda r: self._upload(r, digester))

    def _upload(self, r: Remote, digester: Digester) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        with self._lock:  # the digester is not thread-safe
            digester.invalidate(r.local)
            d = digester.digest(r.local, settled=True)
        if d is None:
            raise StorageError(f"{r.local} vanished before its upload")
        client = self.client(r.provider)
        try:
            client.upload_file(r.local, r.bucket, r.key, ExtraArgs={"Metadata": {META: d}})
        except (ClientError, BotoCoreError, OSError) as e:
            raise StorageError(f"cannot upload {r.url}: {_why(e) if isinstance(e, ClientError) else e}") from None
        with self._lock:
            self._heads.pop(r.local, None)
        head = self.head(r)
        if head is not None:
            self._remember(r.local, head, d)

    def delete(self, r: Remote) -> str | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client(r.provider).delete_object(Bucket=r.bucket, Key=r.key)
        except (ClientError, BotoCoreError) as e:
            return f"cannot delete {r.url}: {_why(e) if isinstance(e, ClientError) else e}"
        self._heads[r.local] = None
        return None

    # -- plumbing -----------------------------------------------------------------------------

    def _each(self, todo: list[Remote], work: Any) -> str | None:
        if not todo:
            return None
        if len(todo) == 1:
            try:
                work(todo[0])
            except StorageError as e:
                return e.message
            return None
        futures = [self._pool_().submit(work, r) for r in todo]
        errors = []
        for f in futures:
            try:
                f.result()
            except StorageError as e:
                errors.append(e.message)
        return "; ".join(errors) if errors else None

    def _remember(self, local: str, head: Head, digest: str) -> None:
        entry = [*head.identity, digest]
        if self._cache.get(local) != entry:
            self._cache[local] = entry
            self._changed[local] = entry

    def close(self, *, save: bool) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if save and self._changed:
            # Merged with what another invocation saved meanwhile: a lost entry costs one download.
            merged = {**_load(self._cache_path), **self._changed}
            tmp = f"{self._cache_path}.tmp{os.getpid()}"
            with open(tmp, "w") as fh:
                json.dump(merged, fh, sort_keys=True)
            os.replace(tmp, self._cache_path)
            self._changed = {}


def _make_client(provider: Provider) -> Any:
    s = provider.settings
    return s3_client(endpoint_url=s.get("endpoint_url"), region=s.get("region"),
                     profile=s.get("profile"), retries=int(s.get("retries", 5)))


def s3_client(*, endpoint_url: str | None, region: str | None, profile: str | None,
              retries: int = 5) -> Any:
    """A boto3 S3 client from the standard credential chain (``profile`` picks one of
    ``~/.aws``'s); path-style addressing for an ``endpoint_url`` (moto, rclone, MinIO)."""
    import boto3
    from botocore.config import Config

    session = boto3.session.Session(profile_name=profile, region_name=region)
    config = Config(retries={"max_attempts": retries, "mode": "standard"},
                    s3={"addressing_style": "path"} if endpoint_url else None)
    return session.client("s3", endpoint_url=endpoint_url, config=config)


def _load(path: str) -> dict[str, list[Any]]:
    try:
        with open(path) as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return {}  # no cache, or a damaged one: objects are digested again
    return {k: v for k, v in data.items() if isinstance(v, list) and len(v) == 4} if isinstance(data, dict) else {}


def _size(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except OSError:
        return None


def _discard(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _code(e: Any) -> str:
    return str(getattr(e, "response", {}).get("Error", {}).get("Code", ""))


def _why(e: Any) -> str:
    err = getattr(e, "response", {}).get("Error", {})
    return f"{err.get('Code', '?')}: {err.get('Message', '') or 'no message'}"


def _hint(e: Any) -> str | None:
    name = type(e).__name__
    if name in ("NoCredentialsError", "PartialCredentialsError") or _code(e) in (
            "403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
        return ("credentials come from the standard AWS chain: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                "~/.aws/credentials (profile=...) or an instance role")
    if name in ("EndpointConnectionError", "ConnectTimeoutError"):
        return "check endpoint_url in the storage directive or in flowmake.toml's [storage.s3]"
    return None
