"""Content digests of files and directories, behind a stat cache.

The planner asks ``Digester.digest(path)`` for every input and output it looks at. A file is read
only when its stat identity (device, inode, size, mtime_ns, ctime_ns) differs from the one recorded
with its last digest, so a ``touch`` costs one re-hash and an unchanged tree costs one ``stat`` per
file. mtimes never decide freshness; they only key this cache.

Digest format (decided here, used everywhere): 32 lowercase hex characters, the first 128 bits of
BLAKE3, no algorithm prefix. A file's digest equals ``b3sum --length 16 FILE``. 128 bits keep traces
small and make accidental collisions impossible in practice; a change of algorithm or length is a
store format and key version bump, not something each digest carries.

A directory's digest is BLAKE3 in derive-key mode (so it can never equal a file's digest) over its
entries sorted by relative POSIX path: ``f\\0path\\0digest\\n`` for files, ``d\\0path\\0\\n`` for
subdirectories (so empty directories count), ``l\\0path\\0target\\n`` for symlinks inside it (not
followed: links to directories could loop). Timestamps and permissions are not part of it.
"""

from __future__ import annotations

import functools
import os
import stat as statmod
import time
from typing import Any, Iterable, Iterator, NamedTuple

import blake3

DIGEST_BYTES = 16  # 128-bit digests, 32 hex characters
MMAP_THRESHOLD = 8 * 1024 * 1024  # above this, mmap + multithreaded BLAKE3
# A file whose mtime/ctime is this close to "now" when hashed may still be written within the same
# timestamp tick without changing its stat identity (ninja's "racy" mtime problem; NFS and FAT have
# 1-2 s granularity). Its cache entry is stored flagged and the file is re-hashed once next time.
RACY_WINDOW_NS = 2_000_000_000
RACY = -1  # stored in place of ctime_ns in a flagged entry: never matches a real stat
_DIR_CONTEXT = "flowmake 2026 directory merkle digest v1"

# (dev, ino, size, mtime_ns, ctime_ns, digest)
Entry = tuple[int, int, int, int, int, str]


class StatCache:
    """path -> (dev, ino, size, mtime_ns, ctime_ns, digest), remembering which paths changed.

    A plain dict of tuples underneath: at 100k entries it costs ~20 MB and O(1) per lookup. The
    store loads it at start and saves only ``take_changes()`` at flush, so a run that hashes ten
    files appends ten records, not 100k.
    """

    __slots__ = ("_data", "_changed")

    def __init__(self, data: dict[str, Entry] | None = None) -> None:
        self._data: dict[str, Entry] = data if data is not None else {}
        self._changed: set[str] = set()

    def get(self, path: str) -> Entry | None:
        return self._data.get(path)

    def __getitem__(self, path: str) -> Entry:
        return self._data[path]

    def __setitem__(self, path: str, entry: Entry) -> None:
        if self._data.get(path) != entry:
            self._data[path] = entry
            self._changed.add(path)

    def __delitem__(self, path: str) -> None:
        del self._data[path]
        self._changed.add(path)

    def discard(self, path: str) -> None:
        if path in self._data:
            del self._data[path]
            self._changed.add(path)

    def __contains__(self, path: object) -> bool:
        return path in self._data

    def __len__(self) -> int:
        return len(self._data)

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def items(self) -> Iterator[tuple[str, Entry]]:
        return iter(self._data.items())

    def take_changes(self) -> list[tuple[str, Entry | None]]:
        """Entries changed since the last call (None: removed), and forget that they changed."""
        changes = [(p, self._data.get(p)) for p in self._changed]
        self._changed = set()
        return changes


def _tree_digest(lines: list[tuple[str, str]]) -> str:
    lines.sort()
    hasher = blake3.blake3(derive_key_context=_DIR_CONTEXT)
    hasher.update("".join(line for _, line in lines).encode("utf-8", "surrogateescape"))
    return hasher.hexdigest(DIGEST_BYTES)


def tree_digest(files: Iterable[tuple[str, str]], dirs: Iterable[str] = (), links: Iterable[tuple[str, str]] = ()) -> str:
    """The digest a directory holding exactly these entries has (paths relative to it): how a
    cache manifest's tree is checked against the digest it claims, before anything is placed."""
    lines = [(p, f"f\0{p}\0{d}\n") for p, d in files]
    lines += [(p, f"d\0{p}\0\n") for p in dirs]
    lines += [(p, f"l\0{p}\0{t}\n") for p, t in links]
    return _tree_digest(lines)


