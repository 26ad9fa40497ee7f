"""The planner's part for pipe groups (``pipes``): a stream's stand-in digest, and one decision per
group.

A pipe or service has no content: what its reader gets is what its producer's command makes of the
producer's inputs, so the reader's key takes the producer's key in its place (``with_streams``).
The steps of a group run together or not at all (``align_groups``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Mapping

from flowmake.keys import key_of_values
from flowmake.pipes import STREAM_DIGEST, PipeGroup
from flowmake.planner import Decision, Facts, Reason, ReasonKind, StepPlan, _key_parts, decide_downstream


def with_streams(facts: Facts, groups: Mapping[int, PipeGroup]) -> Facts:
    """The facts with a digest for each pipe and service: its producer's key. A stream has no
    content; what its reader gets is what its producer's command makes of its inputs."""
    producer = {p: s for g in groups.values() for p, s in g.producer.items()}
    real = facts.digest

    def digest(path: str) -> str | None:
        if path not in producer:
            return real(path)
        parts = _key_parts(producer[path], streaming)
        return STREAM_DIGEST + key_of_values(parts[0]) if parts is not None else None

    streaming = replace(facts, digest=digest)
    return streaming


def align_groups(out: list[StepPlan], by_id: dict[int, StepPlan], groups: Mapping[int, PipeGroup],
                 facts: Facts) -> None:
    """The steps of a pipe group run together or not at all: one that runs makes the others run,
    one that may run (pending) makes them wait with it. Their dependants decided meanwhile are
    decided again."""
    again = True
    while again:
        again, moved = False, set()
        for g in {id(g): g for g in groups.values()}.values():
            sps = [by_id[id(m)] for m in g.members if id(m) in by_id]
            running = [sp for sp in sps if sp.decision is Decision.RUN]
            waiting = [sp for sp in sps if sp.decision is Decision.PENDING]
            if not running and not waiting:
                continue
            for sp in sps:
                if sp.decision is Decision.RUN or (sp.decision is Decision.PENDING and not running):
                    continue
                sp.decision = Decision.RUN if running else Decision.PENDING
                sp.reasons = [Reason(ReasonKind.PIPE_GROUP, step=(running or waiting)[0].step.id)]
                moved.add(id(sp.step))
        if not moved:
            return
        again = decide_downstream(out, by_id, facts, moved)
