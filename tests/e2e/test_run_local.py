"""The local backend as a user sees it: cores and memory limits, process groups, logs, run history."""

from __future__ import annotations

import os
import re

from tests.conftest import Flow

# Each job appends "start end threads" to spans.txt so the test can replay how busy the machine was.
SPAN = 's=$(date +%s.%N); sleep {params.t}; echo "$s $(date +%s.%N) {threads}" >> spans.txt; touch {output}'


def peak_busy(spans: list[tuple[float, float, int]]) -> int:
    """The most threads busy at any instant (a job ending at t frees its cores before one starts at t)."""
    events = sorted([(s, 1, t) for s, _, t in spans] + [(e, 0, -t) for _, e, t in spans])
    busy = peak = 0
    for _, _, delta in events:
        busy += delta
        peak = max(peak, busy)
    return peak


def spans(flow: Flow) -> list[tuple[float, float, int]]:
    out = []
    for line in flow.read("spans.txt").splitlines():
        start, end, threads = line.split()
        out.append((float(start), float(end), int(threads)))
    return out


def test_never_more_threads_busy_than_cores(flow: Flow) -> None:
    flow.write(f"""
        rule all:
            input: expand("one/{{i}}", i=range(4)), expand("two/{{i}}", i=range(3)), "big"
        rule one:
            output: "one/{{i}}"
            params: t=0.3
            shell: '{SPAN}'
        rule two:
            output: "two/{{i}}"
            threads: 2
            params: t=0.3
            shell: '{SPAN}'
        rule big:
            output: "big"
            threads: 16
            params: t=0.2
            shell: '{SPAN}'
    """)
    flow.ok("-c", "3")
    got = spans(flow)
    assert len(got) == 8
    assert max(t for _, _, t in got) == 3, "threads: 16 is capped at -c 3"
    assert peak_busy(got) <= 3
    assert peak_busy(got) >= 2, "independent jobs ran in parallel"


def test_memory_limit_serialises_jobs_that_do_not_fit_together(flow: Flow) -> None:
    flow.write(f"""
        rule all:
            input: expand("m/{{i}}", i=range(3))
        rule m:
            output: "m/{{i}}"
            resources: mem_mb=600
            params: t=0.2
            shell: '{SPAN}'
    """)
    flow.ok("-c", "3", "--resources", "mem_mb=1000")
    assert peak_busy(spans(flow)) == 1


def test_each_job_runs_in_its_own_process_group(flow: Flow) -> None:
    flow.write("""
        rule all:
            input: "a", "b"
        rule x:
            output: "{n}"
            wildcard_constraints: n="[ab]"
            shell: "echo $$ $(ps -o pgid= -p $$) $(ps -o pgid= -p $PPID) > {output}"
    """)
    flow.ok("-c", "2")
    groups = set()
    for name in "ab":
        pid, pgid, parent_pgid = flow.read(name).split()
        assert pid == pgid, "the job's shell leads its own process group"
        assert pgid != parent_pgid, "not flowmake's group: a Ctrl-C meant for flowmake is handled by flowmake"
        groups.add(pgid)
    assert len(groups) == 2


def test_runtime_and_peak_rss_reach_the_run_history(flow: Flow) -> None:
    flow.write("""
        rule big:
            output: "big.txt"
            shell: "python3 -c 'import time; b = bytearray(80 * 2**20); b[::4096] = b\\"x\\" * len(b[::4096]); time.sleep(0.3)'; echo ok > {output}"
    """)
    flow.ok("-c", "1")
    rc, out, err = flow.run("--why", "big.txt")
    assert rc == 0, err
    m = re.search(r"last run: ([\d.]+) s on .*peak RSS (\d+) MiB", out)
    assert m, out
    assert float(m.group(1)) >= 0.3
    assert int(m.group(2)) >= 80


def test_job_output_goes_to_a_per_job_log_and_the_rule_log_is_the_commands(flow: Flow) -> None:
    flow.write("""
        rule a:
            output: "a.txt"
            log: "logs/a.log"
            shell: "echo to-stdout; echo to-stderr >&2; echo mine > {log}; touch {output}"
    """)
    flow.ok("-c", "1")
    logs = list((flow.root / ".flowmake" / "logs").rglob("*.log"))
    assert len(logs) == 1
    text = logs[0].read_text()
    assert "to-stdout" in text and "to-stderr" in text
    assert flow.read("logs/a.log") == "mine\n"


def test_a_failed_job_shows_its_log_tail_and_keeps_the_log(flow: Flow) -> None:
    flow.write("""
        rule a:
            output: "a.txt"
            shell: "echo partial > {output}; for i in $(seq 1 30); do echo line$i; done; exit 3"
    """)
    rc, _, err = flow.run("-c", "1")
    assert rc == 1
    assert "FAILED a" in err and "exit code 3" in err
    assert "| line30" in err and "| line29" in err
    assert "| line1\n" not in err, "a tail, not the whole log"
    assert not flow.exists("a.txt"), "a failed job's outputs are removed"
    logs = list((flow.root / ".flowmake" / "logs").rglob("*.log"))
    assert logs and "line30" in logs[0].read_text(), "the log is kept"
    assert os.path.basename(str(logs[0])) in err, "the log's path is named"


def test_benchmark_file_has_snakemakes_columns_and_the_measured_runtime(flow: Flow) -> None:
    flow.write("""
        rule a:
            output: "a.txt"
            benchmark: "bench/a.tsv"
            shell: "sleep 0.2; touch {output}"
    """)
    flow.ok("-c", "1")
    header, row = flow.read("bench/a.tsv").splitlines()
    assert header.split("\t")[:3] == ["s", "h:m:s", "max_rss"]
    assert float(row.split("\t")[0]) >= 0.2


def test_benchmark_file_is_replaced_whole_not_rewritten_in_place(flow: Flow) -> None:
    # A new file renamed over the old one: a reader never sees it half written, and a hard link
    # to the old one (a snapshot of earlier results) keeps what it had.
    flow.write("""
        rule a:
            output: "a.txt"
            benchmark: "bench/a.tsv"
            shell: "touch {output}"
    """)
    flow.ok("-c", "1")
    os.link(flow.root / "bench" / "a.tsv", flow.root / "snapshot.tsv")
    before = flow.read("snapshot.tsv")
    with open(flow.root / "snapshot.tsv", "a") as fh:
        fh.write("kept\n")  # the link shares the file: bench/a.tsv has this line too, for now
    flow.ok("-c", "1", "-F")
    assert flow.read("snapshot.tsv") == before + "kept\n"
    assert "kept" not in flow.read("bench/a.tsv")
    assert sorted(os.listdir(flow.root / "bench")) == ["a.tsv"], "no temp file is left behind"
