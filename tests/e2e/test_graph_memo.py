"""The graph memo: a no-op reuses the last run's graph, and every kind of edit is still seen.

Each edit below is planned twice: through the memo the last build left, and with the memo deleted
(the graph resolved from scratch). Both plans must be the same, reasons included.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import pytest

from flowmake import api
from flowmake.graph_memo import MEMO_FILE
from flowmake.rules import Rule
from tests.conftest import Flow

FLOWFILE = """
    import os
    SAMPLES = sorted(glob_wildcards("data/{s}.src").s)
    GREETING = os.environ.get("GREETING", "hi")

    rule all:
        input: expand("out/{s}.2", s=SAMPLES), "out/summary"
    rule one:
        input: "data/{s}.src"
        output: "out/{s}.1"
        shell: "cat {input} > {output}"
    rule two:
        input: "out/{s}.1"
        output: "out/{s}.2"
        params: p=config.get("p", "x")
        shell: "(cat {input}; echo {params.p} {GREETING}) > {output}"
    rule summary:
        input: expand("out/{s}.1", s=SAMPLES)
        output: "out/summary"
        shell: "cat {input} > {output}"
"""


def memo_path(flow: Flow) -> Path:
    return flow.root / ".flowmake" / MEMO_FILE


@pytest.fixture
def built(flow: Flow) -> Flow:
    flow.write(FLOWFILE)
    for s in ("a", "b", "c"):
        flow.file(f"data/{s}.src", f"{s}\n")
    flow.ok("-c", "2")
    assert memo_path(flow).exists(), "a run of a function-free workflow leaves a graph memo"
    return flow


def plan_both_ways(flow: Flow, *args: str, env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The dry-run plan through the memo, checked against the plan without it."""
    saved = dict(os.environ)
    os.environ.update(env or {})
    try:
        with_memo = dry_run(flow, *args)
        os.unlink(memo_path(flow))
        without = dry_run(flow, *args)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert with_memo == without, "the memo must not change any decision"
    return with_memo


def dry_run(flow: Flow, *args: str) -> list[dict[str, Any]]:
    rc, out, err = flow.run("-n", "--json", *args)
    assert rc == 0 and "Traceback" not in err, err
    import json

    return sorted(json.loads(out)["steps"], key=lambda s: s["outputs"][:1] or [s["rule"]])


def reasons(plan: list[dict[str, Any]]) -> dict[str, list[str]]:
    """What would run, with the kinds of reason (once each: a step waits on each upstream step)."""
    return {(s["outputs"][0] if s["outputs"] else s["rule"]): sorted({r["kind"] for r in s["reasons"]}) for s in plan}


def instantiations(flow: Flow, monkeypatch: pytest.MonkeyPatch) -> int:
    """How many steps a real in-process run instantiates (what the memo saves a no-op from)."""
    count = 0
    real = Rule.instantiate

    def counting(self: Rule, *a: Any, **k: Any) -> Any:
        nonlocal count
        count += 1
        return real(self, *a, **k)

    monkeypatch.setattr(Rule, "instantiate", counting)
    monkeypatch.chdir(flow.root)
    assert api.build(api.Options(cores=1, quiet=True)) == 0
    return count


def test_noop_decides_every_step_from_the_memo(built: Flow, monkeypatch: pytest.MonkeyPatch) -> None:
    # Only "all" is instantiated: a step without outputs has no trace to skip by.
    assert instantiations(built, monkeypatch) == 1
    os.unlink(memo_path(built))
    assert instantiations(built, monkeypatch) == 8, "without the memo, every step is resolved again"
    assert memo_path(built).exists()


def write_command(flow: Flow) -> None:
    flow.write(FLOWFILE.replace("cat {input} > {output}\"\n    rule two", "cat {input} {input} > {output}\"\n    rule two"))


def add_sample(flow: Flow) -> None:
    flow.file("data/d.src", "d\n")


def remove_sample(flow: Flow) -> None:
    os.unlink(flow.root / "data/c.src")


def edit_input(flow: Flow) -> None:
    flow.file("data/a.src", "A\n")


def edit_output(flow: Flow) -> None:
    flow.file("out/b.2", "changed by hand\n")


def delete_output(flow: Flow) -> None:
    os.unlink(flow.root / "out/b.1")


def rename_rule_file(flow: Flow) -> None:
    os.rename(flow.root / "Flowfile", flow.root / "Snakefile")


