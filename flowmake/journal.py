"""The record-log format under ``.flowmake/log/``: segments, frames, owner liveness, and the
merge of segments into one state (for each key the newest record).

One segment file per invocation, named ``<host>-<pid>-<start_ns>.seg``, only ever appended to by its
owner; compaction writes ``snap-<ns>-<host>-<pid>.seg`` files. A segment is::

    magic b"FMKLOG" + u16 format version (little endian)
    frame*   where frame = u32 payload length, u32 zlib.crc32(payload), payload

A payload is a list of records (their layouts are in ``records``), pickled (format 2) or JSON (format
1, still read). The pickle holds only lists, strings, numbers and None, and is read by an unpickler
that refuses every global, so a payload can build no object of any other type and run no code;
pickle rather than JSON because a 100,000-step store then loads in a quarter of the time. One flush
writes one frame with a single ``write`` to an ``O_APPEND`` descriptor, so a reader sees either whole
frames or a torn tail. A truncated tail is dropped silently (it is what SIGKILL leaves); a frame whose
checksum fails is skipped, reported as a warning, and reading resumes at the next valid frame.

Liveness: the owner holds an exclusive ``flock`` on ``<segment>.lock`` while the segment is open,
taken *before* the segment exists. A segment is finished when its lock file is gone or can be
locked (shared, non-blocking) by someone else, or when its owner is on this host and its pid is
dead. flock works across NFS clients on Linux (it becomes a POSIX lock there) and is released by
the kernel when the owner dies, even by SIGKILL.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import socket
import struct
import zlib
from typing import Any, Iterator

try:
    import fcntl
except ImportError:  # pragma: no cover - not Unix: fall back to pid checks only
    fcntl = None  # type: ignore[assignment]  # the module is absent off Unix

from flowmake.records import (BEGIN, END, FORGET, HISTORY, STAT, TRACE, Record, checked, history_key,
                              is_begin, is_stat_removal, is_trace, key_of, kind_of, outputs_of,
                              sole_kind, time_of)

MAGIC = b"FMKLOG"
FORMAT_VERSION = 2
HEAD = MAGIC + struct.pack("<H", FORMAT_VERSION)
PICKLE_PROTOCOL = 4
# How a payload of each format starts: resynchronising after corruption tries only such offsets.
_PAYLOAD_START = {1: b"[[", 2: b"\x80\x04"}
_FRAME = struct.Struct("<II")
MAX_FRAME = 1 << 30
FRAME_RECORDS = 4096  # records per frame: bounds what one corrupted frame can lose
SUFFIX = ".seg"
LOCK_SUFFIX = ".lock"



def hostname() -> str:
    # Segment names are split on '-' from the right, so the host may contain '-' but not much else.
    return re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "host"


def encode(records: list[Record]) -> bytes:
    """Frames for ``records`` (pickle keeps undecodable path bytes, as surrogates)."""
    out = []
    for i in range(0, len(records), FRAME_RECORDS):
        payload = pickle.dumps(records[i : i + FRAME_RECORDS], protocol=PICKLE_PROTOCOL)
        out.append(_FRAME.pack(len(payload), zlib.crc32(payload)))
        out.append(payload)
    return b"".join(out)


class _DataOnly(pickle.Unpickler):
    """Lists, strings, numbers: a payload that names any class or function is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"a record names {module}.{name}")


def dump_data(data: Any, f: Any) -> None:
    """Write plain data as ``load_data`` reads it back."""
    pickle.dump(data, f, protocol=PICKLE_PROTOCOL)


def load_data(payload: bytes | memoryview) -> Any:
    """A pickle of plain data (lists, tuples, strings, numbers); ValueError for anything else."""
    try:
        return _DataOnly(io.BytesIO(payload)).load()
    except Exception as e:  # any malformed pickle: the caller skips the frame with a warning
        raise ValueError(str(e)) from None


