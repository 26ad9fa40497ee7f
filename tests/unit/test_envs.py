"""envs (conda:/envmodules: under the flags) and notebook's inserted cell, without running any tool."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from flowmake import notebook
from flowmake.envs import Deployment, key_text, wrap
from flowmake.errors import FlowfileError
from flowmake.flowfile import load_workflow
from flowmake.rules import AllDone, Workflow

RULES = """
rule a:
    input: numbers="in/{set}.txt"
    output: "out/{set}.txt"
    params: unit="items", obj={1, 2}
    conda: "envs/a.yaml"
    envmodules: "bio/samtools/1.9", "bio/bwa/0.7"
    notebook: "nb/a.py.ipynb"
"""


def load(tmp_path: Path, text: str = RULES) -> Workflow:
    (tmp_path / "Flowfile").write_text(textwrap.dedent(text).lstrip())
    (tmp_path / "envs").mkdir(exist_ok=True)
    (tmp_path / "envs" / "a.yaml").write_text("dependencies: [samtools]\n")
    return load_workflow(str(tmp_path / "Flowfile"), workdir=str(tmp_path))


def test_directives_are_ignored_without_the_flags(tmp_path: Path) -> None:
    rule = load(tmp_path).rule("a")
    assert key_text(rule, Deployment()) == ""
    assert wrap("cmd", rule, Deployment(), str(tmp_path)) == "cmd"


def test_key_holds_the_env_content_and_the_modules(tmp_path: Path) -> None:
    rule = load(tmp_path).rule("a")
    both = Deployment(use_conda=True, use_envmodules=True)
    assert key_text(rule, both) == ("\nconda\ndependencies: [samtools]\n"
                                    "\nenvmodules bio/samtools/1.9 bio/bwa/0.7")
    (tmp_path / "envs" / "a.yaml").write_text("dependencies: [samtools=1.9]\n")
    assert "samtools=1.9" not in key_text(rule, both)  # read once per invocation
    assert "samtools=1.9" in key_text(rule, Deployment(use_conda=True))


def test_an_env_prefix_inside_the_workflow_is_keyed_by_its_place_in_it(tmp_path: Path) -> None:
    keys = []
    for clone in ("alice", "bob"):  # two clones sharing a cache must get one key
        root = tmp_path / clone
        root.mkdir()
        (root / "envs" / "prefix").mkdir(parents=True)
        wf = load(root, 'rule b:\n    output: "b"\n    conda: "envs/prefix"\n    shell: "x"\n')
        keys.append(key_text(wf.rule("b"), Deployment(use_conda=True)))
    assert keys[0] == keys[1] == "\nconda\nprefix envs/prefix"


def test_wrap_loads_modules_then_activates_the_env(tmp_path: Path) -> None:
    rule = load(tmp_path).rule("a")
    lines = wrap("samtools sort", rule, Deployment(use_conda=True, use_envmodules=True),
                 str(tmp_path)).splitlines()
    assert lines[0] == "module purge && module load bio/samtools/1.9 bio/bwa/0.7"
    assert lines[1].startswith(f"export CONDA_PREFIX={tmp_path}/.flowmake/conda/")
    assert lines[2] == 'export PATH="$CONDA_PREFIX/bin:$PATH"'
    assert lines[-1] == "samtools sort"


@pytest.mark.parametrize("value,message", [
    ('"myenv"', "conda: 'myenv' names an existing environment, which flowmake does not support"),
    ("lambda wildcards: 'x.yaml'", "conda: expected the path of an environment file, got <function"),
])
def test_unsupported_conda_values(tmp_path: Path, value: str, message: str) -> None:
    wf = load(tmp_path, f'rule b:\n    output: "b"\n    conda: {value}\n    shell: "x"\n')
    with pytest.raises(FlowfileError) as e:
        key_text(wf.rule("b"), Deployment(use_conda=True))
    assert e.value.message.startswith(message)
    assert e.value.rule == "b"


def test_notebook_cell_defines_snakemake_without_flowmake(tmp_path: Path) -> None:
    wf = load(tmp_path)
    rule = wf.rule("a")
    inst = rule.instantiate(rule.bindings_from_raw({"set": "s1"}), AllDone())
    source = notebook.preamble(inst, str(tmp_path))
    assert "flowmake" not in source.split("\n", 1)[1].replace("flowmake-", "")  # nothing imported
    ns: dict[str, object] = {}
    exec(compile(source, "cell", "exec"), ns)  # what the kernel runs
    sm = ns["snakemake"]
    assert sm.input.numbers == "in/s1.txt" and sm.input[0] == "in/s1.txt"  # type: ignore[attr-defined]
    assert sm.output == ["out/s1.txt"] and sm.wildcards.set == "s1"  # type: ignore[attr-defined]
    assert sm.params.unit == "items" and sm.params["obj"] == "{1, 2}"  # type: ignore[attr-defined]
    assert sm.rule == "a" and sm.threads == 1  # type: ignore[attr-defined]


def test_notebook_cell_replaces_the_one_of_an_earlier_run() -> None:
    nb = {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
        {"cell_type": "code", "metadata": {"tags": [notebook.TAG]}, "source": "old", "outputs": []},
        {"cell_type": "code", "metadata": {}, "source": "work", "outputs": []}]}
    cells = notebook.with_preamble(nb, "new")["cells"]
    assert [c["source"] for c in cells] == ["new", "work"]
    assert cells[0]["id"] == "flowmake-preamble" and cells[0]["metadata"]["tags"] == [notebook.TAG]
    assert len(nb["cells"]) == 2  # the notebook as read is untouched
