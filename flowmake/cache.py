"""The shared cache: what a step with this key made, kept for everyone who runs the same pipeline.

Two halves, as in Bazel's remote cache: a content-addressed store of files (a *blob* per file
digest, ``digest.py``'s digests) and an action cache, step key → *manifest* (each output's digest,
and every file, link and folder that restoring it writes). A ``BlobStore`` holds both: a local or
shared directory here, S3 in ``cache_s3``. ``Cache`` is what the planner and scheduler use:
``lookup`` (a manifest or None), ``restore`` (place outputs, each blob checked while it streams)
and ``publish`` (blobs first, the manifest last, so an entry is never seen before it is whole).

Nothing here trusts the store: a manifest is checked before use (paths relative, inside its
outputs, no ``..``, links that stay inside their folder, a folder's listing that adds up to the
digest it claims), and a blob's bytes must hash to its name and size before its file is renamed
into place. A damaged entry is a miss, never a wrong file.
"""

from __future__ import annotations

import enum
import json
import os
import re
import stat as statmod
import uuid
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Iterable, Protocol, Sequence

from flowmake.digest import DIGEST_BYTES, hasher, tree_digest
from flowmake.errors import CacheError
from flowmake.outputs import remove_path

MANIFEST_VERSION = 1
_CHUNK = 1 << 20
_HEX = re.compile(r"[0-9a-f]{16,128}\Z")
_DIGEST = re.compile(r"[0-9a-f]{%d}\Z" % (2 * DIGEST_BYTES))


class Mode(enum.Enum):
    READ = "read"  # restore only: how a lab lets everyone use what a trusted account published
    WRITE = "write"  # publish only
    READWRITE = "readwrite"


class CacheCorrupt(CacheError):
    """A blob did not hash to its name or size while restoring: nothing of that output was placed."""

    def __init__(self, path: str, why: str) -> None:
        super().__init__(f"cache entry for {path} is damaged: {why}", target=path)
        self.path = path
        self.why = why


@dataclass(frozen=True)
class FileEntry:
    path: str  # workdir-relative, POSIX
    digest: str
    size: int
    mode: int  # permission bits, exec bits included


@dataclass(frozen=True)
class Manifest:
    key: str
    outputs: dict[str, str]  # declared output (file or folder) -> its digest, as traces hold it
    files: tuple[FileEntry, ...] = ()
    links: tuple[tuple[str, str], ...] = ()  # (path, target) inside folder outputs
    dirs: tuple[str, ...] = ()  # folders inside folder outputs (empty ones count in the digest)

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def encode(self) -> bytes:
        body = {"version": MANIFEST_VERSION, "key": self.key, "outputs": self.outputs,
                "files": [[f.path, f.digest, f.size, f.mode] for f in self.files],
                "links": [list(link) for link in self.links], "dirs": list(self.dirs)}
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes, key: str) -> Manifest:
        """Parse and check a manifest; ValueError says what is wrong with it."""
        try:
            body = json.loads(data)
            if body["version"] != MANIFEST_VERSION or body["key"] != key:
                raise ValueError("another version or key")
            outputs = {_rel(p): _digest(d) for p, d in body["outputs"].items()}
            files = tuple(FileEntry(_rel(p), _digest(d), _int(n), _int(m) & 0o7777) for p, d, n, m in body["files"])
            links = tuple((_rel(p), str(t)) for p, t in body["links"])
            dirs = tuple(_rel(p) for p in body["dirs"])
        except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as e:
            raise ValueError(f"not a manifest ({type(e).__name__})") from None
        m = cls(key, outputs, files, links, dirs)
        m._check()
        return m

    def _check(self) -> None:
        """Every entry lies in exactly one declared output; folders add up to their digests."""
        if not self.outputs:
            raise ValueError("no outputs")
        roots = sorted(self.outputs)
        for a, b in zip(roots, roots[1:]):
            if b.startswith(a + "/"):
                raise ValueError(f"output {b} lies inside output {a}")
        link_paths = {p for p, _ in self.links}
        for path, target in self.links:
            root = self._root_of(path)
            resolved = os.path.normpath(os.path.join(os.path.dirname(path), target))
            if os.path.isabs(target) or not resolved.startswith(root + "/"):
                raise ValueError(f"link {path} points outside its output")
        for p in [f.path for f in self.files] + list(self.dirs) + list(link_paths):
            root = self._root_of(p)
            parts = p.split("/")
            for i in range(len(parts) - 1, 0, -1):  # never through a link: it could lead anywhere
                if "/".join(parts[:i]) in link_paths:
                    raise ValueError(f"{p} lies through a link")
                if "/".join(parts[:i]) == root:
                    break
        seen = [f.path for f in self.files] + list(self.dirs) + list(link_paths)
        if len(seen) != len(set(seen)):
            raise ValueError("a path is listed twice")
        for out, d in self.outputs.items():
            if self._is_file(out):
                entry = next(f for f in self.files if f.path == out)
                if entry.digest != d:
                    raise ValueError(f"{out}: its file's digest is not the output's")
                continue
            pre = out + "/"
            cut = len(pre)
            tree = tree_digest([(f.path[cut:], f.digest) for f in self.files if f.path.startswith(pre)],
                               [p[cut:] for p in self.dirs if p.startswith(pre)],
                               [(p[cut:], t) for p, t in self.links if p.startswith(pre)])
            if tree != d:
                raise ValueError(f"{out}: its listing does not add up to its digest")

    def _root_of(self, path: str) -> str:
        for out in self.outputs:
            if path == out or path.startswith(out + "/"):
                return out
        raise ValueError(f"{path} is in none of the outputs")

    def _is_file(self, out: str) -> bool:
        return any(f.path == out for f in self.files)

    def entries_of(self, out: str) -> tuple[list[FileEntry], list[str], list[tuple[str, str]]]:
        pre = out + "/"
        return ([f for f in self.files if f.path == out or f.path.startswith(pre)],
                [d for d in self.dirs if d.startswith(pre)],
                [link for link in self.links if link[0].startswith(pre)])


