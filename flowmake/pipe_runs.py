"""How the scheduler runs a pipe group (``pipes``): one record per step as ever, one job for all.

The steps of a group wait for no one of the group, only for their other upstream; once that is
done for every one of them, the group is decided as one (``_settle_group``), queued once under its
first step, started when what all of its steps need fits (``_need``), under the locks of all of
its outputs, and it succeeds or fails as one. ``Scheduler`` inherits these; a step outside any
group is a group of one, so the scheduler's other code does not branch on groups.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from flowmake.backend import Backend, JobSpec
from flowmake.capacity import Need, total
from flowmake.errors import FlowmakeError
from flowmake.graph import Step
from flowmake.jobs import JobContext, group_spec, job_command, job_spec
from flowmake.pipes import PipeGroup, real_outputs, streams_rule
from flowmake.planner import Cutoff, Decision, Reason, ReasonKind, replan
from flowmake.step_state import StepRecord, StepState

if TYPE_CHECKING:
    from flowmake.capacity import Capacity
    from flowmake.locks import OutputLocks
    from flowmake.peers import Peers
    from flowmake.planner import Plan
    from flowmake.progress import Progress
    from flowmake.step_state import UpToDate


class GroupRuns:
    _groups: dict[int, PipeGroup]
    _group_ready: dict[int, set[int]]
    _records: dict[int, StepRecord | UpToDate]
    plan: Plan
    capacity: Capacity
    locks: OutputLocks
    peers: Peers
    progress: Progress
    result: Any
    local: Backend
    backend: Backend
    ctx: JobContext

    def _complete(self, rec: StepRecord, state: StepState) -> None: ...  # the scheduler's
    def _count(self, rec: StepRecord) -> None: ...
    def _push(self, rec: StepRecord) -> None: ...
    def _start(self, rec: StepRecord) -> None: ...

    def _members(self, rec: StepRecord) -> list[StepRecord]:
        """The records whose steps run in this record's job: its pipe group's, or itself alone."""
        group = self._groups.get(id(rec.step))
        if group is None:
            return [rec]
        return [r for r in (self._records.get(id(m)) for m in group.members) if isinstance(r, StepRecord)]

    def _settle_group(self, rec: StepRecord) -> None:
        """A pipe group is decided once the upstream of all its steps is done: all run, or none."""
        recs = self._members(rec)
        ready = self._group_ready.setdefault(id(recs[0]), set())
        ready.add(id(rec))
        if len(ready) < len(recs):
            return
        del self._group_ready[id(recs[0])]
        cause: Step | None = None  # the first step that must run: then all do
        for r in recs:
            if r.plan.decision is Decision.PENDING:
                cutoff, r.plan = replan(r.step, self.plan.facts)
                if cutoff is Cutoff.CHANGED:
                    cause = cause or r.step
            else:
                cause = cause or r.step
        run = cause is not None
        for r in recs:
            if not run:
                if real_outputs(r.step):
                    self.result.skipped_by_cutoff.append(r.step.id)
                    self.progress.cutoff(r.step)
                self._complete(r, StepState.SKIPPED)
            elif r.plan.decision is not Decision.RUN:
                r.plan = replace(r.plan, decision=Decision.RUN, reasons=[Reason(ReasonKind.PIPE_GROUP, step=cause.id)])  # type: ignore[union-attr]  # run: a cause
        if run:
            for r in recs[1:]:
                self._count(r)
                r.state = StepState.READY
            self._push(recs[0])  # the group's job is queued once, under its first step

    def _need(self, rec: StepRecord) -> Need:
        """What the job holds: a pipe group's steps run at once, so it holds what all of them need."""
        return total([self.capacity.need_of(r.step.instance) for r in self._members(rec)])

    def _backend_for(self, step: Step) -> Backend:
        group = self._groups.get(id(step))
        members = group.members if group is not None else (step,)
        return self.local if any(m.rule.localrule for m in members) else self.backend

    def _requeue(self, recs: list[StepRecord]) -> None:
        """Queue a job again (lost, or to be retried): the group's other steps wait with its first."""
        for r in recs[1:]:
            r.state = StepState.READY
        self._push(recs[0])

    def _check_whole_groups(self, steps: list[Step]) -> None:
        """A pipe group runs whole or not at all: ``--until``/``--omit-from`` cannot take part of one
        that has to run (its other end would never come)."""
        taken = {id(s) for s in steps}
        decided = self.plan.by_id
        for group in {id(g): g for g in self._groups.values()}.values():
            inside = [m for m in group.members if id(m) in taken]
            if inside and len(inside) < len(group.members) and any(
                    decided[id(m)].decision in (Decision.RUN, Decision.PENDING) for m in inside if id(m) in decided):
                left = [m for m in group.members if id(m) not in taken]
                raise FlowmakeError(
                    f"the steps of a pipe group run together, but {', '.join(m.id for m in left)} would be left "
                    f"out of this run while {', '.join(m.id for m in inside)} runs",
                    location=inside[0].rule.location, rule=inside[0].rule.name,
                    hint="move --until/--omit-from so that the whole group is in or out")

    def _lock_all(self, recs: list[StepRecord]) -> bool:
        """Take the output locks of every step, or of none (another invocation holds one)."""
        for i, r in enumerate(recs):
            if not self.locks.try_acquire(r.step.id, r.step.outputs):
                for held in recs[:i]:
                    self.locks.release(held.step.id)
                if not recs[0].lock_waited:
                    recs[0].lock_waited = True
                    self.progress.note(f"{r.step.id}: waiting for {self.locks.holder(r.step.outputs[0])}, "
                                       "which is building it")
                return False
        return True

    def _take_over_and_start(self, recs: list[StepRecord]) -> None:
        for r in recs:
            self.peers.take_over(r.step.outputs, any(map(self.plan.facts.in_flight, r.step.outputs)),
                                 self.progress.note)
        self._start(recs[0])

    def _spec(self, rec: StepRecord, recs: list[StepRecord], *, local: bool) -> JobSpec:
        step, attempt = rec.step, rec.attempts + 1
        if len(recs) == 1:
            return job_spec(step, self.ctx, attempt=attempt, inputs=rec.plan.inputs, image=step.rule.container,
                            local=local, mem_scale=rec.mem_scale)
        return group_spec(self._groups[id(step)], self.ctx, attempt=attempt, image=step.rule.container,
                          inputs=[i for r in recs for i in r.plan.inputs], local=local, mem_scale=rec.mem_scale)

    def _shown(self, rec: StepRecord, recs: list[StepRecord], spec: JobSpec) -> str:
        """What ``-p`` prints for a step: for a step of a pipe group, its own command (not the group's)."""
        return spec.command if len(recs) == 1 else job_command(rec.step, self.ctx, spec.attempt)


def refuse_streams(step: Step) -> None:
    """Steps a checkpoint adds are planned one by one, too late to group: no pipes among them."""
    if step.instance is not None and streams_rule(step.rule):
        raise FlowmakeError("pipe() and service() outputs are not supported in steps a checkpoint adds",
                            location=step.rule.location, rule=step.rule.name)
