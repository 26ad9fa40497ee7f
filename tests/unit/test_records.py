"""Records whose frame checks out but whose shape is wrong: skipped with a warning, never a crash.

A frame's checksum only says the bytes are what a writer wrote; a buggy or foreign writer can still
have written ``["E"]``, a trace without its digests, or a string where a time belongs. The store
must then use everything else it holds, and every command must go on (exit 0, no traceback).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowmake import journal
from flowmake.store import HistoryRecord, Store, Trace

T0 = 1_700_000_000_000_000_000


def good_trace(output: str, n: int = 0) -> Trace:
    return Trace(output, "r", f"{n:032x}", {"rule": "0" * 32}, (("in.txt", "f" * 32),), f"{n:032x}",
                 f"r[{output}]", 1700000000.0 + n)  # fmt: skip


def write_good(root: Path, outputs: list[str]) -> None:
    with Store.open(root) as s:
        s.put_traces([good_trace(o, i) for i, o in enumerate(outputs)])
        s.add_history(HistoryRecord("r[a]", "r", tuple(outputs), 1.0, 2.0, 1.0, 0, None, "local", "h",
                                    "cmd", "[]"))  # fmt: skip


def write_segment(root: Path, frames: list[Any], name: str = "snap-9-elsewhere-1.seg") -> str:
    """A segment whose frames are framed exactly as journal frames them (valid checksums)."""
    log = root / ".flowmake" / "log"
    log.mkdir(parents=True, exist_ok=True)
    data = bytearray(journal.HEAD)
    for frame in frames:
        payload = pickle.dumps(frame, protocol=journal.PICKLE_PROTOCOL)
        data += journal._FRAME.pack(len(payload), zlib.crc32(payload)) + payload
    (log / name).write_bytes(bytes(data))
    return name


def query_everything(s: Store, outputs: list[str]) -> None:
    """Every question the store answers, every field of every answer."""
    for o in [*outputs, *s.traces]:
        s.trace_head(o)
        tr = s.trace(o)
        if tr is not None:
            (tr.output, tr.rule, tr.key, tr.fields, tr.inputs, tr.output_digest, tr.step_id, tr.time)
            repr(tr)
        for h in s.history(o):
            (h.step_id, h.rule, h.outputs, h.start, h.end, h.runtime_s, h.exit_code, h.peak_rss_kb)
    for m in [*s.incomplete_outputs().values(), *s.in_flight_elsewhere().values()]:
        (m.step_id, m.outputs, m.job_pid, m.pgid, m.host, m.pid, m.time)
        m.orphan_alive()
    s.stat_cache.items()


MALFORMED: dict[str, Any] = {
    "end without step": ["E"],
    "trace without body or digests": ["T", T0, "bad"],
    "trace with an int key": ["T", T0, "bad", "[]", 5, "d"],
    "trace with a list for its output": ["T", T0, ["bad"], "[]", "k", "d"],
    "trace with a string time": ["T", "soon", "bad", "[]", "k", "d"],
    "old-layout trace with a broken body": ["T", T0, "bad", '["r", "k"]'],
    "trace with a field too many": ["T", T0, "bad", "[]", "k", "d", "extra"],
    "begin without outputs": ["B", T0, "s1"],
    "begin with a string pid": ["B", T0, "s1", ["out/a"], None, None, "host", "12"],
    "begin with an int output": ["B", T0, "s1", [7], None, None, "host", 12],
    "history with outputs not a list": ["H", T0, "s1", "out/a", "[]"],
    "stat entry with a digest missing": ["S", T0, "in.txt", (1, 2, 3, 4, 5)],
    "stat entry with a float": ["S", T0, "in.txt", (1, 2, 3.5, 4, 5, "d")],
    "forget of nothing": ["F", T0],
    "unknown kind": ["Q", T0, "x"],
    "kind not a string": [None, T0, "x"],
    "not a list": "T",
    "a number": 42,
    "a dict": {"0": "T"},
    "empty": [],
}


def test_each_malformed_record_is_skipped_with_one_warning(tmp_path: Path) -> None:
    for i, (what, bad) in enumerate(MALFORMED.items()):
        root = tmp_path / f"c{i}"
        write_good(root, ["a", "b"])
        # Alone in a frame (the fast path for frames of one kind) and among good records.
        name = write_segment(root, [[bad], [bad, ["T", T0, "c", "[]", "k", "d"]]])
        s = Store.open(root, readonly=True)
        # A frame of history alone is not even read until history is asked for.
        n = 1 if what.startswith("history") else 2
        assert s.warnings == [f"{name}: {n} malformed record{'s' if n > 1 else ''} skipped"], what
        assert s.trace_head("a") == (f"{0:032x}", f"{0:032x}"), what
        assert s.trace_head("c") == ("k", "d"), what
        query_everything(s, ["a", "b", "c", "bad", "out/a", "in.txt", "x"])


def test_a_frame_that_is_not_a_list_of_records_is_skipped(tmp_path: Path) -> None:
    write_good(tmp_path, ["a"])
    name = write_segment(tmp_path, [{"T": 1}, 7, "T", [["T", T0, "c", "[]", "k", "d"]]])
    s = Store.open(tmp_path, readonly=True)
    assert s.warnings == [f"{name}: 3 malformed records skipped"]
    assert sorted(s.traces) == ["a", "c"]


def test_a_trace_whose_body_is_malformed_keeps_its_key_and_digest(tmp_path: Path) -> None:
    # The body is decoded only when --why asks: the key and digest beside it still decide.
    write_segment(tmp_path, [[["T", T0, "a", '{"not": "a body"}', "k", "d"]]])
    s = Store.open(tmp_path, readonly=True)
    assert s.warnings == [] and s.trace_head("a") == ("k", "d")
    tr = s.trace("a")
    assert tr is not None and (tr.rule, tr.fields, tr.inputs, tr.key) == ("?", {}, (), "k")


def test_compaction_drops_malformed_records_and_keeps_the_rest(tmp_path: Path) -> None:
    write_good(tmp_path, ["a", "b"])
    write_segment(tmp_path, [list(MALFORMED.values())])
    with Store.open(tmp_path) as s:
        assert s.compact() >= 2
    s = Store.open(tmp_path, readonly=True)
    assert s.warnings == [] and sorted(s.traces) == ["a", "b"]


FLOWFILE = """
rule all:
    input: "out/b.txt"

