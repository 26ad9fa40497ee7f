"""Other flowmake runs on this workdir, as this run's scheduler sees them.

The store loaded at the start is a snapshot. The output locks say who is building what now; what
other runs appended since says what they finished, and their open in-flight markers say what a run
that died left half written. A step whose lock this run takes may still be written by such a dead
run's job (``PR_SET_PDEATHSIG`` kills a job's shell with its flowmake, not what the shell started):
before this run takes the step over it stops that job's process group (``take_over``), and the
scheduler then starts from a clean output.

Reloading the store costs as much as the start, so ``take_over`` does it only when a run may have
died with the step in flight: a run seen alive (by its segment's lock) is now dead, or a segment
written since this run loaded the store belongs to a dead run (a listing, a lock test and a stat
per segment tell), or the caller knows the output was in flight when the store was loaded
(``force``: that run may have died before this scheduler first looked).
"""

from __future__ import annotations

import os
import signal
import time
from typing import Callable, Iterable

from flowmake import journal
from flowmake.jobs import RUN_ENV, run_id
from flowmake.outputs import ctime_ns
from flowmake.locks import OutputLocks
from flowmake.records import Marker, Trace
from flowmake.store import Store

# Segment mtimes are compared with the time this run loaded the store. Coarse filesystem clocks
# (and an NFS server's clock, which sets the mtime) may lag ours: this much earlier still counts.
MTIME_SLACK_NS = 2_000_000_000
STOP_WAIT_S = 2.0  # how long a SIGKILLed process group may take to vanish before we go on anyway


class Peers:
    def __init__(self, store: Store, workdir: str) -> None:
        self.workdir = workdir
        self.log_dir = store.log_dir
        self.host = journal.hostname()
        self._since_ns = _own_start_ns(self.log_dir, self.host)
        self._read_dead: set[str] = set()  # segments of dead runs read since they died
        self._seen_live = {n for n in self._segments() if journal.is_live(self._p(n), self.host)}
        self._stopped: set[int] = set()
        self._snapshot: Store | None = None

    def snapshot(self, fresh: bool = False) -> Store:
        """A read-only view of what every run recorded; reloaded when ``fresh``."""
        if self._snapshot is None or fresh:
            # Marked before reading: what a dead run wrote is all in the files we are about to read.
            self._read_dead.update(n for n in self._segments() if not journal.is_live(self._p(n), self.host))
            self._snapshot = Store.open(self.workdir, readonly=True)
        return self._snapshot

    def finished_traces(self, outputs: tuple[str, ...]) -> list[Trace] | None:
        """What another run recorded for ``outputs`` since it last wrote them; None if anything lacks.

        Reuses the snapshot until it lacks what is asked for (loading reads every segment). A trace
        older than its file, or an output a dead run left in flight, is no record of it.
        """
        for fresh in (False, True):
            other = self.snapshot(fresh)
            traces = [other.trace(o) for o in outputs]
            incomplete = other.incomplete_outputs()
            if all(t is not None and t.time * 1e9 >= ctime_ns(self.workdir, o) - 1e6 and o not in incomplete
                   for t, o in zip(traces, outputs)):
                return traces  # type: ignore[return-value]  # every trace was checked not None above
        return None

    def take_over(self, outputs: Iterable[str], force: bool, note: Callable[[str], None]) -> bool:
        """This run now holds the locks of ``outputs``: stop the jobs of dead runs still writing them.

        Returns whether a dead run had left any of them in flight: then they are partial, whatever
        else the store says, and the step must be rebuilt from a clean output.
        """
        outputs = list(outputs)
        if force or self._someone_died():
            incomplete = self.snapshot(fresh=True).incomplete_outputs()
        elif self._snapshot is not None:
            # No death since the last read, but that read may itself have been the first to see a
            # dead run (reading traces for another step): its markers are in the snapshot.
            incomplete = self._snapshot.incomplete_outputs()
        else:
            return False
        markers = {m.step_id: m for m in (incomplete.get(o) for o in outputs) if m is not None}
        for m in markers.values():
            stop_job(m, note, self._stopped)
        return bool(markers)

    def may_adopt(self, locks: OutputLocks, step_id: str, outputs: tuple[str, ...],
                  note: Callable[[str], None]) -> bool:
        """Whether existing untraced outputs may be recorded as made (Make's adoption) right now.

        Only under their locks: a run that began writing them after this one loaded the store holds
        them (the step then waits its turn like any other), and one that died meanwhile left them
        partial. True leaves the locks held, for the caller to release once the traces are flushed.
        """
        if not locks.try_acquire(step_id, outputs):
            return False
        if self.take_over(outputs, False, note):
            locks.release(step_id)
            return False
        return True

    def _someone_died(self) -> bool:
        for name in self._segments():
            if name in self._read_dead:
                continue
            path = self._p(name)
            if journal.is_live(path, self.host):
                self._seen_live.add(name)
                continue
            if name in self._seen_live:
                return True
            try:
                mtime = os.stat(path).st_mtime_ns
            except FileNotFoundError:
                continue  # compacted away: the snapshot that replaced it is a new file
            if mtime < self._since_ns - MTIME_SLACK_NS:
                # Untouched since before we loaded: the start read all of it (if it was alive
                # then and died before we first looked, its in-flight outputs are ``force``d).
                self._read_dead.add(name)
                continue
            return True
        return False

    def _segments(self) -> list[str]:
        try:
            return [n for n in os.listdir(self.log_dir) if n.endswith(journal.SUFFIX)]
        except FileNotFoundError:
            return []

    def _p(self, name: str) -> str:
        return os.path.join(self.log_dir, name)


