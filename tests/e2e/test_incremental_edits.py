"""What a rerun does after each kind of edit: nothing for a touch, exactly the affected chain otherwise."""

from __future__ import annotations

import os
import shutil
import time

import pytest

from tests.conftest import Flow

# Two independent chains a1 -> a2 and b1 -> b2; params.p feeds a2's output so a params edit shows.
FLOWFILE = """
    rule all:
        input: "a2", "b2"
    rule one:
        input: "{c}.src"
        output: "{c}1"
        shell: "echo {wildcards.c}1 >> runs.log; cat {input} > {output}"
    rule two:
        input: "{c}1"
        output: "{c}2"
        params: p=config.get("p", "x")
        shell: "echo {wildcards.c}2 >> runs.log; (cat {input}; echo {params.p}) > {output}"
"""


@pytest.fixture
def built(flow: Flow) -> Flow:
    flow.write(FLOWFILE)
    flow.file("a.src", "a\n")
    flow.file("b.src", "b\n")
    flow.ok("-c", "2")
    os.unlink(flow.root / "runs.log")
    return flow


def runs(flow: Flow) -> list[str]:
    return sorted(flow.read("runs.log").split()) if flow.exists("runs.log") else []


def later(path: os.PathLike[str] | str) -> None:
    t = time.time() + 5
    os.utime(path, (t, t))


def test_touch_runs_nothing(built: Flow) -> None:
    later(built.root / "a.src")
    assert built.planned() == []
    built.ok("-c", "2")
    assert runs(built) == []


def test_copy_over_with_the_same_content_runs_nothing(built: Flow) -> None:
    built.file("copy", "a\n")
    time.sleep(0.01)
    shutil.copy(built.root / "copy", built.root / "a.src")  # new inode, new mtime, same bytes
    assert built.planned() == []


def test_rewrite_with_the_same_content_runs_nothing(built: Flow) -> None:
    built.file("a.src", "a\n")
    later(built.root / "a.src")
    assert built.planned() == []
    built.ok("-c", "2")
    assert runs(built) == []


def test_content_change_runs_exactly_that_chain(built: Flow) -> None:
    built.file("a.src", "A\n")
    assert built.planned() == ["a1", "a2", "all"]
    built.ok("-c", "2")
    assert runs(built) == ["a1", "a2"]
    assert built.read("a2") == "A\nx\n"


def test_params_edit_runs_that_rule_only(built: Flow) -> None:
    assert built.planned("--config", "p=y") == ["a2", "all", "b2"]
    built.ok("-c", "2", "--config", "p=y")
    assert runs(built) == ["a2", "b2"]


def test_command_edit_runs_that_rule_and_downstream(built: Flow) -> None:
    built.write(FLOWFILE.replace("cat {input} > {output}\"", "cat {input} {input} > {output}\""))
    built.ok("-c", "2")
    assert runs(built) == ["a1", "a2", "b1", "b2"]
    assert built.read("a2") == "a\na\nx\n"


DIRS = """
    rule all:
        input: "listing"
    rule make:
        input: "n"
        output: directory("d")
        shell: "echo make >> runs.log; mkdir -p {output}; for i in $(seq 1 $(cat {input})); do echo $i > {output}/$i; done"
    rule use:
        input: "d"
        output: "listing"
        shell: "echo use >> runs.log; cat {input}/* > {output}"
"""


def test_directory_input_touched_vs_changed(flow: Flow) -> None:
    flow.write(DIRS)
    flow.file("n", "2\n")
    flow.ok("-c", "1")
    os.unlink(flow.root / "runs.log")
    later(flow.root / "d" / "1")
    later(flow.root / "d")
    assert flow.planned() == [], "a touched file inside a directory input changes nothing"
    (flow.root / "d" / "1").write_text("changed\n")
    assert flow.planned() == ["all", "d", "listing"], "an edited file inside the directory is seen"
    flow.ok("-c", "1")
    # make reran because its output was modified; it rewrote the same content, so use was cut off.
    assert runs(flow) == ["make"]
    assert flow.read("listing") == "1\n2\n"