rule a:
    input: "in.txt"
    output: "out/a.txt"
    shell: "cp {input} {output}"

rule b:
    input: "out/a.txt"
    output: "out/b.txt"
    shell: "cp {input} {output}"
"""


def built(flow: Any) -> dict[str, int]:
    flow.write(FLOWFILE)
    flow.file("in.txt", "x\n")
    flow.ok("-c", "1")
    return {o: os.stat(flow.root / o).st_mtime_ns for o in ("out/a.txt", "out/b.txt")}


def test_commands_go_on_past_malformed_records(flow: Any) -> None:
    mtimes = built(flow)
    name = write_segment(flow.root, [list(MALFORMED.values()), [["E"]]])
    for args in (["-n"], ["--why", "out/b.txt"], ["-c", "1"]):
        err = flow.ok(*args)
        assert f"flowmake: warning: {name}: {len(MALFORMED) + 1} malformed records skipped" in err, args
    assert "Nothing to do" in flow.run("-n")[1]  # the traces of a and b are still honoured
    assert {o: os.stat(flow.root / o).st_mtime_ns for o in mtimes} == mtimes


# ---- every shape the store can hold, corrupted --------------------------------------------------

# Whatever a data-only unpickler can build: what a field can hold instead of the right thing.
junk = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
    | st.binary(max_size=4) | st.sampled_from(["T", "F", "B", "E", "H", "S", "", "[]", "{}", "[1]"]),
    lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner) | st.tuples(*[inner] * 6)
    | st.dictionaries(st.text(max_size=3), inner, max_size=3) | st.frozensets(st.integers(), max_size=2),
    max_leaves=8,
)  # fmt: skip

t = st.integers(T0, T0 + 10**6)
name = st.sampled_from(["x", "out/a", "in.txt", "s1"])
body_t = st.lists(junk, max_size=8).map(lambda b: json.dumps(b, default=repr))
trace_body = st.builds(lambda k: f'["r","{k}",{{"rule":"0"}},[["in","d"]],"o","s1",1.0]', st.text("kd", max_size=2))
history_body = st.just('["r",1.0,2.0,1.0,0,null,"local","h","cmd","[]"]')
pid = st.none() | st.integers(1, 1 << 20)

# Every record kind in every layout, well formed: the corruptions below start from these.
records = st.one_of(
    st.tuples(st.just("T"), t, name, trace_body | body_t, st.text("kd", max_size=2), st.text("kd", max_size=2)),
    st.tuples(st.just("T"), t, name, trace_body | body_t),
    st.tuples(st.just("F"), t, name),
    st.tuples(st.just("B"), t, name, st.lists(name, max_size=2), pid, pid, st.just("elsewhere"), st.integers(1, 99)),
    st.tuples(st.just("E"), t, name),
    st.tuples(st.just("H"), t, name, st.lists(name, max_size=2), history_body | body_t),
    st.tuples(st.just("S"), t, name, st.tuples(*[st.integers(-1, 9)] * 5, st.text("0123", max_size=2))),
    st.tuples(st.just("S"), t, name),
    st.tuples(st.just("S"), t, name, *[st.integers(-1, 9)] * 5, st.text("0123", max_size=2)),
).map(list)  # fmt: skip


@st.composite
def corrupted(draw: st.DrawFn) -> Any:
    r = draw(records)
    how = draw(st.sampled_from(["keep", "drop", "add", "retype", "retype", "replace", "inner"]))
    if how == "drop":
        del r[draw(st.integers(0, len(r) - 1))]
    elif how == "add":
        r.insert(draw(st.integers(0, len(r))), draw(junk))
    elif how == "retype":
        r[draw(st.integers(0, len(r) - 1))] = draw(junk)
    elif how == "replace":
        return draw(junk)
    elif how == "inner":  # inside a list or tuple field: an output, a stat entry's field
        i = draw(st.integers(0, len(r) - 1))
        if isinstance(r[i], (list, tuple)) and r[i]:
            inner = list(r[i])
            inner[draw(st.integers(0, len(inner) - 1))] = draw(junk)
            r[i] = type(r[i])(inner)
    return r


segment = st.lists(st.lists(corrupted(), max_size=6) | junk, min_size=1, max_size=5)


_GOOD: dict[str, bytes] = {}


def _store_from(root: Path, frames: list[Any]) -> list[str]:
    """A store of two good traces (written once, copied: no fsync per example) and ``frames``."""
    good = ["good/a", "good/b"]
    if not _GOOD:
        src = root / "template"
        write_good(src, good)
        for p in (src / ".flowmake" / "log").glob("*.seg"):
            _GOOD[p.name] = p.read_bytes()
    log = root / ".flowmake" / "log"
    log.mkdir(parents=True)
    for n, data in _GOOD.items():
        (log / n).write_bytes(data)
    write_segment(root, frames)
    # A corrupt record may still be a well-formed one that supersedes a good trace: only the others
    # must be exactly as written.
    taken = {r[2] for f in frames if isinstance(f, list) for r in f
             if isinstance(r, list) and len(r) > 2 and isinstance(r[2], str)}
    return [o for o in good if o not in taken]


def _compacted(root: Path, into: Path) -> None:
    """What compaction would write for ``root``, as the one segment of ``into``."""
    state = journal.State()
    for p in sorted((root / ".flowmake" / "log").glob("*.seg")):
        frames, _ = journal.read_segment(str(p))
        state.apply(frames, False)
    write_segment(into, [journal.snapshot_records(state, False, 20)])


QUERIED = ["good/a", "good/b", "x", "out/a", "in.txt", "s1"]


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                    HealthCheck.too_slow])
@given(frames=segment)
def test_no_corruption_of_any_record_makes_a_query_raise(tmp_path_factory: Any, frames: list[Any]) -> None:
    root = tmp_path_factory.mktemp("store")
    untouched = _store_from(root, frames)
    s = Store.open(root, readonly=True)
    assert all(s.trace_head(o) is not None for o in untouched)
    query_everything(s, QUERIED)
    assert all(isinstance(w, str) for w in s.warnings)
    _compacted(root, root / "compacted")  # and what compaction keeps loads cleanly
    s = Store.open(root / "compacted", readonly=True)
    assert s.warnings == [] and all(s.trace_head(o) is not None for o in untouched)
    query_everything(s, QUERIED)


_BUILT: list[Path] = []


@pytest.mark.slow
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(frames=segment)
def test_a_dry_run_goes_on_past_any_corrupt_record(tmp_path_factory: Any, frames: list[Any]) -> None:
    if not _BUILT:  # one build, copied for each example
        _BUILT.append(tmp_path_factory.mktemp("built"))
        (_BUILT[0] / "Flowfile").write_text(FLOWFILE)
        (_BUILT[0] / "in.txt").write_text("x\n")
        assert run(_BUILT[0], "-c", "1").returncode == 0
    root = tmp_path_factory.mktemp("wf") / "w"
    shutil.copytree(_BUILT[0], root)
    write_segment(root, frames)
    res = run(root, "-n")
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    assert "Nothing to do" in res.stdout or "Would run" in res.stdout


def run(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWMAKE_")}
    return subprocess.run([sys.executable, "-m", "flowmake", *args], cwd=root, capture_output=True,
                          text=True, timeout=60, env=env)
