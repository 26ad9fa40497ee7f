"""scattergather: the scatter/gather objects of a rule file, --set-scatter, and log/benchmark
files as inputs (the graph knows who makes them)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from flowmake.errors import FlowfileError
from flowmake.flowfile import load_workflow
from flowmake.graph import Graph
from flowmake.rules import AllDone, Workflow

SCATTER = """
    scattergather:
        split=8,
        chunks=2

    rule split:
        output:
            scatter.split("splitted/{scatteritem}.txt")
        shell:
            "touch {output}"

    rule post:
        input:
            "splitted/{scatteritem}.txt"
        output:
            "splitted/{scatteritem}.post.txt"
        shell:
            "cp {input} {output}"

    rule gather:
        input:
            gather.split("splitted/{scatteritem}.post.txt")
        output:
            "all.txt"
        shell:
            "cat {input} > {output}"
"""


def load(tmp_path: Path, text: str, **kw: object) -> Workflow:
    path = tmp_path / "Snakefile"
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return load_workflow(str(path), workdir=str(tmp_path), **kw)  # type: ignore[arg-type]


def test_scatter_and_gather_name_every_item(tmp_path: Path) -> None:
    wf = load(tmp_path, SCATTER)
    split = wf.rule("split").instantiate({}, AllDone())
    assert list(split.output) == [f"splitted/{i}-of-8.txt" for i in range(1, 9)]
    gather = wf.rule("gather").instantiate({}, AllDone())
    assert list(gather.input) == [f"splitted/{i}-of-8.post.txt" for i in range(1, 9)]


def test_set_scatter_overrides_the_file(tmp_path: Path) -> None:
    wf = load(tmp_path, SCATTER, scatter={"split": 3})
    split = wf.rule("split").instantiate({}, AllDone())
    assert list(split.output) == ["splitted/1-of-3.txt", "splitted/2-of-3.txt", "splitted/3-of-3.txt"]


def test_scatteritem_is_constrained(tmp_path: Path) -> None:
    wf = load(tmp_path, SCATTER)
    assert wf.rule("post").match_output("splitted/3-of-8.post.txt") is not None
    assert wf.rule("post").match_output("splitted/other.post.txt") is None


def test_graph_scatters_and_gathers(tmp_path: Path) -> None:
    wf = load(tmp_path, SCATTER, scatter={"split": 2})
    graph = Graph(wf, lambda p: False)
    graph.add_targets(["all.txt"])
    assert [s.id for s in graph.walk()] == ["split:splitted/1-of-2.txt", "post:splitted/1-of-2.post.txt",
                                            "post:splitted/2-of-2.post.txt", "gather:all.txt"]


def test_undeclared_scatter_is_an_error_with_the_line(tmp_path: Path) -> None:
    with pytest.raises(FlowfileError) as err:
        load(tmp_path, """
            scattergather:
                split=2

            rule a:
                output:
                    scatter.splt("x/{scatteritem}.txt")
                shell:
                    "touch {output}"
        """)
    assert str(err.value.location).endswith("Snakefile:6")
    assert err.value.message == "scatter.splt: no scatter named 'splt'"
    assert err.value.hint == "did you mean 'split'?"


def test_scatter_count_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(FlowfileError) as err:
        load(tmp_path, "scattergather:\n    split=0\n")
    assert err.value.message == "scattergather: 'split' must be a positive whole number, not 0"


LOG_AND_BENCHMARK = """
    rule work:
        output:
            "out/{s}.txt"
        log:
            "logs/{s}.log"
        benchmark:
            "bench/{s}.tsv"
        shell:
            "touch {output} {log}"

    rule report:
        input:
            bench="bench/{s}.tsv",
            log="logs/{s}.log"
        output:
            "report/{s}.txt"
        shell:
            "cat {input} > {output}"
"""


def test_log_and_benchmark_inputs_have_their_rule_as_producer(tmp_path: Path) -> None:
    wf = load(tmp_path, LOG_AND_BENCHMARK)
    # Even with the files present from an earlier run: they are made by 'work', not sources.
    graph = Graph(wf, lambda p: True)
    (step,) = graph.add_targets(["report/a.txt"])
    assert step is not None
    assert [d.id for d in step.deps] == ["work:out/a.txt"]
    assert graph.producer["bench/a.tsv"] is step.deps[0]
    assert graph.producer["logs/a.log"] is step.deps[0]


def test_set_scatter_needs_whole_numbers(tmp_path: Path) -> None:
    import subprocess
    import sys
    (tmp_path / "Snakefile").write_text(textwrap.dedent(SCATTER))
    done = subprocess.run([sys.executable, "-m", "flowmake", "-n", "--set-scatter", "split=many"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr == "usage error: --set-scatter values must be whole numbers, got 'many'\n"


def test_a_missing_log_another_rule_reads_makes_its_producer_run_again(tmp_path: Path) -> None:
    import subprocess
    import sys
    (tmp_path / "Snakefile").write_text(textwrap.dedent("""
        rule report:
            input: "logs/work.log"
            output: "report.txt"
            shell: "cat {input} > {output}"

        rule work:
            output: "out.txt"
            log: "logs/work.log"
            shell: "echo ok > {output}; echo 'work done' > {log}"
    """).lstrip())

    def flowmake(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "flowmake", "-c", "1", *args], cwd=tmp_path,
                              capture_output=True, text=True)

    assert flowmake().returncode == 0
    (tmp_path / "logs/work.log").unlink()
    again = flowmake()
    assert again.returncode == 0, again.stderr
    assert "work: out.txt  (output missing: logs/work.log)" in again.stderr
    assert (tmp_path / "report.txt").read_text() == "work done\n"


def test_a_run_block_job_sees_the_set_scatter_count(tmp_path: Path) -> None:
    import subprocess
    import sys
    (tmp_path / "Snakefile").write_text(textwrap.dedent("""
        scattergather:
            split=8

        rule all:
            input: gather.split("parts/{scatteritem}.txt")

        rule split:
            output: scatter.split("parts/{scatteritem}.txt")
            run:
                for o in output:
                    open(o, "w").write(o + "\\n")
    """).lstrip())
    done = subprocess.run([sys.executable, "-m", "flowmake", "-c", "1", "--set-scatter", "split=3"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "parts").iterdir()) == ["1-of-3.txt", "2-of-3.txt", "3-of-3.txt"]


def test_a_benchmark_without_the_output_wildcards_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FlowfileError) as err:
        load(tmp_path, """
            rule a:
                output:
                    "test.{x}.txt"
                benchmark:
                    "benchmarks/test.txt"
                shell:
                    "touch {output}"
        """)
    assert err.value.message == ("log or benchmark 'benchmarks/test.txt' lacks the wildcards of the outputs (x): "
                                 "the steps of rule 'a' would all write the same file")
    assert err.value.location is not None and err.value.location.line == 1
