"""The planner's vocabulary: what it decides for a step (``Decision``), why (``Reason``), and what
re-planning a pending step gives once its upstream finished (``Cutoff``). ``explain`` words them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Decision(enum.Enum):
    RUN = "run"
    SKIP = "skip"
    PENDING = "pending"  # runs only if an upstream step's outputs change
    ADOPT = "adopt"  # outputs exist untraced and are newer than their inputs: record, do not run
    RESTORE = "restore"  # the shared cache holds the step's key: its outputs come from there (cache_plan)


class Cutoff(enum.Enum):
    """What re-planning a pending step gives once its upstream finished (Shake's ``RunChanged``)."""

    SAME = "same"  # upstream reran and this step's key is what its traces hold: it skips (early cutoff)
    CHANGED = "changed"  # its key moved (or its outputs are not as traced): it runs


class ReasonKind(enum.Enum):
    MISSING = "missing"
    INCOMPLETE = "incomplete"
    IN_FLIGHT = "in-flight"  # another live flowmake on this workdir is writing it
    NO_TRACE = "no-trace"
    INPUT_CHANGED = "input-changed"
    COMMAND_CHANGED = "command-changed"
    PARAMS_CHANGED = "params-changed"
    CODE_CHANGED = "code-changed"
    IMAGE_CHANGED = "image-changed"
    UPSTREAM_CHANGED = "upstream-changed"
    OUTPUT_MODIFIED = "output-modified"
    FORCED = "forced"
    CHECKPOINT = "checkpoint"  # inputs known only when a checkpoint finishes
    PIPE_GROUP = "pipe-group"  # another step of its pipe group runs (or may): they run together
    CACHE_HIT = "cache-hit"  # the shared cache holds this step's key: restored, not run
    # Its outputs are in the shared cache and nothing this run does needs them on disk: they stay
    # there (traced as such); a later run places them once a target or a running step needs them.
    IN_CACHE = "in-cache"


@dataclass(frozen=True)
class Reason:
    kind: ReasonKind
    path: str | None = None
    step: str | None = None

    def to_json(self) -> dict[str, str]:
        out = {"kind": self.kind.value}
        if self.path is not None:
            out["path"] = self.path
        if self.step is not None:
            out["step"] = self.step
        return out

    def __str__(self) -> str:
        if self.kind is ReasonKind.MISSING and self.path is None:
            return "the rule has no outputs, so it always runs"
        words = _WORDS[self.kind]
        if self.path:
            words += f": {self.path}"
        if self.step:
            words += f": {self.step}"
        return words


_WORDS = {
    ReasonKind.MISSING: "output missing",
    ReasonKind.INCOMPLETE: "output left incomplete by an interrupted run",
    ReasonKind.IN_FLIGHT: "output being written by another flowmake run",
    ReasonKind.NO_TRACE: "no record of how the output was made",
    ReasonKind.INPUT_CHANGED: "input changed",
    ReasonKind.COMMAND_CHANGED: "command changed",
    ReasonKind.PARAMS_CHANGED: "params changed",
    ReasonKind.CODE_CHANGED: "code changed",
    ReasonKind.IMAGE_CHANGED: "container image changed",
    ReasonKind.UPSTREAM_CHANGED: "runs if the output of an upstream step changes",
    ReasonKind.OUTPUT_MODIFIED: "output was modified since it was made",
    ReasonKind.FORCED: "forced",
    ReasonKind.CHECKPOINT: "inputs known once a checkpoint finishes",
    ReasonKind.PIPE_GROUP: "runs at once with the rest of its pipe group",
    ReasonKind.CACHE_HIT: "cache-hit: the shared cache holds its outputs, restored instead of run",
    ReasonKind.IN_CACHE: "left in the cache, not materialised: no target or step that runs needs it",
}
