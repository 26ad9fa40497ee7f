"""Per-output locks, so two flowmake processes never build the same step at once.

One lock file per output under ``.flowmake/locks/``, taken with ``filelock`` (fcntl, which the kernel
and NFS's lock manager release when the holder dies — stale locks recover by themselves). The holder
writes its host and pid into a sidecar so a waiting invocation can say who it is waiting for.
"""

from __future__ import annotations

import os
import socket

from blake3 import blake3
from filelock import FileLock, Timeout


class OutputLocks:
    def __init__(self, root: str) -> None:
        self.dir = os.path.join(root, "locks")
        os.makedirs(self.dir, exist_ok=True)
        self._held: dict[str, list[FileLock]] = {}
        self._me = f"{socket.gethostname()} {os.getpid()}"

    def _file(self, output: str) -> str:
        return os.path.join(self.dir, blake3(output.encode()).hexdigest()[:24] + ".lock")

    def try_acquire(self, step_id: str, outputs: tuple[str, ...]) -> bool:
        """Take every output's lock or none of them; never blocks."""
        taken: list[FileLock] = []
        for out in sorted(outputs):
            lock = FileLock(self._file(out))
            try:
                lock.acquire(timeout=0)
            except Timeout:
                for t in taken:
                    t.release()
                return False
            taken.append(lock)
            try:
                with open(lock.lock_file + ".owner", "w") as fh:
                    fh.write(self._me)
            except OSError:
                pass
        self._held[step_id] = taken
        return True

    def holder(self, output: str) -> str:
        try:
            with open(self._file(output) + ".owner") as fh:
                return fh.read().strip()
        except OSError:
            return "another flowmake"

    def release(self, step_id: str) -> None:
        for lock in self._held.pop(step_id, []):
            lock.release()

    def release_all(self) -> None:
        for step_id in list(self._held):
            self.release(step_id)
