"""Paths that remember where they come from, for rule files that use Snakemake's idioms.

``rules.NAME.output`` items name the rule that makes them (the graph prefers that rule for such an
input); ``checkpoints.NAME.get().output`` items can be opened in place by an input function.
"""

from __future__ import annotations

from typing import Any


class RuleOutput(str):
    """An output pattern of ``rules.NAME.output``: the path, remembering which rule makes it."""

    rule_name: str

    def __new__(cls, text: str, rule_name: str = "") -> RuleOutput:  # unpickling passes text only
        self = super().__new__(cls, text)
        self.rule_name = rule_name
        return self


class CheckpointPath(str):
    """A finished checkpoint's output path, which input functions may open in place
    (``checkpoints.x.get(**wc).output[0].open()``, as in Snakemake)."""

    __slots__ = ()

    def open(self, mode: str = "r", buffering: int = -1, encoding: str | None = None,
             errors: str | None = None, newline: str | None = None) -> Any:
        return open(self, mode, buffering, encoding, errors, newline)
