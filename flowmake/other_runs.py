"""What the scheduler does about other flowmake invocations on the same working directory.

Before a step starts it takes the locks of all its outputs (``locks.py``). A step another run holds
waits; once its lock is ours, the other run may have built it meanwhile (its traces then say so, and
the step is skipped), or died with it half written (``peers.take_over`` stops what is left of its
job, and the step is rebuilt from a clean output). ``Scheduler`` inherits these.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable

from flowmake.graph import Step
from flowmake.planner import Decision, replan, reread
from flowmake.step_state import StepRecord, StepState

if TYPE_CHECKING:
    from flowmake.jobs import JobContext
    from flowmake.locks import OutputLocks
    from flowmake.peers import Peers
    from flowmake.planner import Plan
    from flowmake.progress import Progress
    from flowmake.store import Store


class OtherRuns:
    plan: Plan
    locks: OutputLocks
    peers: Peers
    progress: Progress
    store: Store
    ctx: JobContext
    result: Any
    digest: Callable[[str], str | None]
    _locked: list[StepRecord]
    _t0_ns: int

    # Methods of the scheduler and GroupRuns: annotations only, so they never shadow the real ones.
    _members: Callable[[StepRecord], list[StepRecord]]
    _lock_all: Callable[[list[StepRecord]], bool]
    _take_over_and_start: Callable[[list[StepRecord]], None]
    _start: Callable[[StepRecord], None]
    _complete: Callable[[StepRecord, StepState], None]

    def _try_lock_and_start(self, rec: StepRecord) -> None:
        recs = self._members(rec)
        if not self._lock_all(recs):
            self._locked.append(rec)
            return
        if len(recs) > 1:  # a pipe group: what another run made of it is not reused, it is rebuilt whole
            return self._take_over_and_start(recs)
        step = rec.step
        in_flight = any(map(self.plan.facts.in_flight, step.outputs))  # then its run may be gone unseen
        if self.peers.take_over(step.outputs, in_flight, self.progress.note):
            self._start(rec)  # a dead run left it half written: rebuilt from a clean output
            return
        if self._was_built_meanwhile(rec):
            self.locks.release(step.id)
            self.result.built_elsewhere.append(step.id)
            self.progress.skipped(step, "built meanwhile by another flowmake, skipped")
            self._complete(rec, StepState.SKIPPED)
            return
        self._start(rec)

    def _touched_by_another_run(self, step: Step) -> bool:
        # Nothing of ours writes a step's outputs before we start it, so an output changed since this
        # run began was written by another invocation (which then released the lock we now hold).
        for out in step.outputs:
            try:
                st = os.lstat(os.path.join(self.ctx.workdir, out))
            except OSError:
                continue
            if st.st_ctime_ns >= self._t0_ns:
                return True
        return False

    def _was_built_meanwhile(self, rec: StepRecord) -> bool:
        """Another invocation may have built this step while we waited for, or before we took, its lock."""
        step = rec.step
        # Another run held its lock, or had its outputs in flight when we loaded the store.
        contended = rec.lock_waited or any(map(self.plan.facts.in_flight, step.outputs))
        if not contended and not self._touched_by_another_run(step):
            return False
        traces = self.peers.finished_traces(step.outputs)
        if traces is None:
            return False
        for out in step.outputs:
            self.digest(out)  # refresh the memoised stat: the file was rewritten by the other run
        self.store.put_traces(traces)
        _, sp = replan(step, reread(self.plan.facts))  # we hold its locks
        if sp.decision is Decision.SKIP:
            rec.plan = sp
            return True
        return False
