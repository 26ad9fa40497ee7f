"""The records of ``.flowmake/``: traces, in-flight markers and run history, and how a loaded
trace is decoded lazily (a no-op plan over 100k traces reads only keys and output digests).

``store`` reads and writes them; ``journal`` frames them on disk.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

from flowmake import journal

Record = journal.Record


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
        if self.pgid is None or self.host != journal.hostname():
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


# Record layouts are listed in journal.py.
_dumps = json.JSONEncoder(separators=(",", ":")).encode  # one encoder: json.dumps builds one per call
# The C scanner directly: bodies are our own compact JSON, so json.loads' checks are pure overhead.
_scan = json.JSONDecoder().scan_once


def _loads(body: str) -> Any:
    try:
        return _scan(body, 0)[0]
    except StopIteration:  # the C scanner's way of saying "invalid": get json's real error
        return json.loads(body)


# Field digests that most steps of a rule share: one string object each instead of one per trace.
_SHARED_FIELDS = frozenset({"version", "rule", "env", "image"})


def _trace_of(r: Record, shared: dict[str, str] | None = None) -> Trace:
    rule, key, fields, inputs, output_digest, step_id, t = _loads(r[3])
    if shared is not None:
        share = shared.setdefault
        rule = share(rule, rule)
        fields = {
            share(k, k): share(v, v) if k in _SHARED_FIELDS else v for k, v in fields.items()
        }
    return Trace(r[2], rule, key, fields, tuple(map(tuple, inputs)), output_digest, step_id, t)


def _history_of(r: Record) -> HistoryRecord:
    rule, *rest = _loads(r[4])
    return HistoryRecord(r[2], rule, tuple(r[3]), *rest)


def _marker_of(r: Record) -> Marker:
    return Marker(r[2], tuple(r[3]), r[4], r[5], r[6], r[7], r[1] / 1e9)


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
        return self._row[2]  # type: ignore[no-any-return]

    @property
    def key(self) -> str:
        row = self._row
        return row[4] if len(row) > 5 else self._decoded().key  # type: ignore[no-any-return]

    @property
    def output_digest(self) -> str:
        row = self._row
        return row[5] if len(row) > 5 else self._decoded().output_digest  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._decoded(), name)

    def __eq__(self, other: object) -> bool:
        mine = self._decoded()
        return mine == (other._decoded() if isinstance(other, TraceView) else other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(self._decoded())


class _Traces(Mapping[str, Trace]):
    """Read-only view: traces are decoded on first use of a field beyond key and output digest."""

    def __init__(self, rows: dict[str, Record]) -> None:
        self._rows = rows
        self._shared: dict[str, str] = {}

    def __getitem__(self, output: str) -> Trace:
        return TraceView(self._rows[output], self._shared)  # type: ignore[return-value]

    def get(self, output: str, default: Any = None) -> Trace | None:  # type: ignore[override]
        row = self._rows.get(output)  # Mapping.get would raise and catch KeyError per miss
        return default if row is None else TraceView(row, self._shared)  # type: ignore[return-value]

    def __contains__(self, output: object) -> bool:
        return output in self._rows

    def __iter__(self) -> Iterator[str]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def _changed(self, output: str) -> None:
        pass  # views read the row they were made from; a new row means a new view


