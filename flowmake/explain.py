"""The planner's decisions in words: ``-n`` (and ``--json``), ``--why``, ``--summary``, ``--dag``,
``--list-changes``. Reads a Session; changes nothing."""

from __future__ import annotations

import collections
import datetime
import json
import sys
from typing import Any, TextIO

from flowmake.graph import Step
from flowmake.planner import Decision, ReasonKind, plan_step, unsettled_in
from flowmake.rules import RuleKind


def _wildcards(step: Step) -> dict[str, str]:
    b = step.bindings
    if not b:
        return {}
    return {n: b.raw(n) for n in b}


def print_plan(session: Any, steps: list[Step], *, as_json: bool, out: TextIO = sys.stdout) -> None:
    chosen = {id(s) for s in steps}
    todo = [sp for sp in session.plan.steps if id(sp.step) in chosen and sp.decision in _TODO]
    restores = session.plan.restores
    if as_json:
        doc = {
            "steps": [
                {
                    "rule": sp.step.rule.name,
                    "outputs": list(sp.step.outputs),
                    "wildcards": _wildcards(sp.step),
                    "reasons": [r.to_json() for r in sp.reasons],
                    **_json_decision(sp, restores),
                }
                for sp in todo
            ]
        }
        json.dump(doc, out, indent=1)
        out.write("\n")
        return
    lines: list[str] = []
    add = lines.append
    show_cmd = session.opts.printshellcmds
    for sp in todo:
        step = sp.step
        verb = "restore" if sp.decision is Decision.RESTORE else "rule"  # from the shared cache
        add(f"{verb} {step.rule.name}: {', '.join(step.outputs) or step.id}")
        inst = step.instance
        if inst is not None and inst.input:
            shown = list(inst.input)
            more = f" (+{len(shown) - 5} more)" if len(shown) > 5 else ""
            add(f"    input: {', '.join(shown[:5])}{more}")
        wc = _wildcards(step)
        if wc:
            add("    wildcards: " + ", ".join(f"{k}={v}" for k, v in wc.items()))
        for reason in sp.reasons[:5]:
            add(f"    why: {reason}")
        if len(sp.reasons) > 5:
            add(f"    why: ... and {len(sp.reasons) - 5} more")
        if show_cmd and inst is not None and step.rule.kind is RuleKind.SHELL:
            add("    " + inst.command().strip().replace("\n", "\n    "))
    if lines:
        out.write("\n".join(lines) + "\n")
    restored = [sp for sp in todo if sp.decision is Decision.RESTORE]
    runs = [sp for sp in todo if sp.decision is not Decision.RESTORE]
    counts = collections.Counter(sp.step.rule.name for sp in runs)
    pending = sum(1 for sp in runs if sp.decision is Decision.PENDING)
    up_to_date = sum(1 for s in steps) - len(todo)
    if not todo:
        out.write(f"Nothing to do: all {up_to_date} steps are up to date.\n")
        return
    if runs:
        table = ", ".join(f"{n} {r}" for r, n in sorted(counts.items()))
        out.write(f"Would run {len(runs)} step{'s' if len(runs) != 1 else ''} ({table})")
        if pending:
            out.write(f", {pending} of them only if their upstream output changes")
        out.write("; ")
    if restored:
        left = sum(1 for sp in restored if not restores[id(sp.step)].place)
        out.write(f"{'would restore' if runs else 'Would restore'} {len(restored)} step{'s' if len(restored) != 1 else ''}"
                  f" from the cache{f' ({left} left there, not materialised)' if left else ''}; ")
    out.write(f"{up_to_date} up to date.\n")


_TODO = (Decision.RUN, Decision.PENDING, Decision.RESTORE)


def _json_decision(sp: Any, restores: Any) -> dict[str, Any]:
    """Only a restore says more than its reasons: whether its outputs are placed, and its size."""
    if sp.decision is not Decision.RESTORE:
        return {}
    r = restores[id(sp.step)]
    return {"decision": "restore", "placed": r.place, "bytes": r.manifest.size}


def print_why(session: Any, path: str, out: TextIO = sys.stdout) -> None:
    store = session.store
    trace = store.trace(path)
    producer = session.graph.producer.get(path)
    if not isinstance(producer, Step):
        producer = None
    if trace is None:
        out.write(f"{path}: no record of how it was made")
        out.write(f" (rule {producer.rule.name} would make it)\n" if producer else "\n")
    else:
        when = datetime.datetime.fromtimestamp(trace.time).isoformat(sep=" ", timespec="seconds")
        out.write(f"{path}\n  made by: rule {trace.rule} ({trace.step_id})\n  when: {when}\n")
        out.write(f"  step key: {trace.key}\n  output digest: {trace.output_digest}\n")
        if trace.inputs:
            out.write("  from inputs:\n")
            for p, d in trace.inputs:
                out.write(f"    {p}  {d}\n")
        history = store.history(path)
        if history:
            h = history[-1]
            out.write(f"  last run: {h.runtime_s:.2f} s on {h.host or '?'} ({h.backend}), exit {h.exit_code}")
            if h.peak_rss_kb:
                out.write(f", peak RSS {h.peak_rss_kb // 1024} MiB")
            out.write("\n")
    if producer is None:
        return
    sp = session.plan.by_id.get(id(producer)) or plan_step(producer, unsettled_in(session.plan.by_id), session.plan.facts)
    if sp.decision in (Decision.SKIP, Decision.ADOPT):
        out.write("  state: up to date\n")
        for r in sp.reasons:  # in-cache: an earlier run left it in the shared cache
            out.write(f"    note: {r}\n")
    elif sp.decision is Decision.RESTORE:
        out.write("  state: in the shared cache: restored, not run\n")
        for r in sp.reasons:
            out.write(f"    why: {r}\n")
    else:
        out.write("  state: out of date\n")
        for r in sp.reasons:
            out.write(f"    why: {r}\n")


