"""``.flowmake/``: what previous runs left behind, for the planner and for ``--why``.

Holds four kinds of records in the append-only log of ``journal``: traces (one per output: the step
key, its field digests and input digests when the output was made), in-flight markers (begin/end
around each job, so a run killed mid-step leaves its outputs marked incomplete), run history, and
the digest stat cache. No SQLite: its locking is unsafe on NFS. Every invocation appends to its own
segment, so concurrent runs never write the same file; loading merges all segments, and for each key
the record with the highest time wins. Times are a Lamport clock (never below anything loaded), so a
run on a host whose clock is behind still supersedes what it has read.

Durability: records are buffered in memory; ``flush()`` writes them as one frame and fsyncs. Call it
after each batch of completed steps, before reporting them done. ``begin`` writes its marker
immediately (no fsync): it must survive a SIGKILL of this process, not a machine crash.

Paths (trace outputs, stat-cache keys) are used exactly as given: pass workdir-relative, normalised
paths. ``Store.open(..., readonly=True)`` (dry-run, ``--why``) loads without creating anything.
What was loaded is a snapshot: records other live runs append later are not seen until reopened.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import filelock

from flowmake import journal, records
from flowmake.digest import StatCache
from flowmake.errors import StoreError
from flowmake.records import HistoryRecord, Marker, Trace, _no_gc  # callers import these from here

STORE_DIR = ".flowmake"
COMPACT_AFTER = 16  # close() compacts when more finished run segments than this exist
# ... or when finished run segments outweigh the snapshot: a big build leaves one segment full of
# superseded markers and stat records, and every later run would read it whole.
COMPACT_MIN_BYTES = 1 << 20
HISTORY_KEEP = 20  # history records kept per output by compaction
# Compaction deletes what it merges, so it wants more than a free lock before it merges a segment
# of another host: on NFS mounted with "nolock", locks are local and every remote run looks dead.
FOREIGN_GRACE_S = 24 * 3600
Record = records.Record


class Store:
    """Open with ``Store.open(workdir)``; the store lives in ``workdir/.flowmake``."""

    def __init__(self, path: str, readonly: bool) -> None:
        self.path = path
        self.log_dir = os.path.join(path, "log")
        self.readonly = readonly
        self.host = journal.hostname()
        self.warnings: list[str] = []
        self._writer: journal.SegmentWriter | None = None
        self._pending: list[Record] = []
        self._unsynced = False
        self._clock = 0
        self._live_rows: dict[str, Record] = {}
        self.traces = records.Traces(self._live_rows)
        # (key, output digest) of an output's trace, or None: what the planner asks of 100k
        # traces in a no-op, so a closure over the rows rather than a method (one call, not two).
        self.trace_head: Callable[[str], records.Head | None] = records.head_lookup(self._live_rows)
        self.stat_cache = StatCache()
        self._incomplete: dict[str, Marker] = {}
        self._elsewhere: dict[str, Marker] = {}
        self._history: dict[str, list[Record]] | None = None  # read when first asked for
        self._own_history: list[Record] = []
        self._lock = threading.RLock()  # writes may come from several scheduler threads

    # ---- opening and loading -------------------------------------------------------------------

    @classmethod
    def open(cls, root: str | Path, *, readonly: bool = False) -> Store:
        """Load everything; unless readonly, create the dirs and this invocation's segment."""
        store = cls(os.path.join(os.fspath(root), STORE_DIR), readonly)
        if not readonly:
            try:
                os.makedirs(store.log_dir, exist_ok=True)
                # The segment (and its lock) exist before we load, so a compactor never mistakes
                # us for finished and anything we write is ordered after what we read.
                store._writer = journal.SegmentWriter(
                    store.log_dir, store.host, os.getpid(), time.time_ns()
                )
            except OSError as e:
                raise StoreError(f"cannot open the store in {store.path}: {e}") from e
        store._load()
        return store

    def _segment_names(self) -> list[str]:
        try:
            names = os.listdir(self.log_dir)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if n.endswith(journal.SUFFIX))

    def _read(self, names: list[str], own: str | None,
              history: bool = True) -> tuple[journal.State, list[str]] | None:
        """Merge the named segments; None if one vanished (a compaction replaced it)."""
        state, warnings = journal.State(history), []
        for name in names:
            if name == own:
                continue
            p = os.path.join(self.log_dir, name)
            try:
                frames, w = journal.read_segment(p)
            except FileNotFoundError:
                return None
            warnings.extend(w)
            bad = state.apply(frames, journal.is_live(p, self.host))
            if bad:
                warnings.append(f"{name}: {bad} malformed record{'s' if bad > 1 else ''} skipped")
        return state, warnings

    def _load(self) -> None:
        with _no_gc():
            self._load_all()

    def _read_all(self, history: bool) -> tuple[journal.State, list[str]]:
        own = os.path.basename(self._writer.path) if self._writer else None
        for _ in range(20):
            got = self._read(self._segment_names(), own, history)
            if got is not None:
                return got
        raise StoreError(f"the store in {self.path} keeps changing while being read")

    def _load_all(self) -> None:
        state, self.warnings = self._read_all(history=False)
        self._clock = max(state.max_t, time.time_ns())
        self._live_rows.update(records.live_traces(state.traces))
        self.stat_cache = StatCache(records.stat_entries(state.stats))
        for r, live in state.open_markers():
            target = self._elsewhere if live else self._incomplete
            m = records.marker_of(r)
            t = records.time_of(r)
            for o in m.outputs:
                if not state.newer_trace(o, t):
                    target[o] = m

    # ---- queries --------------------------------------------------------------------------------

    def trace(self, output: str) -> Trace | None:
        """The whole trace (``--why``); the planner reads ``trace_head`` instead."""
        return self.traces.get(output)

    def incomplete_outputs(self) -> dict[str, Marker]:
        """Outputs of steps that began in a run that is gone and never ended: treat as incomplete.

        A newer trace for an output (the step was rerun since) clears it. ``Marker.orphan_alive()``
        says whether the job's process group still runs on this host.
        """
        return dict(self._incomplete)

    def in_flight_elsewhere(self) -> dict[str, Marker]:
        """Outputs being built right now by another live flowmake process on this store."""
        return dict(self._elsewhere)

    def history(self, output: str) -> list[HistoryRecord]:
        if self._history is None:
            with _no_gc():
                state, _ = self._read_all(history=True)
            rows = state.history  # keyed by (time, step): this run's own records may be in it
            rows.update((records.history_key(r), r) for r in self._own_history)
            self._history = {}
            for r in rows.values():
                for o in records.outputs_of(r):
                    self._history.setdefault(o, []).append(r)
        recs = [h for h in map(records.history_of, self._history.get(output, ())) if h is not None]
        return sorted(recs, key=lambda h: h.start)

    # ---- writes ---------------------------------------------------------------------------------

    def _tick(self) -> int:
        now = time.time_ns()
        self._clock = now if now > self._clock else self._clock + 1
        return self._clock

    def _check_writable(self) -> None:
        if self._writer is None:
            raise StoreError("the store was opened read-only" if self.readonly else "store closed")

    def put_traces(self, traces: Iterable[Trace]) -> None:
        with self._lock:
            self._check_writable()
            for tr in traces:
                r = records.trace_row(self._tick(), tr)
                self._pending.append(r)
                self._live_rows[tr.output] = r
                self._incomplete.pop(tr.output, None)

    def forget(self, outputs: Iterable[str]) -> None:
        """Drop the traces of outputs (they were deleted): they will be rebuilt from scratch."""
        with self._lock:
            self._check_writable()
            for o in outputs:
                self._pending.append(records.forget_row(self._tick(), o))
                self._live_rows.pop(o, None)
                self._incomplete.pop(o, None)

    def begin(self, step_id: str, outputs: list[str], job_pid: int | None = None) -> None:
        """Mark a step in flight. Call before its job can touch outputs; again once its pid is known."""
        with self._lock:
            self._check_writable()
            pgid = None
            if job_pid is not None:
                try:
                    pgid = os.getpgid(job_pid)
                except OSError:
                    pgid = None
            self._pending.append(records.begin_row(self._tick(), step_id, outputs, job_pid, pgid,
                                                   self.host, os.getpid()))
            self.flush(sync=False)  # must reach the kernel before the job starts: survives SIGKILL

    def end(self, step_id: str) -> None:
        """Clear the marker. Put the step's traces first; flush() makes both durable."""
        with self._lock:
            self._check_writable()
            self._pending.append(records.end_row(self._tick(), step_id))
            # As a reload would see it: an ended step id no longer marks anything incomplete.
            for o in [o for o, m in self._incomplete.items() if m.step_id == step_id]:
                del self._incomplete[o]

    def add_history(self, rec: HistoryRecord) -> None:
        with self._lock:
            self._check_writable()
            r = records.history_row(self._tick(), rec)
            self._pending.append(r)
            self._own_history.append(r)
            if self._history is not None:
                for o in rec.outputs:
                    self._history.setdefault(o, []).append(r)

    def flush(self, sync: bool = True) -> None:
        """Write pending records and stat-cache changes as one frame; fsync when ``sync``."""
        with self._lock:
            if self._writer is None:
                return
            for path, e in self.stat_cache.take_changes():
                self._pending.append(records.stat_row(self._tick(), path, e))
            if self._pending:
                try:
                    self._writer.append(self._pending)
                except OSError as e:
                    raise StoreError(f"cannot write to the store in {self.path}: {e}") from e
                self._pending = []
                self._unsynced = True
            if sync and self._unsynced:
                self._writer.sync()
                self._unsynced = False

    def save_stat_cache(self) -> None:
        """Write stat-cache changes now (``flush`` and ``close`` do it too)."""
        self.flush(sync=False)

    def close(self) -> None:
        """Flush, finish this invocation's segment, and compact if segments have piled up."""
        with self._lock:
            if self._writer is None:
                return
            self.flush(sync=True)
            self._writer.close()
            self._writer = None
        # Count only what compaction would merge besides the snapshot, so that unmergeable
        # segments (live, or another host's within its grace) do not rewrite the snapshot each run.
        names = self._segment_names()
        runs = [n for n in names if not n.startswith("snap-") and self._finished(n)]
        if len(runs) > COMPACT_AFTER or self._size(runs) > max(COMPACT_MIN_BYTES, self._size(
                [n for n in names if n.startswith("snap-")])):
            self.compact()

    def _size(self, names: list[str]) -> int:
        total = 0
        for n in names:
            try:
                total += os.stat(self._p(n)).st_size
            except FileNotFoundError:
                pass
        return total

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- compaction -----------------------------------------------------------------------------

    def compact(self, timeout: float = 0) -> int:
        """Merge all finished segments into one snapshot; returns how many were merged.

        Runs under ``.flowmake/compact.lock``; returns 0 at once if another process holds it
        (unless ``timeout``). Live segments (ours included) are left alone. Crash-safe: the snapshot
        is renamed into place before anything is deleted, and duplicates merge to the same state.
        """
        if self.readonly:
            return 0
        lock = filelock.FileLock(os.path.join(self.path, "compact.lock"))
        try:
            lock.acquire(timeout=timeout)
        except filelock.Timeout:
            return 0
        try:
            return self._compact_locked()
        finally:
            lock.release()

    def _compact_locked(self) -> int:
        own = os.path.basename(self._writer.path) if self._writer else None
        names = self._segment_names()
        done = [n for n in names if n != own and self._finished(n)]
        if len(done) < 2 and not any(n for n in done if not n.startswith("snap-")):
            return 0
        with _no_gc():
            got = self._read(done, None)
        if got is None:
            return 0  # a segment vanished under us: next time
        state, _ = got
        keep_tombstones = len(done) < len(names)  # an unmerged segment may hold older records
        records = journal.snapshot_records(state, keep_tombstones, HISTORY_KEEP)
        name = f"snap-{time.time_ns()}-{self.host}-{os.getpid()}{journal.SUFFIX}"
        journal.write_snapshot(self.log_dir, name, records)
        for n in done:
            journal.unlink_quiet(self._p(n))
            journal.unlink_quiet(self._p(n) + journal.LOCK_SUFFIX)
        self._clean_debris()
        return len(done)

    def _finished(self, name: str) -> bool:
        path = self._p(name)
        if journal.is_live(path, self.host):
            return False
        owner = journal.parse_owner(name)
        if owner is None or owner[0] == self.host:
            return True
        try:
            return time.time() - os.stat(path).st_mtime > FOREIGN_GRACE_S
        except FileNotFoundError:
            return False

    def _p(self, name: str) -> str:
        return os.path.join(self.log_dir, name)

    def _clean_debris(self) -> None:
        """Lock files whose segment is gone and is not being created; tmp files over an hour old."""
        now = time.time()
        for n in os.listdir(self.log_dir):
            p = self._p(n)
            try:
                if n.endswith(journal.LOCK_SUFFIX) and not os.path.exists(p[: -len(".lock")]):
                    if not journal.is_live(p[: -len(".lock")], self.host):
                        journal.unlink_quiet(p)
                elif n.endswith(".tmp") and now - os.stat(p).st_mtime > 3600:
                    journal.unlink_quiet(p)
            except OSError:
                pass
