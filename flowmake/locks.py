"""Per-output locks, so two flowmake processes never build the same step at once.

One lock file per output under ``.flowmake/locks/``, locked with ``flock`` — the kernel lock that
``filelock.FileLock`` takes on Unix, taken here directly because filelock's bookkeeping costs ~0.3 ms
per lock and a run takes one per step. The kernel (and NFS's lock manager) releases it when the
holder dies, however it dies, so a lock left by a dead process recovers by itself. The holder writes
"host pid" into the lock file so a waiting invocation can say who it is waiting for.

Where the filesystem refuses ``flock`` (some NFS mounts) we fall back to ``filelock.SoftFileLock``:
a lock file whose existence is the lock. Its owner is recorded the same way, and a soft lock whose
owner is a dead process on this host is removed and taken over.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket

from blake3 import blake3
from filelock import SoftFileLock, Timeout

_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


class OutputLocks:
    def __init__(self, root: str) -> None:
        self.dir = os.path.join(root, "locks")
        os.makedirs(self.dir, exist_ok=True)
        self._held: dict[str, list[int | SoftFileLock]] = {}
        self._host = socket.gethostname()
        self._me = f"{self._host} {os.getpid()}"
        self._soft = False  # set once flock turned out not to work here

    def _file(self, output: str) -> str:
        return os.path.join(self.dir, blake3(output.encode()).hexdigest()[:24] + ".lock")

    def try_acquire(self, step_id: str, outputs: tuple[str, ...]) -> bool:
        """Take every output's lock or none of them; never blocks."""
        taken: list[int | SoftFileLock] = []
        for out in sorted(outputs):
            lock = self._try_one(self._file(out))
            if lock is None:
                for t in taken:
                    _release(t)
                return False
            taken.append(lock)
        self._held[step_id] = taken
        return True

    def _try_one(self, path: str) -> int | SoftFileLock | None:
        if self._soft:
            return self._try_soft(path)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except OSError as e:
            os.close(fd)
            if e.errno not in _NO_FLOCK:
                raise
            self._soft = True
            return self._try_soft(path)
        _write_owner(fd, self._me)
        return fd

    def _try_soft(self, path: str) -> SoftFileLock | None:
        soft = path + ".soft"
        for _ in range(2):
            lock = SoftFileLock(soft)
            try:
                lock.acquire(timeout=0)
            except Timeout:
                if not self._owner_dead(soft):
                    return None
                _unlink(soft)  # its owner died without cleaning up: take it over
                continue
            with open(path, "w") as fh:
                fh.write(self._me)
            return lock
        return None

    def _owner_dead(self, soft_lock: str) -> bool:
        host, _, pid = self.holder_of(soft_lock[: -len(".soft")]).partition(" ")
        if host != self._host or not pid.isdigit():
            return False  # another host's process cannot be checked from here
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def holder_of(self, lock_path: str) -> str:
        try:
            with open(lock_path) as fh:
                return fh.read().strip() or "another flowmake"
        except OSError:
            return "another flowmake"

    def holder(self, output: str) -> str:
        """Who holds the lock on ``output``: "host pid" of that flowmake."""
        return self.holder_of(self._file(output))

    def release(self, step_id: str) -> None:
        for lock in self._held.pop(step_id, []):
            _release(lock)

    def release_all(self) -> None:
        for step_id in list(self._held):
            self.release(step_id)


def _write_owner(fd: int, me: str) -> None:
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, me.encode(), 0)
    except OSError:
        pass  # the owner is for messages only


def _release(lock: int | SoftFileLock) -> None:
    if isinstance(lock, int):
        os.close(lock)  # closing the only descriptor drops the flock
    else:
        lock.release()


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
