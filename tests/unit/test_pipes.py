"""pipe() and service() outputs: the planner decides a pipe group as one, the scheduler runs it as
one job once its members' other upstream is done and what all of them need fits, and nothing of a
failed group is kept. Checked in-process with the FakeBackend (the script itself runs end to end
in tests/cases/pipe_*)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from flowmake import api
from flowmake.errors import FlowfileError
from tests.fakes import FAIL, FakeBackend, Outcome, by_attempt, run_in_process, slow, writes


def flowfile(root: Path, text: str) -> Path:
    (root / "Flowfile").write_text(textwrap.dedent(text).lstrip())
    return root


PAIR = """
rule all:
    input: "count.txt"
rule produce:
    input: "src.txt"
    output: pipe("lines.txt")
    threads: 2
    shell: "produce {input} > {output}"
rule count:
    input: "lines.txt"
    output: "count.txt"
    shell: "count < {input} > {output}"
"""


@pytest.fixture
def pair(tmp_path: Path) -> Path:
    flowfile(tmp_path, PAIR)
    (tmp_path / "src.txt").write_text("source\n")
    return tmp_path


def test_a_pipe_pair_is_one_job_holding_what_both_need(pair: Path) -> None:
    run = run_in_process(pair)
    (spec,) = run.backend.submitted
    assert spec.rule == "produce+count"
    assert spec.outputs == ("count.txt",)  # the pipe is no file: never staged, checked or traced
    assert spec.inputs[0][0] == "src.txt" and [p for p, _ in spec.inputs] == ["src.txt"]
    assert spec.resources.threads == 3
    assert "mkfifo -- lines.txt" in spec.command
    assert "produce src.txt > lines.txt" in spec.command and "count < lines.txt > count.txt" in spec.command
    assert run.result.ran == ["produce:lines.txt", "count:count.txt"]
    assert run.unsettled == []
    assert not (pair / "lines.txt").exists()


def test_a_pipe_group_that_ran_is_up_to_date_next_time(pair: Path) -> None:
    run_in_process(pair)
    again = run_in_process(pair)
    assert again.backend.submitted == []


def test_a_changed_producer_reruns_its_consumer_too(pair: Path) -> None:
    run_in_process(pair)
    (pair / "Flowfile").write_text(textwrap.dedent(PAIR).replace("produce {input}", "produce -v {input}"))
    again = run_in_process(pair)
    assert again.backend.steps == ["produce:lines.txt"]  # the group's job, named by its first step
    assert again.result.ran == ["produce:lines.txt", "count:count.txt"]


def test_a_forced_consumer_runs_with_its_producer(pair: Path) -> None:
    run_in_process(pair)
    (pair / "count.txt").unlink()
    again = run_in_process(pair)
    assert again.result.ran == ["produce:lines.txt", "count:count.txt"]


def test_a_failed_group_keeps_nothing_and_runs_again_next_time(pair: Path) -> None:
    run = run_in_process(pair, backend=FakeBackend(lambda spec: FAIL))
    assert run.result.failed == [
        ("produce:lines.txt", "exit code 1, in the pipe group of produce:lines.txt, count:count.txt"),
        ("count:count.txt", "exit code 1, in the pipe group of produce:lines.txt, count:count.txt"),
    ]
    assert not (pair / "count.txt").exists() and not (pair / "lines.txt").exists()
    again = run_in_process(pair)
    assert again.result.ran == ["produce:lines.txt", "count:count.txt"]


def test_a_group_is_retried_as_one(pair: Path) -> None:
    run = run_in_process(pair, backend=FakeBackend(by_attempt({"produce+count": [FAIL]})), retries=1)
    assert [s.attempt for s in run.backend.submitted] == [1, 2]
    assert run.result.failed == [] and run.result.ran == ["produce:lines.txt", "count:count.txt"]


def test_a_group_waits_for_the_other_upstream_of_every_member(tmp_path: Path) -> None:
    flowfile(tmp_path, """
        rule all:
            input: "count.txt"
        rule produce:
            output: pipe("lines.txt")
            shell: "produce > {output}"
        rule side:
            output: "side.txt"
            shell: "side"
        rule count:
            input: "lines.txt", "side.txt"
            output: "count.txt"
            shell: "count"
    """)
    backend = FakeBackend(lambda spec: slow(4) if spec.rule == "side" else Outcome())
    run = run_in_process(tmp_path, backend=backend)
    assert run.result.failed == [] and run.unsettled == []
    assert backend.events.index("end side:side.txt") < backend.events.index("start produce:lines.txt")


def test_a_group_starts_only_when_the_cores_of_all_its_steps_are_free(pair: Path) -> None:
    text = PAIR.replace('input: "count.txt"', 'input: "count.txt", "other.txt"') + """
rule other:
    output: "other.txt"
    shell: "other"