def print_summary(session: Any, out: TextIO = sys.stdout) -> None:
    out.write("output\tdate\trule\tstate\n")
    for sp in session.plan.steps:
        for o in sp.step.outputs:
            trace = session.store.trace(o)
            date = datetime.datetime.fromtimestamp(trace.time).isoformat(sep=" ", timespec="seconds") if trace else "-"
            if sp.decision in (Decision.SKIP, Decision.ADOPT):
                state = "ok"
            else:
                state = "; ".join(str(r) for r in sp.reasons) or sp.decision.value
            out.write(f"{o}\t{date}\t{sp.step.rule.name}\t{state}\n")


_CHANGE_KINDS = {
    "input": {ReasonKind.INPUT_CHANGED},
    "code": {ReasonKind.CODE_CHANGED, ReasonKind.COMMAND_CHANGED, ReasonKind.IMAGE_CHANGED},
    "params": {ReasonKind.PARAMS_CHANGED},
}


def print_changes(session: Any, kind: str, out: TextIO = sys.stdout) -> None:
    wanted = _CHANGE_KINDS[kind]
    for sp in session.plan.steps:
        if any(r.kind in wanted for r in sp.reasons):
            for o in sp.step.outputs:
                out.write(o + "\n")


def print_dag(session: Any, fmt: str, out: TextIO = sys.stdout) -> None:
    if fmt == "mermaid-js":
        out.write(_snakemake_mermaid(session))
        return
    import networkx as nx

    g: nx.DiGraph[str] = nx.DiGraph()
    for sp in session.plan.steps:
        g.add_node(sp.step.id, rule=sp.step.rule.name, run=sp.decision is not Decision.SKIP,
                   wildcards=_wildcards(sp.step))
        for dep in sp.step.deps:
            g.add_edge(dep.id, sp.step.id)
    names = {n: f"n{i}" for i, n in enumerate(nx.topological_sort(g))}
    if fmt == "mermaid":
        out.write("flowchart TD\n")
        for n, data in g.nodes(data=True):
            label = _label(data, "<br>").replace('"', "#quot;")
            out.write(f'    {names[n]}["{label}"]\n')
            if data["run"]:
                out.write(f"    style {names[n]} stroke-width:3px\n")
        for a, b in g.edges:
            out.write(f"    {names[a]} --> {names[b]}\n")
        return
    out.write("digraph flowmake {\n    node [shape=box, style=rounded, fontname=sans];\n")
    for n, data in g.nodes(data=True):
        style = "" if data["run"] else ", style=\"rounded,dashed\""
        label = _label(data, "\\n").replace('"', '\\"')
        out.write(f'    {names[n]} [label="{label}"{style}];\n')
    for a, b in g.edges:
        out.write(f"    {names[a]} -> {names[b]};\n")
    out.write("}\n")


def _label(data: dict[str, Any], sep: str) -> str:
    wc = data["wildcards"]
    extra = sep + sep.join(f"{k}: {v}" for k, v in wc.items()) if wc else ""
    return data["rule"] + extra


def _snakemake_mermaid(session: Any) -> str:
    """``--dag mermaid-js``: the flowchart exactly as Snakemake 9 writes it (its node order, one
    colour per rule by name, dashed steps that need not run), so tools reading its output work."""
    import colorsys

    runs = {id(sp.step): sp.decision is not Decision.SKIP for sp in session.plan.steps}
    order: list[Step] = []
    seen: set[int] = set()
    stack = [s for s in reversed(session.graph.targets) if isinstance(s, Step)]
    while stack:  # preorder from the targets, dependencies in input order, as Snakemake's DAG
        step = stack.pop()
        if id(step) in seen or id(step) not in runs:
            continue
        seen.add(id(step))
        order.append(step)
        stack.extend(reversed(step.deps))
    names = sorted(r.name for r in session.workflow.rules)
    colour = {}
    for i, name in enumerate(names):
        rgb = colorsys.hsv_to_rgb(i * 2 / (3 * len(names)), 0.6, 0.85)
        colour[name] = "#" + "".join(f"{round(255 * x):0>2X}" for x in rgb)
    ids = {id(s): i for i, s in enumerate(order)}
    heads, styles, edges = [], [], []
    for i, step in enumerate(order):
        new = set(_wildcards(step).items())
        for dep in step.deps:
            new -= set(_wildcards(dep).items())
        label = " - ".join([step.rule.name, *sorted(f"{k}: {v}" for k, v in new)])
        heads.append(f"\tid{i}[{label}]")
        dashed = "" if runs[id(step)] else ",stroke-dasharray: 5 5"
        styles.append(f"\tstyle id{i} fill:{colour[step.rule.name]},stroke-width:2px,color:#333333{dashed}")
        edges += [f"\tid{ids[id(d)]} --> id{i}" for d in step.deps if id(d) in ids]
    return ("---\ntitle: DAG\n---\nflowchart TB\n"
            + "\n".join(heads) + "\n" + "\n".join(styles) + "\n" + "\n".join(edges) + "\n")