def read_segment(path: str) -> tuple[list[list[Record]], list[str]]:
    """All valid frames of a segment and warnings. Raises FileNotFoundError if it vanished."""
    with open(path, "rb") as f:
        data = f.read()
    name = os.path.basename(path)
    if len(data) < len(HEAD):
        return [], []  # torn before the header was complete: an empty segment
    if data[: len(MAGIC)] != MAGIC:
        return [], [f"{name}: not a flowmake log segment; ignored"]
    (version,) = struct.unpack_from("<H", data, len(MAGIC))
    if version > FORMAT_VERSION:
        return [], [f"{name}: written by a newer flowmake (format {version}); ignored"]
    payloads: list[tuple[int, memoryview]] = []
    warnings: list[str] = []
    pos, n = len(HEAD), len(data)
    unpack, crc32 = _FRAME.unpack_from, zlib.crc32
    mv = memoryview(data)
    while pos < n:
        if n - pos < 8:
            break  # torn tail
        length, crc = unpack(data, pos)
        end = pos + 8 + length
        if end <= n and crc32(mv[pos + 8 : end]) == crc:
            payloads.append((pos, mv[pos + 8 : end]))
            pos = end
            continue
        nxt = _resync(data, pos + 1, end, _PAYLOAD_START.get(version, b""))
        if nxt is None:
            if end <= n or length > MAX_FRAME:
                warnings.append(f"{name}: corrupted records from byte {pos} to the end skipped")
            break  # otherwise: a torn tail, the normal result of a kill mid-write
        warnings.append(f"{name}: corrupted record at byte {pos} ({nxt - pos} bytes) skipped")
        pos = nxt
    if version == 1:
        return _decode_json(payloads, name, warnings), warnings
    frames: list[list[Record]] = []
    for pos, payload in payloads:
        try:
            frames.append(load_data(payload))
        except ValueError as e:
            warnings.append(f"{name}: undecodable record at byte {pos} skipped ({e})")
    return frames, warnings


def _decode_json(payloads: list[tuple[int, memoryview]], name: str, warnings: list[str]) -> list[list[Record]]:
    # A run writes a frame per flush, tens of thousands of small ones: one decoder call for all of
    # them costs a fraction of one call each. Only if that fails is each frame decoded alone.
    try:
        return json.loads(b"[" + b",".join(p for _, p in payloads) + b"]")
    except ValueError:
        pass
    frames: list[list[Record]] = []
    for pos, payload in payloads:
        try:
            frames.append(json.loads(bytes(payload)))
        except ValueError:
            warnings.append(f"{name}: undecodable record at byte {pos} skipped")
    return frames


def _resync(data: bytes, start: int, hint: int, marker: bytes) -> int | None:
    """Offset of the next frame that checks out, trying the declared end first."""
    n = len(data)
    mv = memoryview(data)

    def valid(p: int) -> bool:
        if p + 8 > n:
            return False
        length, crc = _FRAME.unpack_from(data, p)
        return p + 8 + length <= n and zlib.crc32(mv[p + 8 : p + 8 + length]) == crc

    if start <= hint < n and valid(hint):
        return hint
    # Every payload of a format starts the same way: only those offsets are candidates (a
    # byte-by-byte scan of a torn multi-MB tail would take seconds).
    if not marker:
        return None
    p = data.find(marker, start + 8)
    while p != -1:
        if valid(p - 8):
            return p - 8
        p = data.find(marker, p + 1)
    return None


def parse_owner(name: str) -> tuple[str, int] | None:
    """(host, pid) of a run segment's name; None for snapshots and foreign files."""
    if not name.endswith(SUFFIX) or name.startswith("snap-"):
        return None
    parts = name[: -len(SUFFIX)].rsplit("-", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1])


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# Segments this process holds open. Never test those by locking: on NFS, flock is emulated with
# POSIX locks, which do not conflict within a process and are all dropped when the process closes
# *any* descriptor of the file.
_HELD: set[str] = set()


def is_live(path: str, this_host: str) -> bool:
    """Whether the segment at ``path`` is still open by a running owner."""
    owner = parse_owner(os.path.basename(path))
    if owner is None:
        return False
    if os.path.abspath(path) in _HELD:
        return True
    host, pid = owner
    if host == this_host and not pid_alive(pid):
        return False
    if fcntl is None:  # pragma: no cover
        return True
    try:
        fd = os.open(path + LOCK_SUFFIX, os.O_RDONLY)
    except FileNotFoundError:
        return False
    except OSError:
        return True  # cannot tell: assume live, the safe answer for compaction
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories; the rename is still atomic
    finally:
        os.close(fd)