"""
    (pair / "Flowfile").write_text(textwrap.dedent(text))
    backend = FakeBackend(lambda spec: slow(3))
    run = run_in_process(pair, backend=backend, cores=3)
    assert run.result.failed == []
    assert backend.max_threads == 3  # the group (2 + 1 threads) never beside the other job
    assert backend.max_running == 1


def test_an_upstream_rerun_with_the_same_bytes_cuts_the_group_off(tmp_path: Path) -> None:
    flowfile(tmp_path, """
        rule all:
            input: "count.txt"
        rule up:
            input: "src.txt"
            output: "up.txt"
            shell: "up {input}"
        rule produce:
            input: "up.txt"
            output: pipe("lines.txt")
            shell: "produce"
        rule count:
            input: "lines.txt"
            output: "count.txt"
            shell: "count"
    """)
    (tmp_path / "src.txt").write_text("1\n")
    same = FakeBackend(lambda spec: writes("same\n"))
    run_in_process(tmp_path, backend=same)
    (tmp_path / "src.txt").write_text("2\n")
    again = run_in_process(tmp_path, backend=FakeBackend(lambda spec: writes("same\n")))
    assert again.backend.steps == ["up:up.txt"]
    assert again.result.skipped_by_cutoff == ["count:count.txt"]
    assert again.unsettled == []


def test_a_chain_of_pipes_is_one_group(tmp_path: Path) -> None:
    flowfile(tmp_path, """
        rule all:
            input: "test.out"
        rule a:
            output: pipe("testa.{i}.txt")
            shell: "echo {wildcards.i} > {output}"
        rule b:
            input: "testa.{i}.txt"
            output: pipe("testb.{i}.txt")
            shell: "cat {input} > {output}"
        rule c:
            input: expand("testb.{i}.txt", i=range(2))
            output: "test.out"
            shell: "cat {input} > {output}"
    """)
    run = run_in_process(tmp_path)
    (spec,) = run.backend.submitted
    assert spec.rule == "a+b+c"
    assert spec.command.count("mkfifo -- ") == 4
    assert len(run.result.ran) == 5


def test_a_service_may_have_several_readers(tmp_path: Path) -> None:
    flowfile(tmp_path, """
        rule all:
            input: "x.txt", "y.txt"
        rule serve:
            output: service("db.sock")
            shell: "serve {output}"
        rule x:
            input: "db.sock"
            output: "x.txt"
            shell: "ask x"
        rule y:
            input: "db.sock"
            output: "y.txt"
            shell: "ask y"
    """)
    run = run_in_process(tmp_path)
    (spec,) = run.backend.submitted
    assert spec.outputs == ("x.txt", "y.txt")
    assert "mkfifo -- " not in spec.command and "__fm_wait db.sock" in spec.command
    assert sorted(run.result.ran) == ["serve:db.sock", "x:x.txt", "y:y.txt"]


def _open(root: Path, *targets: str) -> None:
    import os
    old = os.getcwd()
    os.chdir(root)
    try:
        api.open_session(api.Options(targets=list(targets)), readonly=True).close()
    finally:
        os.chdir(old)


def test_a_pipe_with_two_readers_is_an_error_naming_the_rule(tmp_path: Path) -> None:
    flowfile(tmp_path, """
        rule all:
            input: "a.txt", "b.txt"
        rule produce:
            output: pipe("lines.txt")
            shell: "seq 3 > {output}"
        rule a:
            input: "lines.txt"
            output: "a.txt"
            shell: "cat {input} > {output}"
        rule b:
            input: "lines.txt"
            output: "b.txt"
            shell: "cat {input} > {output}"
    """)
    with pytest.raises(FlowfileError) as err:
        _open(tmp_path)
    assert err.value.rule == "produce" and err.value.location is not None and err.value.location.line == 3
    assert err.value.message == "output 'lines.txt' is marked as pipe() but more than one step reads it: a:a.txt, b:b.txt"


def test_a_pipe_as_target_is_an_error(pair: Path) -> None:
    with pytest.raises(FlowfileError) as err:
        _open(pair, "lines.txt")
    assert err.value.message == ("output 'lines.txt' is marked as pipe() but no step reads it: it would wait for "
                                 "a reader forever")


def test_a_pipe_read_by_a_rule_without_action_is_an_error(tmp_path: Path) -> None:
    flowfile(tmp_path, """
        rule all:
            input: "lines.txt"
        rule produce:
            output: pipe("lines.txt")
            shell: "seq 3 > {output}"
    """)
    with pytest.raises(FlowfileError) as err:
        _open(tmp_path)
    assert "rule 'all', which runs nothing, reads it" in err.value.message


def test_a_pipe_cannot_be_protected(tmp_path: Path) -> None:
    flowfile(tmp_path, """
        rule produce:
            output: pipe(protected("lines.txt"))
            shell: "seq 3 > {output}"
    """)
    with pytest.raises(FlowfileError) as err:
        _open(tmp_path)
    assert err.value.message == "a pipe() output cannot be protected() or a directory()"
    assert err.value.location is not None and err.value.location.line == 2


def test_until_cannot_split_a_pipe_group(pair: Path) -> None:
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-m", "flowmake", "-c", "2", "--until", "produce"], cwd=pair,
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.splitlines()[0] == (
        "Flowfile:3: error: the steps of a pipe group run together, but count:count.txt would be left out of "
        "this run while produce:lines.txt runs")


def test_snakemakes_own_flag_helpers_are_understood(tmp_path: Path) -> None:
    pytest.importorskip("snakemake.io")
    flowfile(tmp_path, """
        from snakemake.io import pipe, temp
        rule all:
            input: "count.txt"
        rule produce:
            output: pipe("lines.txt"), temp("other.txt")
            shell: "seq 4 > {output[0]}"
        rule count:
            input: "lines.txt"
            output: "count.txt"
            shell: "wc -l < {input} > {output}"
    """)
    run = run_in_process(tmp_path)
    (spec,) = run.backend.submitted
    assert spec.outputs == ("other.txt", "count.txt")  # lines.txt is a pipe, not a file