def _rel(path: object) -> str:
    """A workdir-relative POSIX path with nothing that could climb out of the workdir."""
    if not isinstance(path, str) or not path or "\0" in path or "\\" in path:
        raise ValueError(f"bad path {path!r}")
    if path.startswith("/") or any(part in ("", ".", "..") for part in path.split("/")):
        raise ValueError(f"path {path!r} is not inside the workdir")
    return path


def _digest(d: object) -> str:
    if not isinstance(d, str) or not _DIGEST.match(d):
        raise ValueError(f"bad digest {d!r}")
    return d


def _int(n: object) -> int:
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"bad number {n!r}")
    return n


class BlobStore(Protocol):
    url: str
    writable: bool

    def read_manifest(self, key: str) -> bytes | None: ...
    def write_manifest(self, key: str, data: bytes) -> None: ...  # whole or absent; first writer wins
    def has_blob(self, digest: str) -> bool: ...
    def open_blob(self, digest: str) -> BinaryIO | None: ...
    def write_blob(self, digest: str, src: str) -> None: ...  # from a file with that digest; whole or absent
    def remove_blob(self, digest: str) -> None: ...
    def used(self, key: str) -> None: ...  # a hit: least-recently-used bookkeeping for gc


def check_key(key: str) -> str:
    if not _HEX.match(key):
        raise CacheError(f"not a step key: {key!r}")
    return key