def hasher() -> Any:
    """A streaming hasher whose ``hexdigest(DIGEST_BYTES)`` is a file's digest."""
    return blake3.blake3()


def hash_bytes(data: bytes) -> str:
    return blake3.blake3(data).hexdigest(DIGEST_BYTES)


def _hash_file(path: str, size: int) -> str:
    """Read and hash one file. Tests monkeypatch this to count reads."""
    if size > MMAP_THRESHOLD:
        hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
        hasher.update_mmap(path)
        return hasher.hexdigest(DIGEST_BYTES)
    with open(path, "rb") as f:
        return blake3.blake3(f.read()).hexdigest(DIGEST_BYTES)


class Stat(NamedTuple):
    """What digests need of ``os.stat``: a third of the memory of a full stat_result, which
    matters with one memoised per path of a 100,000-step plan."""

    st_mode: int
    st_dev: int
    st_ino: int
    st_size: int
    st_mtime_ns: int
    st_ctime_ns: int


_new_stat = functools.partial(tuple.__new__, Stat)  # Stat(...) runs Python code; this does not


_sys_stat = os.stat  # the one system call per file planning makes (tests count calls here)


def _normal(path: str) -> str:
    """``os.path.normpath``, skipped for the paths it would not change (nearly all that planning
    sees: they come from formatted patterns)."""
    if path and "//" not in path and "/." not in path and path[0] != "." and path[-1] != "/":
        return path
    return os.path.normpath(path)


def _parent(path: str) -> str:
    i = path.rfind("/")
    return path[:i] if i > 0 else ("/" if i == 0 else "")


_UNKNOWN = object()


