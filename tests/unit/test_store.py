"""The store: append-only segments survive kills, torn tails, corruption and concurrent writers."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import pytest

import flowmake
from flowmake import journal, store as store_mod
from flowmake.errors import StoreError
from flowmake.store import HistoryRecord, Store, Trace

REPO = str(Path(flowmake.__file__).resolve().parent.parent)


def trace(output: str, n: int = 0, rule: str = "r") -> Trace:
    fields = {"rule": "0" * 32, "action": f"{n:032x}"}
    return Trace(output, rule, f"{n:032x}", fields, (("in.txt", "f" * 32),), f"{n:032x}",
                 f"{rule}[{output}]", 1700000000.0 + n)  # fmt: skip


def child(code: str, *args: str, wait: bool = True) -> subprocess.Popen[str]:
    """Run ``code`` in a fresh interpreter (a separate flowmake process) with argv ``args``."""
    prog = "import sys\nfrom flowmake.store import *\n" + textwrap.dedent(code)
    env = {**os.environ, "PYTHONPATH": REPO}
    proc = subprocess.Popen([sys.executable, "-c", prog, *args], env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # fmt: skip
    if wait:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    return proc


def segments(root: Path) -> list[str]:
    return sorted(n for n in os.listdir(root / ".flowmake" / "log") if n.endswith(".seg"))


def test_round_trip_across_processes(tmp_path: Path) -> None:
    child(
        """
        s = Store.open(sys.argv[1])
        s.put_traces([Trace("out/a", "r", "k1", {"rule": "x"}, (("in", "d1"),), "o1", "s1", 1.5)])
        s.add_history(HistoryRecord("s1", "r", ("out/a",), 1.0, 2.0, 1.0, 0, 1234, "local",
                                    "h", "echo", "{}"))
        s.stat_cache["in"] = (1, 2, 3, 4, 5, "d1")
        s.close()
        """,
        str(tmp_path),
    )
    s = Store.open(tmp_path, readonly=True)
    assert s.trace("out/a") == Trace("out/a", "r", "k1", {"rule": "x"}, (("in", "d1"),), "o1",
                                     "s1", 1.5)  # fmt: skip
    assert list(s.traces) == ["out/a"]
    assert s.history("out/a")[0].peak_rss_kb == 1234
    assert s.stat_cache["in"] == (1, 2, 3, 4, 5, "d1")
    assert s.trace("nope") is None and s.history("nope") == [] and s.warnings == []


def test_readonly_creates_nothing_and_refuses_writes(tmp_path: Path) -> None:
    s = Store.open(tmp_path, readonly=True)
    assert not (tmp_path / ".flowmake").exists()
    with pytest.raises(StoreError, match="read-only"):
        s.put_traces([trace("a")])
    assert s.compact() == 0


def test_empty_run_leaves_no_segment(tmp_path: Path) -> None:
    Store.open(tmp_path).close()
    assert os.listdir(tmp_path / ".flowmake" / "log") == []


def test_last_record_wins_within_and_across_segments(tmp_path: Path) -> None:
    with Store.open(tmp_path) as s:
        s.put_traces([trace("a", 1), trace("b", 1)])
        s.flush()
        s.put_traces([trace("a", 2)])
    with Store.open(tmp_path) as s:
        assert s.trace("a").key == f"{2:032x}"  # type: ignore[union-attr]
        s.put_traces([trace("b", 3)])
        s.forget(["a"])
    s = Store.open(tmp_path, readonly=True)
    assert s.trace("a") is None
    assert s.trace("b").key == f"{3:032x}"  # type: ignore[union-attr]


def test_newest_wins_even_when_the_clock_went_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Store.open(tmp_path) as s:
        s.put_traces([trace("a", 1)])
    real = time.time_ns
    monkeypatch.setattr(store_mod.time, "time_ns", lambda: real() - 3600 * 10**9)
    with Store.open(tmp_path) as s:  # a host whose clock is an hour behind
        s.put_traces([trace("a", 2)])
    monkeypatch.undo()
    assert Store.open(tmp_path, readonly=True).trace("a").key == f"{2:032x}"  # type: ignore[union-attr]


def _write_frames(root: Path, n: int) -> str:
    with Store.open(root) as s:
        for i in range(n):
            s.put_traces([trace(f"o{i}", i)])
            s.flush(sync=False)
    (seg,) = segments(root)
    return str(root / ".flowmake" / "log" / seg)


def test_torn_tail_keeps_every_complete_record(tmp_path: Path) -> None:
    src = _write_frames(tmp_path / "src", 30)
    data = Path(src).read_bytes()
    rng = random.Random(7)
    for cut in sorted(rng.sample(range(len(data)), 40)) + [len(data) - 1, 0, 5]:
        root = tmp_path / f"cut{cut}"
        (root / ".flowmake" / "log").mkdir(parents=True)
        (root / ".flowmake" / "log" / os.path.basename(src)).write_bytes(data[:cut])
        s = Store.open(root, readonly=True)
        assert s.warnings == []
        got = sorted(int(o[1:]) for o in s.traces)
        assert got == list(range(len(got)))  # a prefix: nothing before the cut is lost
        full = Store.open(tmp_path / "src", readonly=True)
        assert len(got) <= len(full.traces)
    assert len(Store.open(tmp_path / "src", readonly=True).traces) == 30


def _frame_spans(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each frame of a segment; _write_frames writes o{i} as frame i."""
    spans, pos = [], len(journal.HEAD)
    while pos + 8 <= len(data):
        length, _ = journal._FRAME.unpack_from(data, pos)
        spans.append((pos, pos + 8 + length))
        pos += 8 + length
    return spans


