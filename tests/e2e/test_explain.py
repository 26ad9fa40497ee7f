"""What flowmake tells a user about its decisions: -n reasons, --why, --summary, --list-changes,
forcing flags, --touch, and adoption of outputs made without flowmake."""

from __future__ import annotations

import json
import os

import pytest

CHAIN = """
rule all:
    input: "c.txt"

rule a:
    input: "in.txt"
    output: "a.txt"
    params: n=1
    shell: "cat {input} > {output}; echo {params.n} >> {output}"

rule b:
    input: "a.txt"
    output: "b.txt"
    shell: "wc -l < {input} > {output}"

rule c:
    input: "b.txt"
    output: "c.txt"
    shell: "cp {input} {output}"
"""


@pytest.fixture
def chain(flow):
    flow.write(CHAIN)
    flow.file("in.txt", "hello\n")
    flow.ok()
    return flow


def reasons(flow, *args):
    return {s["outputs"][0] if s["outputs"] else s["rule"]: [r["kind"] for r in s["reasons"]]
            for s in flow.plan(*args)}


def test_dry_run_json_names_each_reason(chain):
    chain.file("in.txt", "changed\n")
    steps = chain.plan()
    a = next(s for s in steps if s["rule"] == "a")
    assert a["reasons"] == [{"kind": "input-changed", "path": "in.txt"}]
    assert a["wildcards"] == {}
    b = next(s for s in steps if s["rule"] == "b")
    assert b["reasons"] == [{"kind": "upstream-changed", "step": "a:a.txt"}]


def test_dry_run_text_explains_in_words(chain):
    chain.file("in.txt", "changed\n")
    rc, out, _ = chain.run("-n")
    assert rc == 0
    assert "rule a: a.txt\n    input: in.txt\n    why: input changed: in.txt\n" in out
    assert "why: runs if the output of an upstream step changes: a:a.txt" in out
    assert out.rstrip().endswith("up to date.")


def test_params_edit_is_params_or_command_change(chain):
    chain.write(CHAIN.replace("params: n=1", "params: n=2"))
    # The param shows in the command too: both fields moved, and both are named.
    assert reasons(chain)["a.txt"] == ["command-changed", "params-changed"]


def test_why_reports_inputs_digests_history_and_state(chain):
    rc, out, _ = chain.run("--why", "a.txt")
    assert rc == 0
    assert "made by: rule a (a:a.txt)" in out
    assert "from inputs:\n    in.txt  " in out
    assert "last run:" in out and "(local), exit 0" in out
    assert "state: up to date" in out
    chain.file("in.txt", "other\n")
    rc, out, _ = chain.run("--why", "a.txt")
    assert "state: out of date\n    why: input changed: in.txt" in out


def test_summary_lists_every_output_with_state(chain):
    chain.file("in.txt", "other\n")
    rc, out, _ = chain.run("--summary")
    assert rc == 0
    lines = [line.split("\t") for line in out.strip().splitlines()]
    assert lines[0] == ["output", "date", "rule", "state"]
    states = {row[0]: row[3] for row in lines[1:]}
    assert states["a.txt"] == "input changed: in.txt"
    assert states["c.txt"].startswith("runs if the output of an upstream step changes")


def test_list_changes(chain):
    chain.file("in.txt", "other\n")
    assert chain.run("--list-changes", "input")[1].split() == ["a.txt"]
    assert chain.run("--list-changes", "params")[1].split() == []


def test_forcing_flags(chain):
    assert sorted(reasons(chain, "-F")) == ["a.txt", "all", "b.txt", "c.txt"]
    assert sorted(reasons(chain, "-f", "b.txt")) == ["b.txt"]
    forced = reasons(chain, "-R", "b")
    assert forced["b.txt"] == ["forced"] and forced["c.txt"] == ["forced"] and "a.txt" not in forced
    rc, _, err = chain.run("-n", "-R", "nosuchrule")
    assert rc == 2 and "-R/--forcerun: 'nosuchrule' is neither a rule nor an output" in err


def test_touch_records_without_running(chain):
    chain.write(CHAIN.replace("cp {input}", "cp -f {input}"))
    assert "c.txt" in reasons(chain)
    before = chain.read("c.txt")
    chain.ok("--touch")
    assert chain.planned() == []
    assert chain.read("c.txt") == before


def test_outputs_made_by_hand_are_adopted_once_when_newer(flow):
    flow.write(CHAIN)
    flow.file("in.txt", "hello\n")
    for name, text in [("a.txt", "hello\n1\n"), ("b.txt", "2\n"), ("c.txt", "2\n")]:
        flow.file(name, text)
    assert flow.planned() == []  # adopted: newer than their inputs
    flow.ok()
    assert flow.run("--why", "c.txt")[1].count("made by: rule c") == 1
    # From now on content decides: an older mtime alone changes nothing.
    os.utime(flow.root / "c.txt", (1, 1))
    assert flow.planned() == []


def test_output_edited_by_hand_is_rebuilt(chain):
    chain.file("b.txt", "tampered\n")
    assert reasons(chain)["b.txt"] == ["output-modified"]


def test_incomplete_output_from_a_killed_run_is_rerun(chain):
    from flowmake.store import Store

    store = Store.open(chain.root)
    store.begin("b:b.txt", ["b.txt"], None)
    store.flush()
    # Simulate the owner dying: the segment's lock is released when the store is abandoned.
    store._writer.close()  # noqa: SLF001 - the test plays a crashed process
    assert reasons(chain)["b.txt"] == ["incomplete"]


def test_dag_formats(chain):
    rc, out, _ = chain.run("--dag")
    assert rc == 0 and out.startswith("digraph flowmake {") and "->" in out
    rc, out, _ = chain.run("--dag", "mermaid")
    assert out.startswith("flowchart TD") and "-->" in out


def test_no_flowfile_is_a_usage_error(tmp_path):
    from flowmake.cli import main

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert main(["-n"]) == 2
    finally:
        os.chdir(cwd)


def test_json_is_valid_when_nothing_to_do(chain):
    rc, out, _ = chain.run("-n", "--json")
    assert json.loads(out) == {"steps": []}


def test_protected_output_is_never_overwritten(flow):
    flow.write("""
        rule a:
            input: "in.txt"
            output: protected("out.txt")
            shell: "cp {input} {output}"
    """)
    flow.file("in.txt", "1\n")
    flow.ok()
    flow.file("in.txt", "2\n")
    rc, _, err = flow.run()
    assert rc == 2
    assert "write-protected outputs would be overwritten" in err and "rm -f out.txt" in err
    assert flow.read("out.txt") == "1\n"
    (flow.root / "out.txt").unlink()
    flow.ok()
    assert flow.read("out.txt") == "2\n"


def test_snakemake_habits_are_accepted(chain):
    assert chain.run("--unlock")[0] == 0
    rc, out, _ = chain.run("-n", "-r", "--rerun-incomplete", "--nolock")
    assert rc == 0 and "Nothing to do" in out
