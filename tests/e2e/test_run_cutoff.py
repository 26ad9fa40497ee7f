"""Early cutoff: a step that reruns but writes identical output does not make its dependants run."""

from __future__ import annotations

from tests.conftest import Flow

FLOWFILE = """
    rule all:
        input: "report"
    rule count:
        input: "data"
        output: "n"
        shell: "echo count >> runs.log; wc -l < {input} | tr -d ' ' > {output}"
    rule report:
        input: "n"
        output: "report"
        shell: "echo report >> runs.log; echo lines=$(cat {input}) > {output}"
"""


def test_rerun_with_identical_output_stops_the_chain(flow: Flow) -> None:
    flow.write(FLOWFILE)
    flow.file("data", "x\ny\n")
    flow.ok("-c", "1")
    flow.write(FLOWFILE.replace("wc -l < {input} | tr -d ' '", "grep -c '' {input}"))  # same result
    assert flow.planned() == ["all", "n", "report"], "the command edit reruns count; report is pending"
    err = flow.ok("-c", "1")
    assert flow.read("runs.log").split() == ["count", "report", "count"]
    assert "report:report: skipped, early cutoff" in err
    assert "1 step ran, 1 step skipped by early cutoff" in err
    assert flow.planned() == []


def test_rerun_with_different_output_runs_the_dependants(flow: Flow) -> None:
    flow.write(FLOWFILE)
    flow.file("data", "x\ny\n")
    flow.ok("-c", "1")
    flow.file("data", "x\ny\nz\n")
    err = flow.ok("-c", "1")
    assert flow.read("runs.log").split() == ["count", "report", "count", "report"]
    assert flow.read("report") == "lines=3\n"
    assert "early cutoff" not in err


def test_a_remade_temp_output_with_new_content_runs_its_consumer(flow: Flow) -> None:
    # The deleted temp output stands in with its recorded digest only while it is absent: once its
    # producer has remade it, its consumer is keyed from what is on disk, not from the old record.
    flow.write("""
        rule all:
            input: "d.txt"
        rule b:
            input: "in.txt"
            output: temp("b.txt")
            shell: "cp {input} {output}"
        rule d:
            input: "b.txt"
            output: "d.txt"
            shell: "cp {input} {output}"
    """)
    flow.file("in.txt", "one\n")
    flow.ok("-c1")
    assert not flow.exists("b.txt")
    flow.file("in.txt", "two\n")
    err = flow.ok("-c1")
    assert "early cutoff" not in err
    assert flow.read("d.txt") == "two\n"
