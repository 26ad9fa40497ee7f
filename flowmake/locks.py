"""Per-output locks, so two flowmake processes never build the same step at once.

Every output's lock is one byte of ``.flowmake/locks/outputs.lock``, at an offset given by the
output's hash, taken with a POSIX record lock (``fcntl``; NFS carries these through its lock manager).
One file instead of one per output: creating a file costs ~0.5 ms on ext4 here, and a run takes one
lock per step. The kernel releases a dead holder's locks however it died, so a lock left by a dead
process recovers by itself, and it records the holder: ``F_GETLK`` names its pid, which is how a
waiting invocation says whom it is waiting for. Record locks belong to the process, are not inherited
by jobs, and vanish if the process closes *any* descriptor of the file: only this class opens it.

Where the filesystem refuses record locks (some NFS mounts) we fall back to ``filelock.SoftFileLock``:
one lock file per output whose existence is the lock. Its owner ("host pid") is written beside it,
and a soft lock whose owner is a dead process on this host is removed and taken over.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct

from blake3 import blake3
from filelock import SoftFileLock, Timeout

_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}
_FLOCK = "hhqqi4x"  # struct flock on Linux (64-bit off_t): type, whence, start, len, pid
_SPACE = 1 << 62  # offsets for output hashes; a collision only makes two steps take turns


class OutputLocks:
    def __init__(self, root: str) -> None:
        self.dir = os.path.join(root, "locks")
        os.makedirs(self.dir, exist_ok=True)
        self._held: dict[str, list[int | SoftFileLock]] = {}
        self._host = socket.gethostname()
        self._me = f"{self._host} {os.getpid()}"
        self._fd: int | None = None
        self._soft = False  # set once record locks turned out not to work here

    def _offset(self, output: str) -> int:
        return int.from_bytes(blake3(os.fsencode(output)).digest()[:8], "big") % _SPACE

    def _file(self, output: str) -> str:
        return os.path.join(self.dir, blake3(os.fsencode(output)).hexdigest()[:24] + ".lock")

    def _lock_fd(self) -> int:
        if self._fd is None:
            self._fd = os.open(os.path.join(self.dir, "outputs.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        return self._fd

    def try_acquire(self, step_id: str, outputs: tuple[str, ...]) -> bool:
        """Take every output's lock or none of them; never blocks."""
        taken: list[int | SoftFileLock] = []
        for out in sorted(outputs):
            lock = self._try_one(out)
            if lock is None:
                for t in taken:
                    self._release(t)
                return False
            taken.append(lock)
        self._held[step_id] = taken
        return True

    def _try_one(self, output: str) -> int | SoftFileLock | None:
        if self._soft:
            return self._try_soft(self._file(output))
        offset = self._offset(output)
        try:
            fcntl.lockf(self._lock_fd(), fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset)
        except (BlockingIOError, PermissionError):
            return None
        except OSError as e:
            if e.errno not in _NO_LOCKS:
                raise
            self._soft = True
            return self._try_soft(self._file(output))
        return offset

    def _try_soft(self, path: str) -> SoftFileLock | None:
        soft = path + ".soft"
        for _ in range(2):
            lock = SoftFileLock(soft)
            try:
                lock.acquire(timeout=0)
            except Timeout:
                if not self._owner_dead(path):
                    return None
                _unlink(soft)  # its owner died without cleaning up: take it over
                continue
            with open(path, "w") as fh:
                fh.write(self._me)
            return lock
        return None

    def _owner_dead(self, path: str) -> bool:
        host, _, pid = _read(path).partition(" ")
        if host != self._host or not pid.isdigit():
            return False  # another host's process cannot be checked from here
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def holder(self, output: str) -> str:
        """Who holds the lock on ``output``, as "host pid" (the pid as the lock manager reports it)."""
        if self._soft:
            return _read(self._file(output)) or "another flowmake"
        query = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, self._offset(output), 1, 0)
        try:
            kind, _, _, _, pid = struct.unpack(_FLOCK, fcntl.fcntl(self._lock_fd(), fcntl.F_GETLK, query))
        except OSError:
            return "another flowmake"
        return f"{self._host} {pid}" if kind != fcntl.F_UNLCK and pid > 0 else "another flowmake"

    def _release(self, lock: int | SoftFileLock) -> None:
        if isinstance(lock, int):
            fcntl.lockf(self._lock_fd(), fcntl.LOCK_UN, 1, lock)
        else:
            lock.release()

    def release(self, step_id: str) -> None:
        for lock in self._held.pop(step_id, []):
            self._release(lock)

    def release_all(self) -> None:
        """Release everything and close the lock file (the end of a run)."""
        for step_id in list(self._held):
            self.release(step_id)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _read(path: str) -> str:
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return ""


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