EDITS: dict[str, tuple[Callable[[Flow], None], tuple[str, ...], dict[str, str], dict[str, list[str]]]] = {
    "nothing": (lambda f: None, (), {}, {}),
    "command": (write_command, (), {}, {"out/a.1": ["command-changed"], "out/b.1": ["command-changed"],
                                        "out/c.1": ["command-changed"], "out/a.2": ["upstream-changed"],
                                        "out/b.2": ["upstream-changed"], "out/c.2": ["upstream-changed"],
                                        "out/summary": ["upstream-changed"], "all": ["upstream-changed"]}),
    "new sample": (add_sample, (), {}, {"out/d.1": ["missing"], "out/d.2": ["missing"],
                                        "out/summary": ["upstream-changed"], "all": ["upstream-changed"]}),
    "input edited": (edit_input, (), {}, {"out/a.1": ["input-changed"], "out/a.2": ["upstream-changed"],
                                          "out/summary": ["upstream-changed"], "all": ["upstream-changed"]}),
    "output edited": (edit_output, (), {}, {"out/b.2": ["output-modified"], "all": ["upstream-changed"]}),
    "output deleted": (delete_output, (), {}, {"out/b.1": ["missing"], "out/b.2": ["upstream-changed"],
                                               "out/summary": ["upstream-changed"], "all": ["upstream-changed"]}),
    "config": (lambda f: None, ("--config", "p=y"), {}, {f"out/{s}.2": ["command-changed", "params-changed"]
                                                          for s in "abc"}
               | {"all": ["upstream-changed"]}),
    "global in command": (lambda f: None, (), {"GREETING": "hello"},
                          {f"out/{s}.2": ["command-changed"] for s in "abc"} | {"all": ["upstream-changed"]}),
    "other target": (lambda f: None, ("out/a.2",), {}, {}),
    "rule file renamed": (rename_rule_file, (), {}, {}),
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_every_edit_is_seen_through_the_memo(built: Flow, edit: str) -> None:
    change, args, env, expected = EDITS[edit]
    change(built)
    assert reasons(plan_both_ways(built, *args, env=env)) == expected


def test_removed_source_file_is_seen(built: Flow) -> None:
    remove_sample(built)
    # c is no longer a sample: all and summary now need less (summary's inputs and command changed).
    assert reasons(plan_both_ways(built)) == {"out/summary": ["command-changed", "input-changed"],
                                              "all": ["upstream-changed"]}


def test_missing_source_is_an_error_not_a_stale_graph(flow: Flow) -> None:
    flow.write("""
        rule all:
            input: "out/a.2"
        rule one:
            input: "data/a.src"
            output: "out/a.2"
            shell: "cat {input} > {output}"
    """)
    flow.file("data/a.src", "a\n")
    flow.ok("-c", "1")
    os.unlink(flow.root / "data/a.src")
    os.unlink(flow.root / "out/a.2")
    rc, _, err = flow.run("-c", "1")
    assert rc != 0 and "data/a.src" in err and "Traceback" not in err


def test_workflow_with_input_functions_has_no_memo(flow: Flow) -> None:
    flow.write("""
        rule all:
            input: lambda wc: ["out.txt"]
        rule one:
            output: "out.txt"
            shell: "echo x > {output}"
    """)
    flow.ok("-c", "1")
    assert flow.exists("out.txt") and not memo_path(flow).exists()
    assert flow.planned() == []


def test_unreadable_memo_is_ignored_and_replaced(built: Flow, monkeypatch: pytest.MonkeyPatch) -> None:
    data = memo_path(built).read_bytes()
    memo_path(built).write_bytes(data[: len(data) // 2])  # torn: as if the disk filled up mid-write
    assert built.planned() == []
    assert instantiations(built, monkeypatch) == 8
    assert instantiations(built, monkeypatch) == 1, "the next run wrote a whole memo again"


def test_script_rule_change_is_seen(flow: Flow) -> None:
    """A script's content is part of the key and not of the fingerprint: its steps never skip
    from the memo."""
    flow.write("""
        rule all:
            input: "out.txt"
        rule one:
            input: "in.txt"
            output: "out.txt"
            script: "make.py"
    """)
    flow.file("in.txt", "x\n")
    flow.file("make.py", "open(snakemake.output[0], 'w').write('one\\n')\n")
    flow.ok("-c", "1")
    assert flow.planned() == []
    flow.file("make.py", "open(snakemake.output[0], 'w').write('two\\n')\n")
    assert reasons(plan_both_ways(flow)) == {"out.txt": ["code-changed"], "all": ["upstream-changed"]}
