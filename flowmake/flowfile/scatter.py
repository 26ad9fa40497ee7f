"""``scattergather:`` and the ``scatter``/``gather`` objects of a rule file, as in Snakemake.

``scattergather: split=8`` declares a scatter named ``split`` of 8 items; ``scatter.split(pattern)``
and ``gather.split(pattern)`` both expand ``{scatteritem}`` to ``1-of-8`` … ``8-of-8`` (the one
splits, the other collects: they name the same paths). ``--set-scatter split=4`` changes the count
without editing the file. Declaring one also constrains the ``scatteritem`` wildcard to
``\\d+-of-\\d+`` everywhere, so a rule's ``{scatteritem}`` never matches anything else.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from flowmake.errors import FlowfileError, did_you_mean
from flowmake.flowfile.helpers import expand
from flowmake.rules import Workflow

SCATTERITEM = r"\d+-of-\d+"


class _Splits:
    """``scatter`` or ``gather``: one method per declared scatter."""

    def __init__(self, owner: ScatterGather, kind: str) -> None:
        self._owner = owner
        self._kind = kind

    def __getattr__(self, name: str) -> Callable[..., list[str]]:
        if name.startswith("__"):
            raise AttributeError(name)
        counts = self._owner.counts
        if name not in counts:
            raise FlowfileError(
                f"{self._kind}.{name}: no scatter named '{name}'",
                hint=did_you_mean(name, counts) or "declare it first: scattergather: " + name + "=N")
        return lambda *patterns, **wildcards: self._owner.paths(name, *patterns, **wildcards)

    def __repr__(self) -> str:
        return f"<{self._kind} {', '.join(self._owner.counts) or '(none declared)'}>"


class ScatterGather:
    """The scatters a rule file declared, with the counts ``--set-scatter`` gave (those win)."""

    def __init__(self, workflow: Workflow, overrides: Mapping[str, int] | None = None) -> None:
        self._workflow = workflow
        self.overrides = dict(overrides or {})
        self.counts: dict[str, int] = {}
        self.scatter = _Splits(self, "scatter")
        self.gather = _Splits(self, "gather")

    def declare(self, counts: Mapping[str, Any]) -> None:
        for name, n in [*counts.items(), *self.overrides.items()]:
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise FlowfileError(f"scattergather: '{name}' must be a positive whole number, not {n!r}")
        self.counts.update(counts)
        self.counts.update(self.overrides)
        self._workflow.wildcard_constraints.setdefault("scatteritem", SCATTERITEM)

    def paths(self, name: str, *patterns: Any, **wildcards: Any) -> list[str]:
        n = self.counts[name]
        return expand(*patterns, scatteritem=[f"{i}-of-{n}" for i in range(1, n + 1)], **wildcards)
