"""The ``rules`` and ``checkpoints`` objects of a rule file's namespace: ``rules.NAME.output`` (a
rule's declared patterns, for later rules) and ``checkpoints.NAME.get(**wildcards)`` (a finished
checkpoint's outputs, for input functions; an unfinished one raises ``IncompleteCheckpoint``).
"""

from __future__ import annotations

from typing import Any, Mapping

from flowmake.directives import Flags, IncompleteCheckpoint
from flowmake.errors import FlowfileError, did_you_mean
from flowmake.namedlist import NamedList
from flowmake.patterns import Bindings
from flowmake.rule_paths import CheckpointPath, RuleOutput
from flowmake.rules import _CHECKPOINT_CONTEXT, Rule, Workflow


class CheckpointJob:
    """What ``checkpoints.NAME.get(**wildcards)`` returns once the checkpoint has finished."""

    def __init__(self, rule: Rule, output: NamedList, wildcards: Mapping[str, Any]) -> None:
        self.rule = rule
        self.output = NamedList._make([CheckpointPath(p) for p in output], output._names,
                                      output._single)
        self.wildcards = wildcards


class _CheckpointHandle:
    def __init__(self, rule: Rule) -> None:
        self.rule = rule

    def get(self, **wildcards: Any) -> CheckpointJob:
        context = _CHECKPOINT_CONTEXT.get()
        if context is None:
            raise FlowfileError(f"checkpoints.{self.rule.name}.get() can only be called from an input "
                                "function", location=self.rule.location, rule=self.rule.name)
        view, consulted = context
        raw = {k: str(v) for k, v in wildcards.items()}
        output = self.rule._format_static(self.rule._output, Bindings(raw, raw), Flags())
        paths = tuple(output)
        if not view.is_done(paths):
            raise IncompleteCheckpoint(self.rule.name, paths)
        consulted.update(paths)
        return CheckpointJob(self.rule, output, wildcards)


class Checkpoints:
    """The ``checkpoints`` object of a rule file namespace."""

    def __init__(self, workflow: Workflow) -> None:
        self._workflow = workflow

    def __getattr__(self, name: str) -> _CheckpointHandle:
        if name.startswith("__"):
            raise AttributeError(name)
        wf = self._workflow
        checkpoints = [r.name for r in wf.rules if r.is_checkpoint]
        if not wf.has_rule(name) or not wf.rule(name).is_checkpoint:
            raise FlowfileError(f"no checkpoint named '{name}'", hint=did_you_mean(name, checkpoints))
        return _CheckpointHandle(wf.rule(name))


class RuleProxy:
    """``rules.NAME``: a rule's declared input/output/log patterns, for use in later rules."""

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        self.name = rule.name

    @property
    def input(self) -> NamedList:
        return _declared(self.rule._input)

    @property
    def output(self) -> NamedList:
        out = _declared(self.rule._output)
        return NamedList._make([RuleOutput(p, self.name) if isinstance(p, str) else p for p in out],
                               out._names, out._single)

    @property
    def log(self) -> NamedList:
        return _declared(self.rule._log)


def _declared(entries: list[Any]) -> NamedList:
    items: list[Any] = []
    names: dict[str, tuple[int, int]] = {}
    single: set[str] = set()
    for entry in entries:
        start = len(items)
        items.extend(entry.declared())
        if entry.name is not None:
            names[entry.name] = (start, len(items))
            if entry.single:
                single.add(entry.name)
    return NamedList(items, names, frozenset(single))


class Rules:
    """The ``rules`` object of a rule file namespace."""

    def __init__(self, workflow: Workflow) -> None:
        self._workflow = workflow

    def __getattr__(self, name: str) -> RuleProxy:
        if name.startswith("__"):
            raise AttributeError(name)
        wf = self._workflow
        if not wf.has_rule(name):
            raise FlowfileError(f"no rule named '{name}' (rules must be defined before use)",
                                hint=did_you_mean(name, [r.name for r in wf.rules]))
        return RuleProxy(wf.rule(name))