def stop_job(marker: Marker, note: Callable[[str], None], stopped: set[int] | None = None) -> None:
    """SIGKILL the process group of a dead run's job and wait (briefly) until it is gone."""
    pgid = marker.pgid
    if pgid is None:
        # Killed between marking the step and recording its job: find what it started, if anything.
        if marker.host == journal.hostname() and not journal.pid_alive(marker.pid):
            _stop_jobs_of(run_id(marker.pid, marker.host))
        return
    if stopped is not None and pgid in stopped:
        return
    if marker.host != journal.hostname():
        note(f"{marker.step_id}: its job in process group {pgid} on {marker.host}, started by a flowmake "
             "that died, cannot be stopped from here; stop it there if it still runs")
        return
    if stopped is not None:
        stopped.add(pgid)
    if not marker.orphan_alive():
        return
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + STOP_WAIT_S
    while marker.orphan_alive() and time.monotonic() < deadline:
        # A SIGKILLed process writes nothing more; waiting is for its reaper, not for safety.
        time.sleep(0.01)


def _stop_jobs_of(run: str) -> None:
    """SIGKILL the process groups of every process whose environment names the (dead) run."""
    needle = f"{RUN_ENV}={run}\0".encode()
    mine = {os.getpid(), os.getpgrp()}
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:  # no /proc: nothing to search
        return
    for pid in pids:
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                if needle not in fh.read():
                    continue
            pgid = os.getpgid(pid)
        except OSError:  # gone, or not ours to read
            continue
        if pgid not in mine and pid not in mine:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except OSError:
                pass


def _own_start_ns(log_dir: str, host: str) -> int:
    """When this process created its segment, just before it loaded the store (0 if unknown)."""
    me = (host, os.getpid())
    best = 0
    try:
        names = os.listdir(log_dir)
    except FileNotFoundError:
        return 0
    for name in names:
        if name.endswith(journal.SUFFIX) and journal.parse_owner(name) == me:
            start = name[: -len(journal.SUFFIX)].rsplit("-", 1)[-1]
            if start.isdigit():
                best = max(best, int(start))
    return best
