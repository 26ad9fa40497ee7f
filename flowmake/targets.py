"""What the user asked for: target paths inside the working directory or rule names as graph roots,
and the steps that ``-R``/``-f``/``-F``, ``--until`` and ``--omit-from`` pick from the graph."""

from __future__ import annotations

import os
import posixpath
from typing import Any, Callable, Sequence

from flowmake.errors import UnsafePathError, UsageError, did_you_mean
from flowmake.graph import Graph, Step


def normalize_target(path: str, workdir: str) -> str:
    """A workdir-relative path, refusing anything that would leave the workdir."""
    if os.path.isabs(path):
        rel = os.path.relpath(path, workdir)
    else:
        rel = path
    norm = posixpath.normpath(rel.replace(os.sep, "/"))
    if norm == ".." or norm.startswith("../") or os.path.isabs(norm):
        raise UnsafePathError(f"{path!r} is outside the working directory", target=path)
    return norm


def target_spec(workflow: Any, targets: list[str], workdir: str) -> list[tuple[str, str]]:
    """("rule", name) or ("path", workdir-relative path) for each target; the default rule if none."""
    if not targets:
        rule = workflow.default_rule
        # A rule file without rules (only includes that define none, or only Python) has
        # nothing to do, as in Snakemake.
        return [("rule", rule.name)] if rule is not None else []
    rule_names = {r.name for r in workflow.rules}
    return [("rule", t) if t in rule_names and not os.path.exists(t) else ("path", normalize_target(t, workdir))
            for t in targets]


def resolve_targets(graph: Graph, workflow: Any, spec: list[tuple[str, str]]) -> None:
    for kind, target in spec:
        if kind == "rule":
            graph.add_rule_target(workflow.rule(target))
        else:
            graph.add_targets([target])


def select(graph: Graph, workflow: Any, steps: Sequence[Step], names: list[str], flag: str,
           workdir: str) -> list[Step]:
    """Steps named by rule names or output files (for ``flag``, named in the error)."""
    rules = {r.name for r in workflow.rules}
    picked: list[Step] = []
    for name in names:
        if name in rules:
            picked.extend(s for s in steps if s.rule.name == name)
            continue
        path = normalize_target(name, workdir)
        prod = graph.producer.get(path)
        if isinstance(prod, Step):
            picked.append(prod)
        else:
            raise UsageError(f"{flag}: {name!r} is neither a rule nor an output of this plan",
                             hint=did_you_mean(name, rules))
    return picked


def downstream(steps: Sequence[Step], roots: Sequence[Step]) -> list[Step]:
    """The roots and every step that depends on one of them, in ``steps`` order."""
    marked = {id(r) for r in roots}
    for s in steps:  # dependencies come first, so one pass suffices
        if any(id(d) in marked for d in s.deps):
            marked.add(id(s))
    return [s for s in steps if id(s) in marked]


def batch_part(items: Sequence[str], i: int, n: int) -> list[str]:
    """The ``i``-th of ``n`` near-equal parts of the sorted ``items`` (Snakemake's Batch); the
    last part takes the rest."""
    items = sorted(items)
    k, m = divmod(len(items), n)
    start = (i - 1) * k + min(i - 1, m)
    return items[start:] if i == n else items[start:i * k + min(i, m)]


def batch_steps(graph: Graph, steps: list[Step], workdir: str, batch: tuple[str, int, int]) -> list[Step]:
    """``--batch RULE=i/n``: the steps of RULE need only the i-th part of their inputs. Before the
    last batch RULE's steps and what depends on them are left out (their input is incomplete);
    the last batch runs them, the parts of earlier batches having to be there by then."""
    rule, i, n = batch
    batched = [s for s in steps if s.rule.name == rule]
    if not batched:
        raise UsageError(f"--batch {rule}={i}/{n}: no step of rule {rule!r} is needed for the targets")
    parts = {}
    for s in batched:
        if len(s.inputs) < n:
            raise UsageError(f"--batch {rule}={i}/{n}: rule {rule!r} has fewer input files than "
                             "batches", hint="choose fewer batches")
        parts[id(s)] = batch_part(s.inputs, i, n)
    if i == n:  # the whole graph, once the earlier parts are there
        gone = sorted({p for s in batched for p in s.inputs if p not in parts[id(s)]
                       and not os.path.lexists(os.path.join(workdir, p))})
        if gone:
            earlier = "batch 1" if n == 2 else f"batches 1 to {n - 1}"
            raise UsageError(f"--batch {rule}={i}/{n}: the earlier batches are not all done "
                             f"(missing: {', '.join(gone[:3])})", hint=f"run {earlier} first")
        return steps
    drop = {id(s) for s in downstream(steps, batched)}
    seen: set[int] = set()
    todo = [t for t in graph.targets if isinstance(t, Step)]
    while todo:  # what the targets need, a batched step needing only its part
        s = todo.pop()
        if id(s) in seen:
            continue
        seen.add(id(s))
        if id(s) in parts:
            todo += [d for d in (graph.producer.get(p) for p in parts[id(s)]) if isinstance(d, Step)]
        else:
            todo += s.deps
    return [s for s in steps if id(s) in seen and id(s) not in drop]


def forced_steps(graph: Graph, workflow: Any, steps: Sequence[Step], workdir: str, *, forceall: bool,
                 force: bool, forcerun: list[str]) -> Callable[[Step], bool]:
    """``-F`` (everything), ``-f`` (the targets), ``-R`` (named steps and all downstream)."""
    if forceall:
        return lambda s: True
    chosen: set[int] = set()
    if force:
        chosen.update(id(t) for t in graph.targets if isinstance(t, Step))
    if forcerun:
        roots = select(graph, workflow, steps, forcerun, "-R/--forcerun", workdir)
        chosen.update(id(s) for s in downstream(steps, roots))
    return lambda s: id(s) in chosen


def selected_steps(graph: Graph, workflow: Any, steps: list[Step], workdir: str, *, until: list[str],
                   omit_from: list[str], batch: tuple[str, int, int] | None = None) -> list[Step]:
    """The steps a run takes: up to ``--until`` steps, without ``--omit-from`` ones and downstream,
    and with ``--batch``, only what the batch needs (``batch_steps``)."""
    if batch is not None:
        steps = batch_steps(graph, steps, workdir, batch)
    if until:
        keep = {id(s) for s in graph.walk(select(graph, workflow, steps, until, "--until", workdir))}
        steps = [s for s in steps if id(s) in keep]
    if omit_from:
        roots = select(graph, workflow, steps, omit_from, "--omit-from", workdir)
        drop = {id(s) for s in downstream(steps, roots)}
        steps = [s for s in steps if id(s) not in drop]
    return steps
