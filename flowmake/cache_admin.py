"""``flowmake cache stats`` and ``flowmake cache gc --max-size 50G``: what a shared cache holds,
and keeping it under a size by dropping the entries used least recently.

Both work on either store (``cache.DirStore``, ``cache_s3.S3Store``) through a listing of its
manifests and blobs with sizes and times: a manifest's time is when it was last used (the
directory store's ``used()`` touches the file on every hit; S3's rewrites it once a day, so its
Last-Modified is the last use to within a day), a blob's is when it was written.

gc, safe against runs that restore and publish meanwhile (no locks, as the stores have none):

1. It lists manifests, then blobs; reads each manifest; an entry that cannot be read, is not a
   sound manifest, or names a blob that is missing is removed (it could only ever be a miss).
2. While the store is above the size, it removes the least recently used entry; a blob no longer
   named by any remaining entry is then garbage.
3. It lists manifests again, keeps every blob a manifest written since step 1 names, and removes
   the garbage blobs.

A publisher writes its blobs before its manifest, so between the two its blobs are named by no
manifest: gc must not take them for garbage. Hence nothing younger than ``--min-age`` (default an
hour: longer than any one step's upload takes) is removed, neither blob nor damaged entry. The
window that remains: a publisher that found an *old* blob present (and so did not upload it) just
before gc removed it writes an entry naming a missing blob. That entry restores as a miss (every
blob is checked), its step runs, and the next gc removes it; no run ever gets a wrong file.
A reader restoring an entry gc removes meanwhile gets a miss the same way.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import re
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator, Protocol, Sequence, Union

from flowmake.cache import DirStore, Manifest, human_bytes
from flowmake.digest import DIGEST_BYTES
from flowmake.errors import CacheError, UsageError

if TYPE_CHECKING:
    from flowmake.cache_s3 import S3Store

    Store = Union[DirStore, S3Store]

DEFAULT_MIN_AGE = "1h"
_WORKERS = 8  # manifests read and blobs removed at once (on S3, each is a request)
_KEY = re.compile(r"[0-9a-f]{16,128}\Z")  # what cache.check_key accepts: other names are not ours
_DIGEST = re.compile(r"[0-9a-f]{%d}\Z" % (2 * DIGEST_BYTES))


@dataclass(frozen=True)
class Obj:
    name: str  # a manifest's key or a blob's digest
    size: int
    time: float  # last used (manifests), written (blobs); seconds since the epoch


class Listing(Protocol):
    url: str

    def manifests(self) -> list[Obj]: ...
    def blobs(self) -> list[Obj]: ...
    def read(self, key: str) -> bytes | None: ...
    def remove_manifest(self, key: str) -> None: ...
    def remove_blob(self, digest: str) -> None: ...
    def leftovers(self, older_than: float) -> int: ...  # temporary files of killed publishers


class DirListing:
    def __init__(self, store: DirStore) -> None:
        self.store = store
        self.url = store.url
        if not os.path.isdir(store.root):
            raise CacheError(f"no cache at {store.url}: {store.root} is not a directory",
                             hint="check [cache] url (or --cache); a cache is made by the first run that publishes")

    def _files(self, top: str) -> Iterator[tuple[str, os.stat_result]]:
        for base, _, names in os.walk(os.path.join(self.store.root, top)):
            for name in names:
                path = os.path.join(base, name)
                try:
                    yield path, os.lstat(path)
                except FileNotFoundError:  # removed meanwhile (a rename, another gc)
                    continue

    def manifests(self) -> list[Obj]:
        return [Obj(os.path.basename(p)[:-len(".json")], st.st_size, st.st_mtime)
                for p, st in self._files("ac")
                if p.endswith(".json") and _KEY.match(os.path.basename(p)[:-len(".json")])]

    def blobs(self) -> list[Obj]:
        return [Obj(os.path.basename(p), st.st_size, st.st_mtime)
                for p, st in self._files("cas") if _DIGEST.match(os.path.basename(p))]

    def read(self, key: str) -> bytes | None:
        return self.store.read_manifest(key)

    def remove_manifest(self, key: str) -> None:
        try:
            os.unlink(os.path.join(self.store.root, "ac", f"{key}.json"))
        except FileNotFoundError:
            pass

    def remove_blob(self, digest: str) -> None:
        self.store.remove_blob(digest)

    def leftovers(self, older_than: float) -> int:
        n = 0
        for top in ("ac", "cas"):
            for path, st in list(self._files(top)):
                if ".tmp-" in os.path.basename(path) and st.st_mtime < older_than:
                    try:
                        os.unlink(path)
                        n += 1
                    except FileNotFoundError:
                        pass
        return n


class S3Listing:
    def __init__(self, store: S3Store) -> None:
        self.store = store
        self.url = store.url

    def manifests(self) -> list[Obj]:
        return [Obj(*o) for o in self.store.listing("ac") if _KEY.match(o[0])]

    def blobs(self) -> list[Obj]:
        return [Obj(*o) for o in self.store.listing("cas")]

    def read(self, key: str) -> bytes | None:
        return self.store.read_manifest(key)

    def remove_manifest(self, key: str) -> None:
        self.store.remove_manifest(key)

    def remove_blob(self, digest: str) -> None:
        self.store.remove_blob(digest)

    def leftovers(self, older_than: float) -> int:
        return 0  # an upload is whole or absent; S3 keeps unfinished multipart parts out of sight


def listing(store: Store) -> Listing:
    return DirListing(store) if isinstance(store, DirStore) else S3Listing(store)


@dataclass
class Stats:
    entries: int = 0
    blobs: int = 0
    bytes: int = 0

    def __str__(self) -> str:
        return (f"{self.entries} entr{'y' if self.entries == 1 else 'ies'}, {self.blobs} "
                f"blob{'' if self.blobs == 1 else 's'}, {human_bytes(self.bytes)}")


def stats(where: Listing) -> Stats:
    """Entries, blobs, and the bytes of both."""
    manifests, blobs = where.manifests(), where.blobs()
    return Stats(len(manifests), len(blobs), sum(o.size for o in manifests) + sum(o.size for o in blobs))


@dataclass
class Collected:
    entries: int = 0
    blobs: int = 0
    bytes: int = 0
    leftovers: int = 0
    young: int = 0  # garbage blobs kept because they are younger than min_age
    kept: Stats = field(default_factory=Stats)


def gc(where: Listing, max_bytes: int, min_age: float, now: float | None = None) -> Collected:
    """Drop least recently used entries until the store holds at most ``max_bytes``, then the
    blobs no entry names (never anything younger than ``min_age`` seconds): see the docstring."""
    now = time.time() if now is None else now
    old = now - min_age
    done = Collected(leftovers=where.leftovers(old))
    manifests = where.manifests()
    blobs = {o.name: o for o in where.blobs()}
    total = sum(o.size for o in manifests) + sum(o.size for o in blobs.values())
    names: dict[str, set[str]] = {}  # entry -> the blobs it names
    live = []
    refs: dict[str, int] = {}
    read = _read_all(where, [o.name for o in manifests])
    for o in manifests:
        named = read[o.name]
        if named is not None and named <= blobs.keys():
            names[o.name] = named
            live.append(o)
        elif o.time < old:  # damaged, or names a missing blob: it could only be a miss
            where.remove_manifest(o.name)
            done.entries += 1
            done.bytes += o.size
            total -= o.size
            continue
        for d in named or ():  # a young entry, whole or not, keeps what it names
            refs[d] = refs.get(d, 0) + 1
    # Bytes gc can free: entries' manifests, and blobs once unnamed, if old enough.
    total -= sum(b.size for d, b in blobs.items() if d not in refs and b.time < old)
    live.sort(key=lambda o: (o.time, o.name))
    for o in live:
        if total <= max_bytes:
            break
        where.remove_manifest(o.name)
        done.entries += 1
        done.bytes += o.size
        total -= o.size
        for d in names.pop(o.name):
            refs[d] -= 1
            if refs[d] == 0 and blobs[d].time < old:
                total -= blobs[d].size
    # Entries written since the listing name blobs that must stay.
    seen = {o.name for o in manifests}
    for named in _read_all(where, [o.name for o in where.manifests() if o.name not in seen]).values():
        for d in named or ():
            refs[d] = refs.get(d, 0) + 1
    garbage = [b for d, b in blobs.items() if refs.get(d, 0) == 0]
    doomed = [b for b in garbage if b.time < old]
    with concurrent.futures.ThreadPoolExecutor(_WORKERS) as pool:
        list(pool.map(lambda b: where.remove_blob(b.name), doomed))
    done.blobs += len(doomed)
    done.bytes += sum(b.size for b in doomed)
    done.young = len(garbage) - len(doomed)
    done.kept = stats(where)
    return done


def _read_all(where: Listing, keys: list[str]) -> dict[str, set[str] | None]:
    """``_names`` of each key, a few at once (on S3 each is a GET)."""
    with concurrent.futures.ThreadPoolExecutor(_WORKERS) as pool:
        return dict(zip(keys, pool.map(lambda k: _names(where, k), keys)))


def _names(where: Listing, key: str) -> set[str] | None:
    """The blobs an entry names; None when it is gone or not a sound manifest."""
    try:
        data = where.read(key)
        return None if data is None else {f.digest for f in Manifest.decode(data, key).files}
    except (ValueError, CacheError):
        return None


# -- the command ---------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flowmake cache", description="Look after a shared cache "
                                "(the one flowmake.toml's [cache] names, or --cache).")
    sub = p.add_subparsers(dest="command", required=True, metavar="stats|gc")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--cache", metavar="URL", help="file:///path or s3://bucket/prefix "
                        "(default: [cache] url in flowmake.toml)")
    common.add_argument("-d", "--directory", metavar="DIR", help="where flowmake.toml is (default: .)")
    common.add_argument("--endpoint-url", metavar="URL", help="S3: the server (default: [cache] endpoint_url)")
    common.add_argument("--region", help="S3: the region (default: [cache] region)")
    sub.add_parser("stats", parents=[common], help="entries, blobs and bytes in the cache")
    g = sub.add_parser("gc", parents=[common], help="drop the least recently used entries until "
                       "the cache is under --max-size, then the blobs no entry names (whatever "
                       "[cache] mode says: that is how runs use the cache)")
    g.add_argument("--max-size", required=True, metavar="SIZE", help="e.g. 50G, 500M (decimal units; "
                   "a bare number is MB)")
    g.add_argument("--min-age", default=DEFAULT_MIN_AGE, metavar="SPAN",
                   help="never remove anything younger, so publishers writing meanwhile are safe "
                        f"(default {DEFAULT_MIN_AGE}; e.g. 30m, 0)")
    return p


def main(argv: Sequence[str]) -> int:
    """``flowmake cache ...``; errors propagate as ``FlowmakeError`` for the CLI to print."""
    from flowmake.cache import Mode, open_cache
    from flowmake.resource_units import UnitError, minutes, size_mb

    args = _parser().parse_args(list(argv))
    url, settings = _where(args)
    mode = Mode.READ if args.command == "stats" else Mode.READWRITE
    cache = open_cache(url, mode, endpoint_url=args.endpoint_url or settings.get("endpoint_url"),
                       region=args.region or settings.get("region"), profile=settings.get("profile"))
    where = listing(cache.store)  # type: ignore[arg-type]  # open_cache makes one of the two
    if args.command == "stats":
        print(f"cache {where.url}: {stats(where)}")
        return 0
    try:
        max_bytes = size_mb(args.max_size) * 10**6
        min_age = 0 if args.min_age.strip() == "0" else minutes(args.min_age) * 60
    except UnitError as e:
        raise UsageError(str(e)) from None
    done = gc(where, max_bytes, min_age)
    line = (f"cache {where.url}: removed {done.entries} entr{'y' if done.entries == 1 else 'ies'} and "
            f"{done.blobs} blob{'' if done.blobs == 1 else 's'} ({human_bytes(done.bytes)}); now {done.kept}")
    if done.leftovers:
        line += f"; {done.leftovers} temporary file(s) of interrupted publishers removed"
    print(line)
    if done.kept.bytes > max_bytes:
        print(f"flowmake: the cache is still above {human_bytes(max_bytes)}: what is younger than "
              f"--min-age {args.min_age} is kept ({done.young} unnamed blob(s) among it)", file=sys.stderr)
    return 0


def _where(args: argparse.Namespace) -> tuple[str, dict[str, str]]:
    """The cache's URL, and flowmake.toml's [cache] table (empty without one)."""
    from flowmake.settings import load_settings

    settings = load_settings(os.path.abspath(args.directory or "."))
    table: dict[str, str] = dict(getattr(settings, "cache", None) or {})
    url = args.cache or table.get("url")
    if not url:
        raise UsageError("no cache to look at", hint="give --cache URL, or set [cache] url in flowmake.toml")
    return url, table
