"""Shake's random test, for flowmake: random DAGs, random edits, random -j.

Every incremental build must leave the same outputs as a clean build of the same sources, and a step
runs exactly when its step key changed (or its output was missing) — never otherwise.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowmake.cli import main
from flowmake.store import Store

# Commands chosen so that some edits change an output and some do not (early cutoff gets exercised).
# Every command reads params.p, so ignoring a params change would show as a wrong output.
COMMANDS = [
    "(cat {input}; echo {params.p}) > {output}",
    "(cat {input}; echo {params.p}) | wc -c > {output}",
    "(cat {input}; echo {params.p}) | cut -c1 > {output}",
    "(cat {input}; echo {params.p}) | sort > {output}",
]


@st.composite
def workflows(draw: st.DrawFn) -> dict:
    n = draw(st.integers(2, 7))
    nodes = []
    for i in range(n):
        deps = sorted(draw(st.sets(st.integers(0, i - 1), max_size=3))) if i else []
        sources = sorted(draw(st.sets(st.integers(0, 2), min_size=0 if deps else 1, max_size=2)))
        nodes.append({"deps": deps, "sources": sources, "cmd": draw(st.integers(0, len(COMMANDS) - 1)),
                      "param": draw(st.integers(0, 1))})
    contents = [draw(st.sampled_from(["a\n", "b\n", "ab\n", "ba\n"])) for _ in range(3)]
    edits = draw(st.lists(st.tuples(st.sampled_from(["content", "same", "touch", "cmd", "param"]),
                                    st.integers(0, 6), st.integers(0, 3)), min_size=1, max_size=4))
    return {"nodes": nodes, "contents": contents, "edits": edits, "jobs": draw(st.integers(1, 3))}


def render(wf: dict) -> str:
    rules = ["rule all:\n    input: " + ", ".join(f'"n{i}.txt"' for i in range(len(wf["nodes"])))]
    for i, node in enumerate(wf["nodes"]):
        inputs = [f'"src{s}.txt"' for s in node["sources"]] + [f'"n{d}.txt"' for d in node["deps"]]
        cmd = COMMANDS[node["cmd"]].replace("{output}", "{output}; echo n%d >> ../ran.log" % i)
        rules.append(
            f"rule n{i}:\n    input: {', '.join(inputs)}\n    output: \"n{i}.txt\"\n"
            f"    params: p={node['param']}\n    shell: \"{cmd}\""
        )
    return "\n\n".join(rules) + "\n"


def write_sources(d: Path, wf: dict) -> None:
    for i, text in enumerate(wf["contents"]):
        p = d / f"src{i}.txt"
        if not p.exists() or p.read_text() != text:
            p.write_text(text)


def build(d: Path, jobs: int) -> list[str]:
    log = d.parent / "ran.log"
    log.write_text("")
    cwd = os.getcwd()
    try:
        assert main(["-d", str(d), "-c", str(jobs), "-q"]) == 0
    finally:
        os.chdir(cwd)
    return log.read_text().split()


def keys(d: Path, n: int) -> dict[str, str | None]:
    store = Store.open(d, readonly=True)
    return {f"n{i}": (t.key if (t := store.trace(f"n{i}.txt")) else None) for i in range(n)}


def outputs(d: Path, n: int) -> dict[str, str]:
    return {f"n{i}": (d / f"n{i}.txt").read_text() for i in range(n)}


def apply(edit: tuple[str, int, int], wf: dict, d: Path) -> None:
    kind, target, value = edit
    node = wf["nodes"][target % len(wf["nodes"])]
    src = d / f"src{target % 3}.txt"
    if kind == "content":
        wf["contents"][target % 3] = ["a\n", "b\n", "ab\n", "ba\n"][value]
    elif kind == "same":
        src.write_text(src.read_text())  # same bytes, new mtime
    elif kind == "touch":
        os.utime(src, (1, 1))  # a clock far in the past: mtimes must not matter either way
    elif kind == "cmd":
        node["cmd"] = value
    elif kind == "param":
        node["param"] = value % 2


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(wf=workflows())
def test_incremental_equals_clean_and_runs_only_changed_keys(tmp_path: Path, wf: dict) -> None:
    root = tmp_path / "case"
    shutil.rmtree(root, ignore_errors=True)
    inc = root / "inc"
    inc.mkdir(parents=True)
    n = len(wf["nodes"])
    (inc / "Flowfile").write_text(render(wf))
    write_sources(inc, wf)
    build(inc, wf["jobs"])
    for edit in wf["edits"]:
        before = keys(inc, n)
        apply(edit, wf, inc)
        (inc / "Flowfile").write_text(render(wf))
        write_sources(inc, wf)
        ran = set(build(inc, wf["jobs"]))
        after = keys(inc, n)
        for name in before:
            changed = before[name] != after[name]
            assert (name in ran) == changed, f"{name}: ran={name in ran} key changed={changed} after {edit}"
        clean = root / f"clean{len(os.listdir(root))}"
        clean.mkdir()
        (clean / "Flowfile").write_text(render(wf))
        write_sources(clean, wf)
        build(clean, wf["jobs"])
        assert outputs(inc, n) == outputs(clean, n)
