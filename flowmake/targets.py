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
                   omit_from: list[str]) -> list[Step]:
    """The steps a run takes: up to ``--until`` steps, without ``--omit-from`` ones and downstream."""
    if until:
        keep = {id(s) for s in graph.walk(select(graph, workflow, steps, until, "--until", workdir))}
        steps = [s for s in steps if id(s) in keep]
    if omit_from:
        roots = select(graph, workflow, steps, omit_from, "--omit-from", workdir)
        drop = {id(s) for s in downstream(steps, roots)}
        steps = [s for s in steps if id(s) not in drop]
    return steps