class SegmentWriter:
    """This invocation's segment: lock first, then the file; append frames; close or discard."""

    def __init__(self, log_dir: str, host: str, pid: int, start_ns: int) -> None:
        self.path = os.path.join(log_dir, f"{host}-{pid}-{start_ns}{SUFFIX}")
        self._lock_fd = os.open(self.path + LOCK_SUFFIX, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        _HELD.add(os.path.abspath(self.path))
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        self.size = 0
        self._dir_synced = False
        self._write(HEAD)
        self.header_size = self.size

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        self.size += len(data)

    def append(self, records: list[Record]) -> None:
        self._write(encode(records))

    def sync(self) -> None:
        os.fsync(self._fd)
        if not self._dir_synced:  # the new file's directory entry must be durable too, once
            fsync_dir(os.path.dirname(self.path))
            self._dir_synced = True

    def close(self) -> None:
        """Sync and close; an empty segment is removed. Releasing the lock marks it finished."""
        os.fsync(self._fd)
        os.close(self._fd)
        if self.size <= self.header_size:
            unlink_quiet(self.path)
        unlink_quiet(self.path + LOCK_SUFFIX)
        os.close(self._lock_fd)
        _HELD.discard(os.path.abspath(self.path))


def write_snapshot(log_dir: str, name: str, records: list[Record]) -> str:
    """Write a complete segment atomically: tmp file, fsync, rename, fsync the directory."""
    final = os.path.join(log_dir, name)
    tmp = os.path.join(log_dir, f".{name}.tmp")
    with open(tmp, "wb") as f:
        f.write(HEAD)
        f.write(encode(records))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    fsync_dir(log_dir)
    return final


def unlink_quiet(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _merge_newest(into: dict[str, Record], latest: dict[str, Record]) -> None:
    if not into:
        into.update(latest)
        return
    for key, r in latest.items():
        cur = into.get(key)
        if cur is None or time_of(cur) <= time_of(r):
            into[key] = r


class State:
    """The merged content of a set of segments: for each key the record with the highest time."""

    def __init__(self, history: bool = True) -> None:
        self.keep_history = history  # history is large and only --why/--summary read it
        self.traces: dict[str, Record] = {}  # output -> latest T or F (forgotten) record
        self.markers: dict[str, tuple[Record, bool]] = {}  # step -> (latest B/E, owner live)
        self.history: dict[tuple[int, str], Record] = {}
        self.stats: dict[str, Record] = {}
        self.max_t = 0

    def apply(self, frames: list[list[Record]], live: bool) -> int:
        """Merge one segment's frames; returns how many malformed records were skipped.

        Within a segment records are in time order (one writer, a Lamport clock), so a later
        record for a key supersedes an earlier one: the segment's latest per key are gathered with
        plain dict updates (a frame of one kind at C speed, which is nearly every frame of a
        snapshot), and only keys another segment also has are compared by time.
        """
        traces: dict[str, Record] = {}
        stats: dict[str, Record] = {}
        markers, history, keep_history = self.markers, self.history, self.keep_history
        skipped = 0
        for frame in frames:
            kind = sole_kind(frame)
            if kind == HISTORY and not keep_history:
                continue
            frame, bad = checked(frame, kind)
            skipped += bad
            if not frame:
                continue
            newest = max(map(time_of, frame))
            if newest > self.max_t:
                self.max_t = newest
            if kind is not None:
                if kind == TRACE or kind == FORGET:
                    traces.update(zip(map(key_of, frame), frame))
                    continue
                if kind == STAT:
                    stats.update(zip(map(key_of, frame), frame))
                    continue
            for r in frame:
                kind = kind_of(r)
                if kind == TRACE or kind == FORGET:
                    traces[key_of(r)] = r
                elif kind == STAT:
                    stats[key_of(r)] = r
                elif kind == BEGIN or kind == END:
                    m = markers.get(key_of(r))
                    if m is None or time_of(m[0]) <= time_of(r):
                        markers[key_of(r)] = (r, live)
                elif kind == HISTORY:
                    if keep_history:
                        history[history_key(r)] = r
        _merge_newest(self.traces, traces)
        _merge_newest(self.stats, stats)
        return skipped

    def open_markers(self) -> Iterator[tuple[Record, bool]]:
        """Begun, never ended, and not superseded by a newer trace for every output."""
        for r, live in self.markers.values():
            if not is_begin(r):
                continue
            t = time_of(r)
            if all(self.newer_trace(o, t) for o in outputs_of(r)):
                continue
            yield r, live

    def newer_trace(self, output: str, t: int) -> bool:
        cur = self.traces.get(output)
        return cur is not None and time_of(cur) > t


def snapshot_records(state: State, keep_tombstones: bool, history_keep: int) -> list[Record]:
    """What a compacted snapshot keeps: the winners, open markers, recent history."""
    records: list[Record] = [
        r for r in state.traces.values() if keep_tombstones or is_trace(r)
    ]
    records += [r for r in state.stats.values() if keep_tombstones or not is_stat_removal(r)]
    records += [r for r, _ in state.open_markers()]
    per_output: dict[str, list[Record]] = {}
    for r in state.history.values():
        for o in outputs_of(r):
            per_output.setdefault(o, []).append(r)
    kept: dict[int, Record] = {}
    for rows in per_output.values():
        rows.sort(key=time_of)
        for r in rows[-history_keep:]:
            kept[id(r)] = r
    records += kept.values()
    return records