class DirStore:
    """A local or shared directory (NFS, Lustre): ``ac/<key>.json`` and ``cas/<d[:2]>/<d>``.

    No locks: every file is written under a unique temporary name in its final folder and renamed
    (atomic on POSIX filesystems, NFS included), blobs before manifests. Two publishers of one key
    write equal bytes; whichever rename lands last leaves a whole file either way.
    """

    def __init__(self, root: str, writable: bool) -> None:
        self.root = os.path.abspath(root)
        self.url = "file://" + self.root
        self.writable = writable

    def _manifest(self, key: str) -> str:
        return os.path.join(self.root, "ac", check_key(key) + ".json")

    def _blob(self, digest: str) -> str:
        _digest(digest)
        return os.path.join(self.root, "cas", digest[:2], digest)

    def read_manifest(self, key: str) -> bytes | None:
        try:
            with open(self._manifest(key), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def write_manifest(self, key: str, data: bytes) -> None:
        path = self._manifest(key)
        if os.path.exists(path):
            return
        tmp = _tmp_name(path)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def has_blob(self, digest: str) -> bool:
        return os.path.exists(self._blob(digest))

    def open_blob(self, digest: str) -> BinaryIO | None:
        try:
            return open(self._blob(digest), "rb")
        except FileNotFoundError:
            return None

    def write_blob(self, digest: str, src: str) -> None:
        path = self._blob(digest)
        if os.path.exists(path):
            return
        tmp = _tmp_name(path)
        try:
            with open(src, "rb") as fin, open(tmp, "wb") as fout:
                got = _copy_hashing(fin, fout)
                fout.flush()
                os.fsync(fout.fileno())
            if got[0] != digest:  # the file changed after it was hashed: not this blob
                raise CacheError(f"{src} changed while it was published")
            os.chmod(tmp, 0o444)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def remove_blob(self, digest: str) -> None:
        try:
            os.unlink(self._blob(digest))
        except FileNotFoundError:
            pass

    def used(self, key: str) -> None:
        try:
            os.utime(self._manifest(key))
        except OSError:  # gone (collected meanwhile) or not ours to touch: only gc's order suffers
            pass


def _tmp_name(path: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return f"{path}.tmp-{uuid.uuid4().hex[:12]}"


def _copy_hashing(fin: BinaryIO, fout: BinaryIO) -> tuple[str, int]:
    h, n = hasher(), 0
    while True:
        chunk = fin.read(_CHUNK)
        if not chunk:
            return h.hexdigest(DIGEST_BYTES), n
        h.update(chunk)
        fout.write(chunk)
        n += len(chunk)


@dataclass
class Restored:
    bytes: int = 0
    files: dict[str, str] = field(default_factory=dict)  # each file placed -> its digest


@dataclass
class Published:
    bytes: int = 0
    blobs: int = 0


class Cache:
    def __init__(self, store: BlobStore, mode: Mode) -> None:
        self.store = store
        self.mode = mode
        self.url = store.url
        self.can_read = mode is not Mode.WRITE
        self.can_write = mode is not Mode.READ
        self.warnings: list[str] = []

    def lookup(self, key: str) -> Manifest | None:
        """The manifest of ``key``; None when absent, unreadable or not a sound manifest."""
        if not self.can_read:
            return None
        try:
            data = self.store.read_manifest(key)
        except (OSError, CacheError) as e:
            self.warnings.append(f"cache {self.url} could not be read: {getattr(e, 'message', e)}")
            return None
        if data is None:
            return None
        try:
            manifest = Manifest.decode(data, key)
        except ValueError as e:
            self.warnings.append(f"cache entry {key} ignored: {e}")
            return None
        if self.can_write:
            self.store.used(key)
        return manifest

    def restore(self, manifest: Manifest, workdir: str, paths: Iterable[str] | None = None) -> Restored:
        """Place the outputs ``paths`` (all when None) of ``manifest`` under ``workdir``: all of them
        or, when a blob is damaged or missing, none (each is fetched beside its place first)."""
        done = Restored()
        staged: list[tuple[str, str]] = []  # (temporary name, final place), renamed at the end
        try:
            for out in (manifest.outputs if paths is None else paths):
                files, dirs, links = manifest.entries_of(out)
                final = os.path.join(workdir, out)
                os.makedirs(os.path.dirname(final) or workdir, exist_ok=True)
                tmp = _tmp_name(final)
                staged.append((tmp, final))
                if len(files) == 1 and files[0].path == out and not dirs and not links:
                    done.bytes += self._fetch(files[0], tmp, out)
                else:  # a folder is built beside its place too
                    os.mkdir(tmp)
                    for d in sorted(dirs):
                        os.makedirs(os.path.join(tmp, d[len(out) + 1:]), exist_ok=True)
                    for f in files:
                        target = os.path.join(tmp, f.path[len(out) + 1:])
                        os.makedirs(os.path.dirname(target), exist_ok=True)
                        done.bytes += self._fetch(f, target, out)
                    for p, t in links:
                        where = os.path.join(tmp, p[len(out) + 1:])
                        os.makedirs(os.path.dirname(where), exist_ok=True)
                        os.symlink(t, where)
                done.files.update((f.path, f.digest) for f in files)
            for tmp, final in staged:
                _swap(tmp, final)
        finally:
            for tmp, _ in staged:
                if os.path.lexists(tmp):
                    remove_path(tmp)
        return done

    def _fetch(self, entry: FileEntry, dest: str, out: str) -> int:
        """Stream one blob to ``dest`` (a new file), checking its digest and size as it comes."""
        try:
            src = self.store.open_blob(entry.digest)
        except (OSError, CacheError) as e:
            raise CacheCorrupt(out, f"blob {entry.digest} could not be read: {e}") from None
        if src is None:
            raise CacheCorrupt(out, f"blob {entry.digest} is missing")
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with src, os.fdopen(fd, "wb") as fout:
            try:
                digest, size = _copy_hashing(src, fout)
            except OSError as e:
                raise CacheCorrupt(out, f"blob {entry.digest} broke off: {e}") from None
        if size != entry.size or digest != entry.digest:
            if self.can_write and self.store.writable:
                self.store.remove_blob(entry.digest)  # so the next publisher replaces it
            raise CacheCorrupt(out, f"blob {entry.digest} has {size} bytes hashing to {digest}, "
                                    f"not {entry.size} bytes hashing to {entry.digest}")
        os.chmod(dest, entry.mode & 0o777)
        return size

    def publish(self, key: str, outputs: Sequence[str], workdir: str,
                digest: Callable[[str], str | None]) -> Published:
        """Blobs not yet in the store, then the manifest: a reader sees a whole entry or none.
        ``digest`` is the run's digester (workdir-relative paths): nothing is read to be hashed twice."""
        done = Published()
        if not self.can_write or self.store.read_manifest(check_key(key)) is not None:
            return done
        manifest = describe(key, outputs, workdir, digest)
        for f in manifest.files:
            if not self.store.has_blob(f.digest):
                self.store.write_blob(f.digest, os.path.join(workdir, f.path))
                done.bytes += f.size
                done.blobs += 1
        self.store.write_manifest(key, manifest.encode())
        return done


def human_bytes(n: int) -> str:
    """Sizes as the summary line and ``flowmake cache`` say them: 24 B, 1.5 MB, 3.2 GB."""
    if n < 1000:
        return f"{n} B"
    for unit, size in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _swap(tmp: str, final: str) -> None:
    """Rename ``tmp`` onto ``final``, whatever is there now: a file (or a link: the link itself,
    never what it points to) is replaced in one rename; a stale folder is removed first."""
    if os.path.lexists(final) and (os.path.isdir(tmp) or os.path.isdir(final) and not os.path.islink(final)):
        remove_path(final)  # a rename cannot put a folder over a file, nor anything over a folder
    os.replace(tmp, final)


def describe(key: str, outputs: Sequence[str], workdir: str, digest: Callable[[str], str | None]) -> Manifest:
    """The manifest of outputs on disk (each must exist: the step just made them)."""
    out_digests: dict[str, str] = {}
    files: list[FileEntry] = []
    links: list[tuple[str, str]] = []
    dirs: list[str] = []
    for out in outputs:
        d = digest(out)
        if d is None:
            raise CacheError(f"{out} vanished before it was published", target=out)
        out_digests[out] = d
        full = os.path.join(workdir, out)
        st = os.lstat(full)
        if not statmod.S_ISDIR(st.st_mode):
            files.append(FileEntry(out, d, st.st_size, st.st_mode & 0o777))
            continue
        for base, subdirs, names in os.walk(full):
            rel = os.path.relpath(base, workdir).replace(os.sep, "/")
            for name in list(subdirs):
                p = os.path.join(base, name)
                if os.path.islink(p):
                    links.append((f"{rel}/{name}", os.readlink(p)))
                    subdirs.remove(name)
                else:
                    dirs.append(f"{rel}/{name}")
            for name in names:
                p = os.path.join(base, name)
                if os.path.islink(p):
                    links.append((f"{rel}/{name}", os.readlink(p)))
                    continue
                fd = digest(f"{rel}/{name}")
                if fd is None:
                    raise CacheError(f"{rel}/{name} vanished before it was published", target=out)
                fst = os.lstat(p)
                files.append(FileEntry(f"{rel}/{name}", fd, fst.st_size, fst.st_mode & 0o777))
    return Manifest(key, out_digests, tuple(files), tuple(links), tuple(dirs))


def open_cache(url: str, mode: Mode, *, endpoint_url: str | None = None, region: str | None = None,
               profile: str | None = None) -> Cache:
    """``file:///path``, a plain path, or ``s3://bucket/prefix``."""
    writable = mode is not Mode.READ
    if url.startswith("s3://"):
        from flowmake.cache_s3 import S3Store  # boto3 is imported only for an S3 cache
        return Cache(S3Store(url, endpoint_url=endpoint_url, region=region, profile=profile, writable=writable), mode)
    if url.startswith("file://"):
        path = url[len("file://"):]
    elif "://" in url:
        raise CacheError(f"cache URL {url!r}: only file:// and s3:// caches exist",
                         hint="e.g. --cache file:///lab/cache or --cache s3://bucket/prefix")
    else:
        path = url
    if not path:
        raise CacheError(f"cache URL {url!r} names no directory")
    return Cache(DirStore(path, writable), mode)
