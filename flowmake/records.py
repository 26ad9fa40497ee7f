"""The records of ``.flowmake/``: what each one holds, and the only code that knows their layout.

A record is a list: its kind, the writer's Lamport time ``t`` in ns, the key the merge groups it
by, then what its kind holds. For each key the record with the highest ``t`` wins::

    T  ["T", t, output, body, key, output_digest]       a trace; body is JSON text:
           [rule, key, fields, [[path, digest], ...], output_digest, step_id, time]
       ["T", t, output, body]                           the same, as written before key and output
                                                        digest were copied out of the body
    F  ["F", t, output]                                 the output's trace is forgotten
    B  ["B", t, step_id, [outputs], job_pid, pgid, host, pid]   a step began
    E  ["E", t, step_id]                                the step ended
    H  ["H", t, step_id, [outputs], body]               run history; body is JSON text:
           [rule, start, end, runtime_s, exit_code, peak_rss_kb, backend, host, command, params]
    S  ["S", t, path, (dev, ino, size, mtime_ns, ctime_ns, digest)]   a stat-cache entry
       ["S", t, path]                                   ... removed
       ["S", t, path, dev, ino, size, mtime_ns, ctime_ns, digest]    ... as format 1 wrote it

Bodies stay text until first use: loading creates four objects per trace instead of ~25, and a
no-op plan over 100k traces reads only keys and output digests (``head``).

``journal`` frames and merges records through ``kind_of``, ``time_of``, ``key_of`` and the
predicates here; ``store`` builds them with the ``*_row`` functions and reads them back with the
decoders. Adding a kind or changing a layout needs a ``journal.FORMAT_VERSION`` bump.

A frame's checksum can be right over records that a buggy or foreign writer got wrong. Such a
record is malformed: ``checked`` drops it when its segment is merged (the store warns once per
segment) and everything else still loads. Bodies are checked when decoded (``_trace_of``,
``history_of``), so that loading stays lazy.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
from dataclasses import dataclass
from itertools import chain
from operator import itemgetter
from typing import Any, Callable, Iterable, Iterator, Mapping

Record = list[Any]
Head = tuple[str, str]  # (step key, output digest): all a no-op plan reads of a trace

TRACE, FORGET, BEGIN, END, HISTORY, STAT = "T", "F", "B", "E", "H", "S"

# The header every record shares: all the merge reads of most of them.
kind_of, time_of, key_of = itemgetter(0), itemgetter(1), itemgetter(2)
outputs_of = itemgetter(3)  # of a B or H record
_entry_of = itemgetter(3)  # of an S record in the current layout


@dataclass(frozen=True, slots=True)
class Trace:
    output: str
    rule: str
    key: str
    fields: dict[str, str]
    inputs: tuple[tuple[str, str], ...]  # (path, digest), in rule order
    output_digest: str
    step_id: str
    time: float


@dataclass(frozen=True, slots=True)
class Marker:
    """A step that began and never ended: its outputs are suspect."""

    step_id: str
    outputs: tuple[str, ...]
    job_pid: int | None
    pgid: int | None
    host: str  # host and pid of the flowmake process that ran it
    pid: int
    time: float

    def orphan_alive(self) -> bool:
        """Whether the job's process group still exists on this host (only checkable here)."""
        from flowmake.journal import hostname  # journal imports this module

        if self.pgid is None or self.host != hostname():
            return False
        try:
            os.killpg(self.pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


@dataclass(frozen=True, slots=True)
class HistoryRecord:
    step_id: str
    rule: str
    outputs: tuple[str, ...]
    start: float
    end: float
    runtime_s: float
    exit_code: int | None
    peak_rss_kb: int | None
    backend: str
    host: str
    command: str
    params: str


# ---- writing --------------------------------------------------------------------------------------

_dumps = json.JSONEncoder(separators=(",", ":")).encode  # one encoder: json.dumps builds one per call


def trace_row(t: int, tr: Trace) -> Record:
    body = [tr.rule, tr.key, tr.fields, tr.inputs, tr.output_digest, tr.step_id, tr.time]
    # key and output digest also outside the body: a no-op plan reads only those.
    return [TRACE, t, tr.output, _dumps(body), tr.key, tr.output_digest]


def forget_row(t: int, output: str) -> Record:
    return [FORGET, t, output]


def begin_row(t: int, step_id: str, outputs: Iterable[str], job_pid: int | None, pgid: int | None,
              host: str, pid: int) -> Record:
    return [BEGIN, t, step_id, list(outputs), job_pid, pgid, host, pid]


def end_row(t: int, step_id: str) -> Record:
    return [END, t, step_id]


def history_row(t: int, rec: HistoryRecord) -> Record:
    body = [
        rec.rule, rec.start, rec.end, rec.runtime_s, rec.exit_code, rec.peak_rss_kb,
        rec.backend, rec.host, rec.command, rec.params,
    ]  # fmt: skip
    return [HISTORY, t, rec.step_id, list(rec.outputs), _dumps(body)]


def stat_row(t: int, path: str, entry: tuple[Any, ...] | None) -> Record:
    return [STAT, t, path] if entry is None else [STAT, t, path, tuple(entry)]


# ---- what the merge asks --------------------------------------------------------------------------


def is_trace(r: Record) -> bool:
    """A T record (the other kind keyed by output is F, a tombstone)."""
    return r[0] == TRACE


def is_begin(r: Record) -> bool:
    """A B record (the other marker kind is E)."""
    return r[0] == BEGIN


def is_stat_removal(r: Record) -> bool:
    return len(r) == 3


def history_key(r: Record) -> tuple[int, str]:
    """History records are never superseded: each (time, step) is one run."""
    return r[1], r[2]


# ---- reading --------------------------------------------------------------------------------------

# The C scanner directly: bodies are our own compact JSON, so json.loads' checks are pure overhead.
_scan = json.JSONDecoder().scan_once  # type: ignore[attr-defined]  # C scanner; not in typeshed


def _loads(body: str) -> Any:
    try:
        return _scan(body, 0)[0]
    except StopIteration:  # the C scanner's way of saying "invalid": get json's real error
        return json.loads(body)


# Field digests that most steps of a rule share: one string object each instead of one per trace.
_SHARED_FIELDS = frozenset({"version", "rule", "env", "image"})


def _trace_body(body: Any) -> list[Any] | None:
    """A T record's body decoded, None unless it has the body's layout."""
    try:
        b = _loads(body)
    except (ValueError, TypeError, RecursionError):
        return None
    if type(b) is not list or len(b) != 7:
        return None
    rule, key, fields, inputs, output_digest, step_id, t = b
    if not (type(rule) is str and type(key) is str and type(output_digest) is str
            and type(step_id) is str and type(fields) is dict and type(inputs) is list
            and _is_time(t)):
        return None
    if not all(type(k) is str and type(v) is str for k, v in fields.items()):
        return None
    if not all(type(i) is list and len(i) == 2 and type(i[0]) is str and type(i[1]) is str
               for i in inputs):
        return None
    return b


def _is_time(t: Any) -> bool:
    """Seconds since the epoch that a date can be made of."""
    return type(t) in (int, float) and 0 <= t < 1e11


def _trace_of(r: Record, shared: dict[str, str] | None = None) -> Trace:
    b = _trace_body(r[3])
    if b is None:  # only a current-layout record gets here (the older one is checked on load):
        # its key and output digest still decide whether the output is up to date.
        key, digest = (r[4], r[5]) if len(r) > 5 else ("", "")
        return Trace(r[2], "?", key, {}, (), digest, "?", 0.0)
    rule, key, fields, inputs, output_digest, step_id, t = b
    if shared is not None:
        share = shared.setdefault
        rule = share(rule, rule)
        fields = {
            share(k, k): share(v, v) if k in _SHARED_FIELDS else v for k, v in fields.items()
        }
    return Trace(r[2], rule, key, fields, tuple(map(tuple, inputs)), output_digest, step_id, t)


def head(r: Record) -> Head:
    """(key, output digest) of a T record, decoding the body only for the older layout."""
    if len(r) > 5:
        return r[4], r[5]
    tr = _trace_of(r)
    return tr.key, tr.output_digest


def head_lookup(rows: Mapping[str, Record]) -> Callable[[str], Head | None]:
    """``output -> head`` over ``rows``: one call per lookup, for the planner's hot path."""
    get = rows.get

    def trace_head(output: str) -> Head | None:
        r = get(output)
        if r is None:
            return None
        return (r[4], r[5]) if len(r) > 5 else head(r)

    return trace_head


def history_of(r: Record) -> HistoryRecord | None:
    """None when the body does not have its layout."""
    try:
        b = _loads(r[4])
    except (ValueError, TypeError, RecursionError):
        return None
    if type(b) is not list or len(b) != 10:
        return None
    rule, start, end, runtime_s, exit_code, rss, backend, host, command, params = b
    if not (all(type(x) is str for x in (rule, backend, host, command, params))
            and all(type(x) in (int, float) for x in (start, end, runtime_s))
            and all(x is None or type(x) is int for x in (exit_code, rss))):
        return None
    return HistoryRecord(r[2], rule, tuple(r[3]), start, end, runtime_s, exit_code, rss, backend,
                         host, command, params)


def marker_of(r: Record) -> Marker:
    return Marker(r[2], tuple(r[3]), r[4], r[5], r[6], r[7], r[1] / 1e9)


def stat_entries(rows: Mapping[str, Record]) -> dict[str, tuple[Any, ...]]:
    """path -> stat-cache entry of the latest S record per path (removals left out)."""
    if set(map(len, rows.values())) == {4}:  # the usual case, at C speed: 100k+ entries
        return dict(zip(rows.keys(), map(_entry_of, rows.values())))
    return {p: r[3] if len(r) == 4 else tuple(r[3:9]) for p, r in rows.items() if len(r) > 3}


def live_traces(rows: Mapping[str, Record]) -> Mapping[str, Record]:
    """output -> T record, of the latest T or F record per output."""
    if set(map(kind_of, rows.values())) <= {TRACE}:  # nothing forgotten: the usual case
        return rows
    return {k: r for k, r in rows.items() if r[0] == TRACE}


# ---- checking what was read ----------------------------------------------------------------------


def sole_kind(frame: Any) -> Any:
    """The kind every record of a frame has; None if they differ or are not records."""
    try:
        kinds = set(map(kind_of, frame))
    except (TypeError, KeyError, IndexError):
        return None
    return kinds.pop() if len(kinds) == 1 else None


def checked(frame: Any, kind: Any) -> tuple[list[Record], int]:
    """The well-formed records of a frame, and how many were not (``kind``: its sole kind)."""
    if type(frame) is not list:
        return [], 1
    if kind is not None and _uniform(kind, frame):
        return frame, 0
    rows = [r for r in frame if well_formed(r)]
    return rows, len(frame) - len(rows)


_LIST, _INT, _TUPLE, _SIX = {list}, {int}, {tuple}, {6}
_ENTRY_TYPES = [int, int, int, int, int, str]
_TRACE_STRS = itemgetter(2, 4, 5)  # output, key, output digest; the body is checked when decoded
_HISTORY_STRS = itemgetter(2, 4)


def _uniform(kind: Any, rows: list[Any]) -> bool:
    """Whether all rows of a frame of one kind are well formed, by loops that run in C: a
    snapshot is frames of 4096 traces or stat entries, and a Python call per record would cost
    a tenth of a no-op plan. False also means "not shown": the caller checks row by row."""
    try:
        if set(map(type, rows)) != _LIST:
            return False
        lengths = set(map(len, rows))
        if len(lengths) != 1 or min(lengths) < 3 or set(map(type, map(time_of, rows))) != _INT:
            return False
        (n,) = lengths
        if kind == TRACE and n == 6:
            "".join(chain.from_iterable(map(_TRACE_STRS, rows)))  # TypeError unless all are str
            return True  # (joining the bodies too would copy every one of them)
        if kind == STAT and n == 4:
            "".join(map(key_of, rows))
            entries = list(map(_entry_of, rows))
            return (set(map(type, entries)) == _TUPLE and set(map(len, entries)) == _SIX
                    and list(map(type, chain.from_iterable(entries))) == _ENTRY_TYPES * len(entries))
        if n == 3 and (kind == FORGET or kind == END or kind == STAT):
            "".join(map(key_of, rows))
            return True
        if kind == HISTORY and n == 5:
            outputs = list(map(outputs_of, rows))
            if set(map(type, outputs)) != _LIST:
                return False
            "".join(chain.from_iterable(outputs))
            "".join(chain.from_iterable(map(_HISTORY_STRS, rows)))
            return True
    except (TypeError, IndexError):
        return False
    return False


def well_formed(r: Any) -> bool:
    """Whether ``r`` has the layout of its kind (one record at a time)."""
    if type(r) is not list or len(r) < 3 or type(r[1]) is not int or type(r[2]) is not str:
        return False
    kind, n = r[0], len(r)
    if kind == TRACE:
        if n == 6:  # the body is checked when decoded
            return type(r[4]) is str and type(r[5]) is str
        # Key and output digest are only in the body: check it now, not when the plan asks.
        return n == 4 and _trace_body(r[3]) is not None
    if kind == FORGET or kind == END:
        return n == 3
    if kind == STAT:
        if n == 4:
            e = r[3]
            return type(e) is tuple and list(map(type, e)) == _ENTRY_TYPES
        return n == 3 or (n == 9 and list(map(type, r[3:])) == _ENTRY_TYPES)
    if kind == BEGIN:
        return (n == 8 and _all_str(r[3]) and _pid(r[4]) and _pid(r[5]) and type(r[6]) is str
                and type(r[7]) is int and abs(r[1]) < 1 << 80)  # r[1] / 1e9 is the marker's time
    if kind == HISTORY:
        return n == 5 and _all_str(r[3]) and type(r[4]) is str
    return False  # an unknown kind: a newer kind comes with a new FORMAT_VERSION


def _all_str(xs: Any) -> bool:
    return type(xs) is list and all(type(x) is str for x in xs)


def _pid(x: Any) -> bool:
    """A process (group) id or None: a marker's are signalled (``Marker.orphan_alive``)."""
    return x is None or (type(x) is int and 0 < x < 1 << 31)


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    """Reading a store allocates millions of long-lived objects: collecting meanwhile costs more
    than the reading itself and cannot find garbage."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class TraceView:
    """A trace read from the log: key and output digest at once, the rest decoded when asked for.

    A no-op plan compares only ``key`` and ``output_digest``; decoding the whole body of 100k
    traces would cost more than the rest of the plan.
    """

    __slots__ = ("_row", "_shared", "_full")

    def __init__(self, row: Record, shared: dict[str, str]) -> None:
        self._row = row
        self._shared = shared
        self._full: Trace | None = None

    def _decoded(self) -> Trace:
        if self._full is None:
            self._full = _trace_of(self._row, self._shared)
        return self._full

    @property
    def output(self) -> str:
        return self._row[2]

    @property
    def key(self) -> str:
        row = self._row
        return row[4] if len(row) > 5 else self._decoded().key

    @property
    def output_digest(self) -> str:
        row = self._row
        return row[5] if len(row) > 5 else self._decoded().output_digest

    def __getattr__(self, name: str) -> Any:
        return getattr(self._decoded(), name)

    def __eq__(self, other: object) -> bool:
        mine = self._decoded()
        return mine == (other._decoded() if isinstance(other, TraceView) else other)

    __hash__ = None  # type: ignore[assignment]  # unhashable, like the dict-backed Trace it decodes to

    def __repr__(self) -> str:
        return repr(self._decoded())


class Traces(Mapping[str, Trace]):
    """Read-only view: traces are decoded on first use of a field beyond key and output digest."""

    def __init__(self, rows: dict[str, Record]) -> None:
        self._rows = rows
        self._shared: dict[str, str] = {}

    def __getitem__(self, output: str) -> Trace:
        return TraceView(self._rows[output], self._shared)  # type: ignore[return-value]  # reads as the Trace it decodes

    def get(self, output: str, default: Any = None) -> Trace | None:  # type: ignore[override]  # any default
        row = self._rows.get(output)  # Mapping.get would raise and catch KeyError per miss
        return default if row is None else TraceView(row, self._shared)  # type: ignore[return-value]  # as above

    def __contains__(self, output: object) -> bool:
        return output in self._rows

    def __iter__(self) -> Iterator[str]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)
