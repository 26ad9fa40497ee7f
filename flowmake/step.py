"""A step: one rule bound to wildcard values, with the outputs it makes and, once instantiated, its
``Instance`` (inputs, params, command). ``graph.py`` makes them; the planner and scheduler read them.
"""

from __future__ import annotations

from typing import Any

from flowmake.rules import Instance, Rule


class Step:
    """A rule with bound wildcards. It is *pending* while it waits on a checkpoint (no instance yet).

    ``resolved``: its inputs have been found or planned to be made, and ``deps`` lists their
    producers; false until then, and again when a checkpoint it consulted is to run first.
    """

    __slots__ = ("id", "rule", "_bindings", "_instance", "outputs", "deps", "waits_on", "resolved")

    def __init__(self, rule: Rule, bindings: object, outputs: tuple[str, ...]) -> None:
        self.rule = rule
        self._bindings = bindings
        self.outputs = outputs
        self._instance: Instance | None = None
        self.deps: list[Step] = []
        # Checkpoint outputs this step's input function needs before it can be instantiated.
        self.waits_on: tuple[str, ...] = ()
        self.id = _step_id(rule.name, bindings, outputs)
        self.resolved = False

    @property
    def bindings(self) -> Any:
        return self._bindings

    def raw_values(self) -> tuple[str, ...]:
        """The wildcard values as spelled in paths, in ``rule.wildcard_names`` order."""
        return tuple(map(self.bindings._raw.__getitem__, self.rule.wildcard_names))

    @property
    def instance(self) -> Instance | None:
        return self._instance

    @instance.setter
    def instance(self, inst: Instance | None) -> None:
        self._instance = inst

    @property
    def inputs(self) -> list[str]:
        inst = self.instance
        return list(inst.input) if inst is not None else []

    @property
    def pending(self) -> bool:
        return self._instance is None

    def __repr__(self) -> str:
        return f"<Step {self.id}>"


def _step_id(rule: str, bindings: object, outputs: tuple[str, ...]) -> str:
    # (rule, first output) is unique: a path has one producer. Output-less rules use wildcards.
    if outputs:
        return f"{rule}:{outputs[0]}"
    raw = getattr(bindings, "raw", None)
    names = list(bindings) if bindings else []  # type: ignore[call-overload]  # a Step's bindings are a Bindings when truthy
    if names and raw is not None:
        return rule + "[" + ",".join(f"{n}={raw(n)}" for n in names) + "]"
    return rule
