"""One record per step a run takes in: its state and what the scheduler counts for it.

ninja's ``Plan::want_`` in one type: the scheduler keeps a ``StepRecord`` per step it admits, in
state WAITING → READY → RUNNING → DONE or FAILED, or SKIPPED when no job was needed. Steps already up
to date when the run starts share one ``UpToDate`` record, so a no-op over 100,000 steps makes none.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from flowmake.backend import Backend, JobHandle
from flowmake.capacity import NOTHING, Need
from flowmake.graph import Step
from flowmake.planner import StepPlan


class StepState(enum.Enum):
    WAITING = "waiting"  # some upstream step is not done yet
    READY = "ready"  # queued for a slot (or for a lock another invocation holds)
    RUNNING = "running"
    DONE = "done"  # its job ran and succeeded in this invocation
    FAILED = "failed"  # its job failed with no retry left
    SKIPPED = "skipped"  # no job needed: up to date, cut off, or built meanwhile by another run


SETTLED = (StepState.DONE, StepState.SKIPPED)


@dataclass(slots=True, eq=False)
class StepRecord:
    """One step in a run: its state, its current plan, and what the scheduler counts for it."""

    step: Step
    plan: StepPlan
    state: StepState = StepState.WAITING
    waiting_on: int = 0  # upstream steps not yet done
    dependants: list[StepRecord] = field(default_factory=list)
    depth: int = 1  # the longest chain of dependants below, itself included: runs first on ties
    attempts: int = 0  # failed attempts so far
    mem_scale: float = 1.0  # grows after an out-of-memory kill
    counted: bool = False  # in the progress total
    lock_waited: bool = False  # waited for another invocation's lock at least once
    # While running:
    handle: JobHandle | None = None
    backend: Backend | None = None
    start: float = 0.0
    held: Need = NOTHING  # of the cores and --resources limits


class UpToDate:
    """The record every step up to date at admission shares: a no-op over 100,000 steps makes none
    of its own. Nothing changes it (such a step is nobody's waiting dependency)."""

    __slots__ = ()
    state = StepState.SKIPPED


UP_TO_DATE = UpToDate()