def _identity(st: os.stat_result | Stat) -> tuple[int, int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class Digester:
    """Digests of files and directories for one process.

    ``stat`` results are memoised for the life of the Digester: planning assumes the tree does not
    change under it. Whoever changes files (the scheduler, after a job wrote its outputs) must call
    ``invalidate(path)`` before asking for their digests again.
    """

    def __init__(self, stat_cache: StatCache) -> None:
        self.stat_cache = stat_cache
        self._stats: dict[str, Stat | None] = {}
        self._dirs: dict[str, str] = {}
        self._children: dict[str, set[str]] = {}
        # path as asked -> digest: planning asks for the same paths several times per step.
        self._memo: dict[str, str | None] = {}
        self.files_hashed = 0  # how many files were actually read (for reports and tests)
        self.bytes_hashed = 0

    # Lookups use get() with a sentinel, not try/except: most first lookups miss, and a raised
    # KeyError costs more than the lookup (planning does a few hundred thousand).

    def stat(self, path: str) -> Stat | None:
        """``os.stat`` (following symlinks), memoised; None when the path does not exist."""
        st = self._stats.get(path, _UNKNOWN)
        if st is not _UNKNOWN:
            return st  # type: ignore[return-value]  # not the _UNKNOWN sentinel
        return self._stat_normalised(_normal(path))

    def _stat_normalised(self, path: str) -> Stat | None:
        # Written out rather than split into helpers: planning calls this once per file it sees.
        stats = self._stats
        st = stats.get(path, _UNKNOWN)
        if st is not _UNKNOWN:
            return st  # type: ignore[return-value]  # not the _UNKNOWN sentinel
        i = path.rfind("/")
        parent = path[:i] if i > 0 else ("/" if i == 0 else "")
        if i > 0 and stats.get(parent, _UNKNOWN) is None:
            st = None  # in a folder that does not exist (a dry-run of a clean tree: most outputs)
        else:
            try:
                s = _sys_stat(path)
                st = _new_stat((s.st_mode, s.st_dev, s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns))
            except (FileNotFoundError, NotADirectoryError):
                st = None
                if parent and parent not in stats:
                    self._stat_normalised(parent)  # so its other missing files cost no system call
        stats[path] = st
        kids = self._children.get(parent)  # see _note_child
        if kids is None:
            self._children[parent] = {path}
        else:
            kids.add(path)
        return st

    def _note_child(self, path: str) -> None:
        # parent -> memoised children, so invalidate() costs O(subtree), not O(everything memoised)
        parent = _parent(path)
        kids = self._children.get(parent)
        if kids is None:
            self._children[parent] = {path}
        else:
            kids.add(path)

    def invalidate(self, path: str) -> None:
        """Forget memoised stats and digests for ``path`` and everything under it (it was just
        rewritten), and the digests of the directories above it."""
        self._memo.pop(path, None)
        self._stats.pop(path, None)
        path = os.path.normpath(path)
        self._memo.pop(path, None)
        todo = [path]
        while todo:
            p = todo.pop()
            self._stats.pop(p, None)
            self._dirs.pop(p, None)
            self._memo.pop(p, None)
            todo.extend(self._children.pop(p, ()))
        # Directories above it: their digests are stale, and one may have just been created.
        parent = os.path.dirname(path)
        while parent and parent != path:
            self._dirs.pop(parent, None)
            self._stats.pop(parent, None)
            self._memo.pop(parent, None)
            path, parent = parent, os.path.dirname(parent)

    def digest(self, path: str, *, settled: bool = False) -> str | None:
        """Hex digest of a file or directory, None if it does not exist.

        ``settled=True`` says no process can still be writing the path (the job that made it has
        exited), so a recent mtime is not racy: a step's fresh outputs are then not re-read by the
        next run. Without it, files changed within ``RACY_WINDOW_NS`` are re-hashed once next run.
        """
        digest = self._memo.get(path, _UNKNOWN)
        if digest is not _UNKNOWN:
            return digest  # type: ignore[return-value]  # not the _UNKNOWN sentinel
        digest = self._digest(_normal(path), settled)
        self._memo[path] = digest
        return digest

    def record(self, path: str, digest: str) -> None:
        """Enter a file this process has just written whole, and whose digest it checked while
        writing (a restore from the cache), so it is never read to be hashed again. Not flagged
        racy: nothing else writes a file before it is renamed into place."""
        self.invalidate(path)
        path = _normal(path)
        s = os.stat(path)
        self.stat_cache[path] = (*_identity(s), digest)

    def _digest(self, path: str, settled: bool) -> str | None:
        st = self._stat_normalised(path)  # digest() normalised it already: not twice per file
        if st is None:
            self.stat_cache.discard(path)  # so the store does not carry deleted files forever
            return None
        if statmod.S_ISDIR(st.st_mode):
            return self._digest_dir(path, settled)
        try:
            return self._digest_file(path, st, settled)
        except FileNotFoundError:  # deleted between stat and read
            self.invalidate(path)
            return None

    def _digest_file(self, path: str, st: Stat, settled: bool = False) -> str:
        if not statmod.S_ISREG(st.st_mode):
            # A FIFO or device: reading could block forever or never end. Its kind is its content.
            return hash_bytes(f"special\0{statmod.S_IFMT(st.st_mode)}".encode())
        entry = self.stat_cache._data.get(path)
        ident = st[1:]  # (dev, ino, size, mtime_ns, ctime_ns): Stat's fields after the mode
        if entry is not None and entry[:5] == ident:
            return entry[5]
        now = time.time_ns()
        digest = _hash_file(path, st.st_size)
        self.files_hashed += 1
        self.bytes_hashed += st.st_size
        # Re-stat: if the file changed while we read it, the digest may describe neither version.
        try:
            after = _identity(os.stat(path))
        except FileNotFoundError:
            after = None
        racy = after != ident or (
            not settled and now - max(st.st_mtime_ns, st.st_ctime_ns) < RACY_WINDOW_NS
        )
        if racy:
            self.stat_cache[path] = (*ident[:4], RACY, digest)
        else:
            self.stat_cache[path] = (*ident, digest)
        return digest

    def _digest_dir(self, path: str, settled: bool = False) -> str:
        cached = self._dirs.get(path)
        if cached is not None:
            return cached
        lines: list[tuple[str, str]] = []
        self._walk(path, "", lines, settled)
        digest = _tree_digest(lines)
        self._dirs[path] = digest
        return digest

    def _walk(self, root: str, rel: str, out: list[tuple[str, str]], settled: bool) -> None:
        base = os.path.join(root, rel) if rel else root
        with os.scandir(base) as it:
            entries = list(it)
        for e in entries:
            rpath = f"{rel}/{e.name}" if rel else e.name
            full = os.path.join(root, rpath)
            if e.is_symlink():
                out.append((rpath, f"l\0{rpath}\0{os.readlink(full)}\n"))
            elif e.is_dir(follow_symlinks=False):
                out.append((rpath, f"d\0{rpath}\0\n"))
                self._note_child(os.path.normpath(full))
                self._walk(root, rpath, out, settled)
            else:
                st = self.stat(full)
                if st is None:  # vanished while we walked
                    continue
                try:
                    digest = self._digest_file(os.path.normpath(full), st, settled)
                except FileNotFoundError:
                    continue
                out.append((rpath, f"f\0{rpath}\0{digest}\n"))
