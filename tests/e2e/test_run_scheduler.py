"""Scheduling as a user relies on it: order, failures, retries, and what happens to outputs."""

from __future__ import annotations

import os
import stat

from tests.conftest import Flow


def test_priority_then_critical_path_decide_the_order(flow: Flow) -> None:
    # One core: the order jobs start in is the order they append to order.txt.
    flow.write("""
        rule all:
            input: "low", "high", "chain3"
        rule low:
            output: "low"
            shell: "echo low >> order.txt; touch {output}"
        rule high:
            output: "high"
            priority: 10
            shell: "echo high >> order.txt; touch {output}"
        rule chain:
            output: "chain{i}"
            input: lambda wc: [f"chain{int(wc.i) - 1}"] if int(wc.i) > 1 else []
            wildcard_constraints: i="[0-9]"
            shell: "echo chain{wildcards.i} >> order.txt; touch {output}"
    """)
    flow.ok("-c", "1")
    order = flow.read("order.txt").split()
    assert order[0] == "high", "priority first"
    assert order[1] == "chain1", "then the head of the longest chain"
    assert order.index("chain2") < order.index("low") or order.index("low") == len(order) - 1


def test_keep_going_finishes_independent_branches_and_exits_1(flow: Flow) -> None:
    flow.write("""
        rule all:
            input: "bad2", "good2"
        rule bad:
            output: "bad1"
            shell: "exit 1"
        rule bad2:
            input: "bad1"
            output: "bad2"
            shell: "touch {output}"
        rule good:
            output: "good1"
            shell: "sleep 0.3; touch {output}"
        rule good2:
            input: "good1"
            output: "good2"
            shell: "touch {output}"
    """)
    rc, _, err = flow.run("-c", "2", "-k")
    assert rc == 1, err
    assert flow.exists("good2"), "the independent branch finished"
    assert not flow.exists("bad2")
    assert "1 step failed" in err

    (flow.root / "good1").unlink()
    (flow.root / "good2").unlink()
    rc, _, err = flow.run("-c", "2")
    assert rc == 1
    assert not flow.exists("good2"), "without -k nothing new starts after a failure"


def test_retries_rerun_a_job_that_fails_once(flow: Flow) -> None:
    flow.write("""
        rule flaky:
            output: "out"
            retries: 1
            shell: "echo try >> tries; if [ ! -e seen ]; then touch seen; exit 1; fi; echo ok > {output}"
    """)
    err = flow.ok("-c", "1")
    assert flow.read("tries").count("try") == 2
    assert "retry 1 of 1" in err


def test_retries_flag_and_exhausted_retries(flow: Flow) -> None:
    flow.write("""
        rule flaky:
            output: "out"
            shell: "echo try >> tries; exit 1"
    """)
    rc, _, err = flow.run("-c", "1", "--retries", "2")
    assert rc == 1
    assert flow.read("tries").count("try") == 3


def test_temp_outputs_are_deleted_when_consumers_are_done_and_not_remade(flow: Flow) -> None:
    flow.write("""
        rule all:
            input: "final"
        rule mid:
            output: temp("mid")
            shell: "echo mid >> runs; echo m > {output}"
        rule final:
            input: "mid"
            output: "final"
            shell: "cat {input} > {output}"
    """)
    flow.ok("-c", "1")
    assert not flow.exists("mid")
    assert flow.read("final") == "m\n"
    assert flow.planned() == [], "a deleted temp file alone is no reason to rerun its producer"
    flow.ok("-c", "1")
    assert flow.read("runs") == "mid\n"


def test_notemp_keeps_temp_outputs(flow: Flow) -> None:
    flow.write("""
        rule final:
            input: "mid"
            output: "final"
            shell: "cat {input} > {output}"
        rule mid:
            output: temp("mid")
            shell: "echo m > {output}"
    """)
    flow.ok("-c", "1", "--notemp")
    assert flow.exists("mid")


def test_protected_outputs_are_read_only_and_touch_outputs_exist(flow: Flow) -> None:
    flow.write("""
        rule all:
            input: "p.txt", "flag"
        rule p:
            output: protected("p.txt")
            shell: "echo p > {output}"
        rule f:
            output: touch("flag")
            shell: "true"
    """)
    flow.ok("-c", "1")
    mode = os.stat(flow.root / "p.txt").st_mode
    assert not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    assert flow.exists("flag")


def test_output_directories_exist_before_the_job_starts(flow: Flow) -> None:
    flow.write("""
        rule a:
            output: "deep/er/still/a.txt"
            shell: "test -d deep/er/still && echo yes > {output}"
    """)
    flow.ok("-c", "1")
    assert flow.read("deep/er/still/a.txt") == "yes\n"


def test_declared_outputs_missing_after_success_are_named(flow: Flow) -> None:
    flow.write("""
        rule a:
            output: "made", "forgotten"
            shell: "touch made"
    """)
    rc, _, err = flow.run("-c", "1")
    assert rc == 1
    assert "declared outputs missing after the job: forgotten" in err
    assert not flow.exists("made"), "a failed step leaves no half of its outputs"


def test_a_temp_output_asked_for_by_name_is_kept(flow: Flow) -> None:
    flow.write("""
        rule final:
            input: "mid"
            output: "final"
            shell: "cat {input} > {output}"
        rule mid:
            output: temp("mid")
            shell: "echo m > {output}"
    """)
    flow.ok("-c", "1", "final", "mid")
    assert flow.exists("mid") and flow.exists("final")
