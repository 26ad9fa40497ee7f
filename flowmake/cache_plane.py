"""The S3 cache's data plane: presigned URLs to its blobs, for hosts that move a step's data themselves.

``api.py`` gives it to a backend that has ``use_data_plane`` (ssh, spot: ``backends/ssh_dataplane``)
when the configured cache is in S3. Built on the ``S3Store``'s client; credentials never leave this
machine, only URLs do.
"""

from __future__ import annotations

import re
from typing import Any

from flowmake.cache_s3 import S3Store
from flowmake.digest import DIGEST_BYTES, hasher
from flowmake.errors import CacheError

_CHUNK = 1 << 20
_DIGEST = re.compile(r"[0-9a-f]{%d}\Z" % (2 * DIGEST_BYTES))


class DataPlane:
    """Presigned URLs to the blobs of an S3 cache, for hosts that move a step's data themselves.

    A remote host (ssh, spot) fetches an input blob from the bucket, or uploads an output blob to
    it, instead of the submitting machine relaying every byte. Credentials never leave this
    machine: a presigned URL is a capability for one object and one method, valid ``expires``
    seconds. Hosts check what they fetch (its digest) before using it; what they upload is named
    by the digest they computed, and the manifest stays the submitter's to write, after it has
    checked the outputs itself. A blob a host uploaded wrongly is removed (``remove_blob``).
    """

    def __init__(self, store: S3Store, *, readable: bool, writable: bool, expires: int = 3600) -> None:
        self.store = store
        self.readable = readable
        self.writable = writable and store.writable
        self.expires = expires

    def has_blob(self, digest: str) -> bool:
        try:
            return self.store.has_blob(digest)
        except CacheError:  # a store that fails: the submitter moves the data, as without a plane
            return False

    def get_url(self, digest: str) -> str | None:
        """A presigned GET of the blob ``digest``; None when the cache does not hold it."""
        if not self.readable or not _DIGEST.match(digest) or not self.has_blob(digest):
            return None
        return self._presign("get_object", digest)

    def put_url(self, digest: str) -> str:
        if not self.writable:
            raise CacheError(f"the cache {self.store.url} is read-only here")
        return self._presign("put_object", digest)

    def remove_blob(self, digest: str) -> None:
        try:
            self.store.remove_blob(digest)
        except CacheError:  # it is checked by whoever restores it, and removed then
            pass

    def drop_if_damaged(self, digest: str) -> None:
        """A host found the blob ``digest`` damaged: read and hashed here (a host's word alone
        removes nothing), and removed when it is, so the next publisher puts it back."""
        if not self.writable:
            return
        h = hasher()
        try:
            src = self.store.open_blob(digest)
            if src is None:
                return
            with src:
                for block in iter(lambda: src.read(_CHUNK), b""):
                    h.update(block)
        except (OSError, CacheError):
            return
        if h.hexdigest(DIGEST_BYTES) != digest:
            self.remove_blob(digest)

    def _presign(self, method: str, digest: str) -> str:
        params = {"Bucket": self.store.bucket, "Key": self.store.blob_key(digest)}
        return str(self.store.client.generate_presigned_url(method, Params=params, ExpiresIn=self.expires))


def data_plane(cache: Any) -> DataPlane | None:
    """The data plane of ``cache`` (a ``cache.Cache``) when its store is S3, else None."""
    store = getattr(cache, "store", None)
    if not isinstance(store, S3Store):
        return None
    return DataPlane(store, readable=cache.can_read, writable=cache.can_write)