def test_corrupted_record_is_skipped_with_a_warning(tmp_path: Path) -> None:
    seg = Path(_write_frames(tmp_path, 10))
    data = bytearray(seg.read_bytes())
    start, end = _frame_spans(bytes(data))[5]
    data[(start + 8 + end) // 2] ^= 0x01  # flip a bit inside the record for o5
    seg.write_bytes(bytes(data))
    s = Store.open(tmp_path, readonly=True)
    assert sorted(s.traces) == sorted(f"o{i}" for i in range(10) if i != 5)
    assert len(s.warnings) == 1 and "corrupted record" in s.warnings[0]


def test_corrupted_length_resynchronises(tmp_path: Path) -> None:
    seg = Path(_write_frames(tmp_path, 10))
    data = bytearray(seg.read_bytes())
    frame, _ = _frame_spans(bytes(data))[5]
    data[frame : frame + 4] = (10**6).to_bytes(4, "little")  # nonsense length
    seg.write_bytes(bytes(data))
    s = Store.open(tmp_path, readonly=True)
    assert "o4" in s.traces and "o6" in s.traces and "o5" not in s.traces
    assert s.warnings


def test_segment_from_newer_format_is_ignored_with_warning(tmp_path: Path) -> None:
    log = tmp_path / ".flowmake" / "log"
    log.mkdir(parents=True)
    (log / "snap-1-h-1.seg").write_bytes(journal.MAGIC + (99).to_bytes(2, "little") + b"xx")
    s = Store.open(tmp_path, readonly=True)
    assert len(s.traces) == 0 and "newer flowmake" in s.warnings[0]


def test_compaction_preserves_content(tmp_path: Path) -> None:
    for run in range(5):
        with Store.open(tmp_path) as s:
            s.put_traces([trace(f"o{i}", run * 100 + i) for i in range(run, run + 10)])
            s.forget([f"o{run}"])
            s.add_history(HistoryRecord(f"s{run}", "r", ("o9",), run, run + 1, 1.0, 0, None,
                                        "local", "h", "cmd", "{}"))  # fmt: skip
            s.stat_cache[f"f{run}"] = (1, run, 2, 3, 4, "d")
            if run == 4:
                s.begin("dead-step", ["o_partial"], None)  # never ended: looks like a crash
                s._writer.close()  # type: ignore[union-attr]
                s._writer = None
    before = Store.open(tmp_path, readonly=True)
    assert len(segments(tmp_path)) == 5
    with Store.open(tmp_path) as s:
        assert s.compact() == 5
    assert len(segments(tmp_path)) == 1
    after = Store.open(tmp_path, readonly=True)
    assert dict(after.traces) == dict(before.traces)
    assert after.history("o9") == before.history("o9") and len(after.history("o9")) == 5
    assert dict(after.stat_cache.items()) == dict(before.stat_cache.items())
    assert after.incomplete_outputs().keys() == {"o_partial"}
    with Store.open(tmp_path) as s:
        assert s.compact() == 0  # one snapshot: nothing to do


def test_two_writers_append_and_compact_concurrently(tmp_path: Path) -> None:
    code = """
        import sys
        root, me = sys.argv[1], sys.argv[2]
        for run in range(8):
            s = Store.open(root)
            for i in range(50):
                s.put_traces([Trace(f"{me}/{run}/{i}", "r", "k", {}, (), "d", "s", 0.0)])
                if i % 10 == 0:
                    s.flush()
            s.close()
            Store.open(root).compact(timeout=5)
    """
    procs = [child(code, str(tmp_path), name, wait=False) for name in ("w1", "w2")]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    s = Store.open(tmp_path, readonly=True)
    assert s.warnings == []
    assert len(s.traces) == 2 * 8 * 50
    with Store.open(tmp_path) as w:
        w.compact()
    assert len(segments(tmp_path)) == 1
    assert len(Store.open(tmp_path, readonly=True).traces) == 800


def test_live_segments_are_not_compacted_and_markers_are_in_flight(tmp_path: Path) -> None:
    proc = child(
        """
        s = Store.open(sys.argv[1])
        s.put_traces([Trace("x", "r", "k", {}, (), "d", "s", 0.0)])
        s.begin("running", ["y"], None)
        s.flush()
        print("ready", flush=True)
        sys.stdin.readline()
        s.end("running")
        s.close()
        """,
        str(tmp_path),
        wait=False,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    try:
        with Store.open(tmp_path) as s:
            assert s.compact() == 0
            assert s.incomplete_outputs() == {}
            assert set(s.in_flight_elsewhere()) == {"y"}
            assert s.trace("x") is not None
        proc.communicate("go\n", timeout=60)  # the other run ends its step and closes
        assert proc.returncode == 0
        with Store.open(tmp_path) as s:
            assert s.in_flight_elsewhere() == {} and s.incomplete_outputs() == {}
            assert s.compact() == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigkill_mid_append_leaves_a_loadable_store(tmp_path: Path) -> None:
    proc = child(
        """
        import os, subprocess
        s = Store.open(sys.argv[1])
        job = subprocess.Popen(["sleep", "60"], start_new_session=True)
        s.begin("step-1", ["out/1", "out/2"], job.pid)
        print(job.pid, flush=True)
        i = 0
        while True:  # append as fast as possible until killed
            s.put_traces([Trace(f"t{i}", "r", "k", {"a": "b"}, (("i", "d"),), "d", "s", 0.0)])
            s.flush(sync=i % 100 == 0)
            i += 1
        """,
        str(tmp_path),
        wait=False,
    )
    assert proc.stdout is not None
    job_pid = int(proc.stdout.readline())
    try:
        time.sleep(0.5)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        s = Store.open(tmp_path)
        assert s.warnings == []
        assert len(s.traces) > 0
        got = sorted(int(o[1:]) for o in s.traces)
        assert got == list(range(len(got)))
        inc = s.incomplete_outputs()
        assert set(inc) == {"out/1", "out/2"}
        assert inc["out/1"].job_pid == job_pid and inc["out/1"].pgid == job_pid
        assert inc["out/1"].step_id == "step-1" and inc["out/1"].orphan_alive()
        # The step is rerun: its new trace clears the incomplete mark for that output.
        s.put_traces([trace("out/1")])
        assert set(s.incomplete_outputs()) == {"out/2"}
        s.close()
        s.compact()  # close() may have compacted already: either way the killed run is merged
        assert all(n.startswith("snap-") for n in segments(tmp_path))
    finally:
        try:
            os.killpg(job_pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    s = Store.open(tmp_path, readonly=True)
    assert set(s.incomplete_outputs()) == {"out/2"}


def test_begin_end_clears_marker(tmp_path: Path) -> None:
    with Store.open(tmp_path) as s:
        s.begin("a", ["x"], None)
        s.put_traces([trace("x")])
        s.end("a")
        s.begin("b", ["y"], None)
        s.end("b")
    assert Store.open(tmp_path, readonly=True).incomplete_outputs() == {}


def test_stat_cache_persists_and_saves_only_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flowmake import digest as digest_mod
    from flowmake.digest import Digester

    monkeypatch.setattr(digest_mod, "RACY_WINDOW_NS", 0)
    f = tmp_path / "data.txt"
    f.write_bytes(b"x" * 100)
    os.utime(f, ns=(10**18, 10**18))
    with Store.open(tmp_path) as s:
        first = Digester(s.stat_cache).digest(str(f))
    os.utime(f, ns=(10**18, 10**18))  # no content change, but ctime moved: one re-hash
    with Store.open(tmp_path) as s:
        assert Digester(s.stat_cache).digest(str(f)) == first
    size = sum(os.path.getsize(tmp_path / ".flowmake" / "log" / n) for n in segments(tmp_path))
    with Store.open(tmp_path) as s:
        d = Digester(s.stat_cache)
        assert d.digest(str(f)) == first and d.files_hashed == 0
    after = sum(os.path.getsize(tmp_path / ".flowmake" / "log" / n) for n in segments(tmp_path))
    assert after == size  # a run that hashed nothing wrote nothing


def test_metadata_is_one_file_per_run(tmp_path: Path) -> None:
    with Store.open(tmp_path) as s:
        s.put_traces(trace(f"o{i}", i) for i in range(1000))
        for i in range(50):
            s.begin(f"s{i}", [f"o{i}"], None)
            s.end(f"s{i}")
            s.flush()
    assert len(segments(tmp_path)) == 1
    assert [n for n in os.listdir(tmp_path / ".flowmake" / "log") if n.endswith(".lock")] == []


def test_stale_debris_is_cleaned_by_compaction(tmp_path: Path) -> None:
    with Store.open(tmp_path) as s:
        s.put_traces([trace("a")])
    log = tmp_path / ".flowmake" / "log"
    (log / "somehost-999999-1.seg.lock").write_text("")
    shutil.copy(log / segments(tmp_path)[0], log / "otherhost-1-2.seg")  # dead: lock file missing
    with Store.open(tmp_path) as s:
        assert s.compact() == 1  # another host's segment: only after a grace period
        os.utime(log / "otherhost-1-2.seg", (1, 1))
        assert s.compact() == 2
    assert sorted(os.listdir(log)) == segments(tmp_path)


def test_two_stores_in_one_process_see_each_other_live(tmp_path: Path) -> None:
    a = Store.open(tmp_path)
    a.begin("step", ["out"], None)
    b = Store.open(tmp_path)
    assert set(b.in_flight_elsewhere()) == {"out"} and b.incomplete_outputs() == {}
    assert b.compact() == 0  # a's segment is live
    a.close()
    b.close()
    c = Store.open(tmp_path, readonly=True)
    assert set(c.incomplete_outputs()) == {"out"}  # a closed without end(): incomplete


def test_readers_never_miss_records_while_another_process_compacts(tmp_path: Path) -> None:
    for run in range(6):
        with Store.open(tmp_path) as s:
            s.put_traces([trace(f"seed{run}", run)])
    proc = child(
        """
        root = sys.argv[1]
        for run in range(40):
            with Store.open(root) as s:
                s.put_traces([Trace(f"c{run}", "r", "k", {}, (), "d", "s", 0.0)])
            Store.open(root).compact(timeout=5)
        """,
        str(tmp_path),
        wait=False,
    )
    seen = 0
    while proc.poll() is None:
        s = Store.open(tmp_path, readonly=True)
        assert {f"seed{i}" for i in range(6)} <= set(s.traces)
        assert len(s.traces) >= seen  # never goes backwards
        seen = len(s.traces)
    assert proc.returncode == 0, proc.communicate()[1]
    assert len(Store.open(tmp_path, readonly=True).traces) == 46


def test_history_is_kept_per_output_and_trimmed_by_compaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_mod, "HISTORY_KEEP", 3)
    for run in range(5):
        with Store.open(tmp_path) as s:
            s.add_history(HistoryRecord(f"s{run}", "r", ("a", "b"), float(run), run + 0.5, 0.5,
                                        run, 100, "local", "h", f"cmd {run}", "{}"))  # fmt: skip
    s = Store.open(tmp_path)
    assert [h.exit_code for h in s.history("a")] == [0, 1, 2, 3, 4]
    assert s.history("b") == s.history("a")
    s.close()
    assert s.compact() == 5
    assert [h.command for h in Store.open(tmp_path, readonly=True).history("a")] == [
        "cmd 2", "cmd 3", "cmd 4"
    ]


def test_torn_tail_of_a_large_frame_loads_fast(tmp_path: Path) -> None:
    with Store.open(tmp_path) as s:
        s.put_traces(trace(f"o{i}", i) for i in range(3 * journal.FRAME_RECORDS))
    seg = tmp_path / ".flowmake" / "log" / segments(tmp_path)[0]
    data = seg.read_bytes()
    seg.write_bytes(data[: len(data) - len(data) // 6])  # cut inside the last frame
    start = time.perf_counter()
    s = Store.open(tmp_path, readonly=True)
    assert time.perf_counter() - start < 2.0  # no byte-by-byte rescan of the torn frame
    assert len(s.traces) == 2 * journal.FRAME_RECORDS and s.warnings == []


def test_close_compacts_when_segments_pile_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_mod, "COMPACT_AFTER", 3)
    for run in range(3):
        with Store.open(tmp_path) as s:
            s.put_traces([trace(f"o{run}", run)])
        assert len(segments(tmp_path)) == run + 1
    with Store.open(tmp_path) as s:
        s.put_traces([trace("o3", 3)])
    assert len(segments(tmp_path)) == 1 and segments(tmp_path)[0].startswith("snap-")
    assert len(Store.open(tmp_path, readonly=True).traces) == 4


def test_random_corruption_never_yields_wrong_records(tmp_path: Path) -> None:
    src = Path(_write_frames(tmp_path / "src", 20))
    data = src.read_bytes()
    want = {o: t for o, t in Store.open(tmp_path / "src", readonly=True).traces.items()}
    rng = random.Random(11)
    for i in range(60):
        bad = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            bad[rng.randrange(len(journal.HEAD), len(bad))] ^= 1 << rng.randrange(8)
        root = tmp_path / f"c{i}"
        (root / ".flowmake" / "log").mkdir(parents=True)
        (root / ".flowmake" / "log" / src.name).write_bytes(bytes(bad))
        s = Store.open(root, readonly=True)
        got = dict(s.traces.items())
        assert all(want[o] == t for o, t in got.items())  # what loads is exactly what was written
        assert len(got) >= len(want) - 3 * 2  # each flip costs at most its frame (and a neighbour)
        # Silent loss only when the last frame's length now points past the end (a torn tail).
        assert s.warnings or len(got) >= len(want) - 1


def test_close_compacts_a_run_that_outweighs_the_snapshot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A big build leaves one segment full of superseded markers: later runs must not read it.
    monkeypatch.setattr(store_mod, "COMPACT_MIN_BYTES", 4096)
    with Store.open(tmp_path) as s:
        s.put_traces([trace("small")])
    assert not segments(tmp_path)[0].startswith("snap-")  # small: left alone
    with Store.open(tmp_path) as s:
        for i in range(200):
            s.begin(f"s{i}", [f"o{i}"], None)
            s.put_traces([trace(f"o{i}", i)])
            s.end(f"s{i}")
            s.flush(sync=False)
    assert len(segments(tmp_path)) == 1 and segments(tmp_path)[0].startswith("snap-")
    s = Store.open(tmp_path, readonly=True)
    assert len(s.traces) == 201 and s.incomplete_outputs() == {} and s.warnings == []


def test_a_frame_that_checks_out_but_does_not_decode_is_skipped_alone(tmp_path: Path) -> None:
    seg = _write_frames(tmp_path, 5)
    with open(seg, "ab") as f:  # a valid checksum over bytes that are not a record list
        payload = b"[[not json"
        f.write(journal._FRAME.pack(len(payload), zlib.crc32(payload)) + payload)
        f.write(journal.encode([["T", 99, "late", "[]", "k", "d"]]))
    s = Store.open(tmp_path, readonly=True)
    assert sorted(s.traces) == ["late", "o0", "o1", "o2", "o3", "o4"]
    assert len(s.warnings) == 1 and "undecodable" in s.warnings[0]


def test_history_of_earlier_runs_and_of_this_one_without_duplicates(tmp_path: Path) -> None:
    def rec(step: str, start: float) -> HistoryRecord:
        return HistoryRecord(step, "r", ("out",), start, start + 1, 1.0, 0, None, "local", "h", "c", "[]")

    with Store.open(tmp_path) as s:
        s.add_history(rec("s1", 1.0))
    s = Store.open(tmp_path)
    s.add_history(rec("s2", 2.0))
    s.flush()
    assert [h.step_id for h in s.history("out")] == ["s1", "s2"]
    s.add_history(rec("s3", 3.0))  # after history was first read
    s.close()
    assert [h.step_id for h in s.history("out")] == ["s1", "s2", "s3"]
    assert [h.step_id for h in Store.open(tmp_path, readonly=True).history("out")] == ["s1", "s2", "s3"]


def test_segments_of_the_json_format_still_load(tmp_path: Path) -> None:
    # Written by flowmake before the pickle format: upgrading must not make every step rerun.
    log = tmp_path / ".flowmake" / "log"
    log.mkdir(parents=True)
    import json

    records = [["T", 5, "out/a", '["r","k",{},[["in","d"]],"o","r:out/a",1.0]', "k", "o"],
               ["S", 6, "in", 1, 2, 3, 4, 5, "d"]]
    payload = json.dumps(records).encode()
    (log / "snap-1-h-1.seg").write_bytes(journal.MAGIC + (1).to_bytes(2, "little")
                                         + journal._FRAME.pack(len(payload), zlib.crc32(payload)) + payload)
    s = Store.open(tmp_path, readonly=True)
    assert s.warnings == [] and s.trace("out/a").key == "k" and s.trace("out/a").inputs == (("in", "d"),)
    assert s.stat_cache.get("in") == (1, 2, 3, 4, 5, "d")


def test_a_record_that_names_a_class_or_function_is_refused(tmp_path: Path) -> None:
    import pickle

    seg = _write_frames(tmp_path, 2)
    payload = pickle.dumps([["T", 9, "evil", "[]", "k", os.system]], protocol=4)
    with open(seg, "ab") as f:
        f.write(journal._FRAME.pack(len(payload), zlib.crc32(payload)) + payload)
    s = Store.open(tmp_path, readonly=True)
    assert sorted(s.traces) == ["o0", "o1"]
    assert len(s.warnings) == 1 and "undecodable" in s.warnings[0] and "posix.system" in s.warnings[0]


def test_trace_head_is_key_and_output_digest_in_both_layouts(tmp_path: Path) -> None:
    with Store.open(tmp_path / "new") as s:
        s.put_traces([trace("a", 3)])
    s = Store.open(tmp_path / "new", readonly=True)
    assert s.trace_head("a") == (f"{3:032x}", f"{3:032x}") and s.trace_head("b") is None
    # The older layout keeps key and output digest only inside the body.
    log = tmp_path / "old" / ".flowmake" / "log"
    log.mkdir(parents=True)
    (log / "snap-1-h-1.seg").write_bytes(journal.HEAD + journal.encode(
        [["T", 5, "out/a", '["r","k",{},[["in","d"]],"o","r:out/a",1.0]']]))
    s = Store.open(tmp_path / "old", readonly=True)
    assert s.warnings == [] and s.trace_head("out/a") == ("k", "o") and s.trace("out/a").rule == "r"
