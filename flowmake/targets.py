"""What the user asked for, as graph roots: target paths inside the working directory, or rule names."""

from __future__ import annotations

import os
import posixpath
from typing import Any

from flowmake.errors import UnsafePathError, UsageError
from flowmake.graph import Graph


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
        if rule is None:
            raise UsageError("the rule file has no rules", hint="add a rule or name a target")
        return [("rule", rule.name)]
    rule_names = {r.name for r in workflow.rules}
    return [("rule", t) if t in rule_names and not os.path.exists(t) else ("path", normalize_target(t, workdir))
            for t in targets]


def resolve_targets(graph: Graph, workflow: Any, spec: list[tuple[str, str]]) -> None:
    for kind, target in spec:
        if kind == "rule":
            graph.add_rule_target(workflow.rule(target))
        else:
            graph.add_targets([target])
