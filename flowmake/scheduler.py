"""Plan → jobs on a backend, in dependency order, within the resources, until the plan converges.

The scheduler owns order, concurrency and resources; the planner decides; backends execute. Every
step taken into a run has one record (``StepRecord``) with an explicit state (ninja's
``Plan::want_``). When a step finishes the scheduler records its traces, then asks the planner again
about each dependant whose upstream is now all done: ``planner.replan`` answers ``Cutoff.SAME`` when
the new digests give the key the dependant's traces hold (early cutoff, Shake's
``ChangedRecomputeSame``), and the dependant is skipped. When a checkpoint finishes, steps that
waited for it are instantiated again and their new upstream joins the running plan. The steps of a
pipe group start, end and hold resources together, as one job (``pipe_runs``).
"""

from __future__ import annotations

import heapq
import os
import signal
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

from flowmake.backend import Backend, JobEvent, JobState
from flowmake.cache_runs import CacheRuns
from flowmake.capacity import NOTHING, Capacity
from flowmake.directives import has_pending
from flowmake.graph import Graph, Step
from flowmake.jobs import JobContext
from flowmake.locks import OutputLocks
from flowmake.outputs import (finish_outputs, inputs_changed_warning, prepare_outputs, read_products, record_job_traces,
                              record_traces, remove_outputs, remove_path, write_benchmark)
from flowmake.namedlist import Flag
from flowmake.peers import Peers
from flowmake.other_runs import OtherRuns
from flowmake.pipe_runs import GroupRuns, refuse_streams
from flowmake.planner import (Cutoff, Decision, Plan, Reason, ReasonKind, StepPlan, plan_step, replan, reread,
                              with_current_key)
from flowmake.progress import Progress
from flowmake.step_state import SETTLED, UP_TO_DATE, StepRecord, StepState, UpToDate
from flowmake.store import HistoryRecord, Store


@dataclass
class SchedulerOptions:
    cores: int = 1
    jobs: int | None = None  # concurrent jobs on a non-local backend
    limits: Mapping[str, int] = field(default_factory=dict)  # --resources mem_mb=N ...
    keep_going: bool = False
    retries: int = 0
    notemp: bool = False
    # False when no target was named: the default rule's own temp() outputs may go, as in
    # Snakemake (a named file or rule keeps them).
    keep_target_temps: bool = True
    printshellcmds: bool = False
    benchmark_extended: bool = False  # --benchmark-extended: Snakemake's further columns
    kept_temps: frozenset[str] = frozenset()  # temp() files steps left out of this run will read
    lock_wait_s: float = 0.2


@dataclass
class RunResult:
    ran: list[str] = field(default_factory=list)
    skipped_by_cutoff: list[str] = field(default_factory=list)
    built_elsewhere: list[str] = field(default_factory=list)  # by a concurrent flowmake on this workdir
    failed: list[tuple[str, str]] = field(default_factory=list)  # (step id, why)
    inputs_changed: list[tuple[str, list[str]]] = field(default_factory=list)  # (step id, paths)
    interrupted: bool = False


class Scheduler(CacheRuns, OtherRuns, GroupRuns):
    def __init__(self, graph: Graph, plan: Plan, *, store: Store, digest: Callable[[str], str | None],
                 backend: Backend, local: Backend, ctx: JobContext, options: SchedulerOptions,
                 progress: Progress, storage: Any = None) -> None:
        self.graph = graph
        self.plan = plan  # as planned; never changed here: each record holds its step's current plan
        self.store = store
        self.digest = digest
        self.backend = backend
        self.local = local
        self.ctx = ctx
        self.opt = options
        self.progress = progress
        self.storage = storage  # storage.Storage: remote inputs fetched before a job, outputs uploaded after
        self.locks = OutputLocks(os.path.join(ctx.workdir, ".flowmake"))
        self.result = RunResult()
        self._records: dict[int, StepRecord | UpToDate] = {}  # id(step) -> its record
        self._ready: list[tuple[float, int, int, StepRecord]] = []  # (-priority, -depth, seq, record)
        self._seq = 0
        self._running: dict[int, StepRecord] = {}  # id(handle) -> record
        self._locked: list[StepRecord] = []  # ready, but another invocation holds an output's lock
        self._temp_consumers: dict[str, int] = {}
        self.capacity = Capacity(options.cores, options.limits)
        self._stop = False
        self._interrupt = False
        self._t0_ns = time.time_ns()
        self._target_ids = {id(t) for t in graph.targets if isinstance(t, Step) and options.keep_target_temps}
        # The inputs of a target without outputs (rule all) are asked for too (as in Snakemake).
        self._bare_targets = [t for t in graph.targets if isinstance(t, Step) and not t.outputs]
        self.peers = Peers(store, ctx.workdir)  # what concurrent runs recorded, and dead runs' jobs
        self._unlock: list[str] = []  # step ids whose locks go after the next store flush
        self._groups = plan.groups  # pipe groups (pipes.py): their steps run as one job
        self._group_ready: dict[int, set[int]] = {}  # a group's lead record -> members whose upstream is done

    # ---- what the run leaves -----------------------------------------------------------------

    def current(self, step: Step) -> StepPlan | None:
        """The plan that keyed a step's outputs if they are current after this run, else None."""
        rec = self._records.get(id(step))
        if isinstance(rec, StepRecord):
            return rec.plan if rec.state in SETTLED else None
        sp = self.plan.by_id.get(id(step))
        if sp is not None and (sp.decision is Decision.SKIP or sp.decision is Decision.ADOPT):
            return sp
        return None

    # ---- set-up ------------------------------------------------------------------------------

    def _admit(self, steps: list[Step]) -> None:
        """Take steps (dependencies first) into the run; decide those whose upstream is settled."""
        by_id = self.plan.by_id
        records = self._records
        live: list[StepRecord] = []
        for step in steps:
            sp = by_id.get(id(step))
            if sp is None:  # new with a checkpoint's outputs: decide it against this run's state
                refuse_streams(step)
                sp = plan_step(step, self._unsettled, self.plan.facts)
            if sp.decision is Decision.ADOPT and not self.peers.may_adopt(self.locks, step.id, step.outputs, self.progress.note):
                sp = replace(sp, decision=Decision.RUN, reasons=[Reason(ReasonKind.NO_TRACE)])  # through the lock
            if sp.decision is Decision.SKIP or sp.decision is Decision.ADOPT:
                if sp.decision is Decision.ADOPT:
                    self._record_traces(step, sp)
                    self._unlock.append(step.id)  # once the traces are flushed
                if not isinstance(records.get(id(step)), StepRecord):
                    records[id(step)] = UP_TO_DATE
                continue
            rec = StepRecord(step, sp)
            before = records.get(id(step))
            if isinstance(before, StepRecord):  # expanded after its checkpoint: who waits for it still does
                rec.dependants, rec.counted = before.dependants, before.counted
            records[id(step)] = rec
            live.append(rec)
        for rec in live:
            for dep in self._upstream(rec.step):
                up = records.get(id(dep))
                # Only an upstream still to finish will tell its dependants; a finished one may be
                # telling them right now (a checkpoint whose completion admitted these steps).
                if isinstance(up, StepRecord) and up.state not in SETTLED:
                    up.dependants.append(rec)
        for rec in reversed(live):  # critical path: dependants were admitted after their upstream
            rec.depth = 1 + max((d.depth for d in rec.dependants), default=0)
        for rec in live:
            step = rec.step
            if step.outputs or rec.plan.decision is Decision.RUN:  # a pure target rule is no work to count
                self._count(rec)
            inst = step.instance
            if inst is not None:
                self.capacity.check(inst)
                for path in inst.input:
                    if self._is_temp(path):
                        self._temp_consumers[path] = self._temp_consumers.get(path, 0) + 1
            rec.waiting_on = sum(1 for d in self._upstream(step) if self._unsettled(d))
            if rec.waiting_on == 0:
                self._settle(rec)

    def _drop_unread_temps(self, step: Step) -> None:
        """A temp() output no step of this run reads goes once recorded, as in Snakemake (not
        while a checkpoint may still bring in a step that reads it)."""
        if self.opt.notemp or not step.rule.may_flag:
            return
        unread = [o for o in step.outputs if o not in self._temp_consumers and self._is_temp(o)
                  and o not in self.opt.kept_temps]
        if unread and not any(s.pending for s in self.graph.steps.values()):
            for out in unread:
                remove_path(os.path.join(self.ctx.workdir, out))

    def _upstream(self, step: Step) -> list[Step]:
        """The steps this one waits for, each once (two outputs of one checkpoint are one wait)."""
        edges = self.graph.deps(step)
        group = self._groups.get(id(step))
        if group is not None:  # a pipe group's steps start together: none waits for another
            edges = [d for d in edges if self._groups.get(id(d)) is not group]
        return list({id(d): d for d in edges}.values()) if step.pending else edges

    def _unsettled(self, dep: Step) -> bool:
        """A dependency this run has not finished (``plan_step``'s view of this run). One it has not
        taken in yet is unfinished too: admission is dependencies first, so it is still to come."""
        rec = self._records.get(id(dep))
        return rec is None or rec.state not in SETTLED

    def _count(self, rec: StepRecord) -> None:
        if not rec.counted:
            rec.counted = True
            self.progress.total += 1

    def _is_temp(self, path: str) -> bool:
        """A ``temp()`` output to delete once its consumers are done; never one the user asked for."""
        prod = self.graph.producer.get(path)
        if (not isinstance(prod, Step) or not prod.rule.may_flag or prod.pending
                or Flag.TEMP not in prod.instance.flags.get(path, ())):  # type: ignore[union-attr]  # not pending: instantiated
            return False
        # Asked when the temp file's consumers are counted: a target waiting on a checkpoint
        # knows its inputs by then.
        return id(prod) not in self._target_ids and not any(path in t.inputs for t in self._bare_targets)

    # ---- deciding ----------------------------------------------------------------------------

    def _settle(self, rec: StepRecord) -> None:
        """All of a step's upstream is done: decide it now with real digests."""
        step = rec.step
        if step.pending:
            self._expand(rec)
            return
        if id(step) in self._groups:
            self._settle_group(rec)
            return
        if rec.plan.decision is Decision.PENDING:
            cutoff, rec.plan = replan(step, self.plan.facts)
            if cutoff is Cutoff.SAME:
                if step.outputs:  # a target rule without outputs has nothing to cut off
                    self.result.skipped_by_cutoff.append(step.id)
                    self.progress.cutoff(step)
                self._complete(rec, StepState.SKIPPED)
                return
        self._push(rec)

    def _push(self, rec: StepRecord) -> None:
        self._count(rec)
        rec.state = StepState.READY
        self._seq += 1
        heapq.heappush(self._ready, (-rec.step.rule.priority_of(rec.step.instance), -rec.depth, self._seq, rec))

    def _expand(self, rec: StepRecord) -> None:
        """A checkpoint this step waited on is done: instantiate it and admit its new upstream."""
        self._admit(self.graph.expand_pending(rec.step))  # dependencies first, the step itself last

    # ---- running ------------------------------------------------------------------------------

    def run(self, steps: list[Step]) -> RunResult:
        self._check_whole_groups(steps)
        old_int, old_term = signal.signal(signal.SIGINT, self._on_signal), signal.signal(signal.SIGTERM, self._on_signal)
        try:
            self._admit(steps)
            while (self._ready or self._running or self._locked) and not self._interrupt:
                self._submit_ready()
                self._poll()
            if self._interrupt:
                self._cancel_all()
            self.finish_publishing()
        finally:
            signal.signal(signal.SIGINT, old_int)
            signal.signal(signal.SIGTERM, old_term)
            self.store.flush()  # before the locks go: a waiting invocation reads our traces
            self.locks.release_all()
        self.result.interrupted = self._interrupt
        return self.result

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._interrupt = True

    def _fits(self, rec: StepRecord, backend: Backend) -> bool:
        local = backend is self.local or getattr(backend, "name", "") == "local"
        for r in self._members(rec):  # input.size_mb & co.: its inputs exist now
            if has_pending(r.step.instance):
                self._reinstantiate(r.step, rec.attempts + 1)
        if not self.capacity.fits(self._need(rec), local=local):
            return False
        running_here = sum(1 for r in self._running.values() if r.backend is backend)
        cap = self.opt.jobs if (self.opt.jobs and backend is not self.local) else backend.capacity()
        return running_here < cap

    def _submit_ready(self) -> None:
        if self._locked:
            # Back into the queue: a step that waited for a lock must still fit the free cores.
            retry, self._locked = self._locked, []
            for rec in retry if not self._stop else ():
                self._push(rec)
        deferred = []
        while self._ready and not self._stop and not self._interrupt:  # Ctrl-C: submit nothing more
            entry = heapq.heappop(self._ready)
            rec = entry[3]
            if not self._fits(rec, self._backend_for(rec.step)):
                deferred.append(entry)
                if not self._running:  # nothing will free resources: run it alone, capped
                    deferred.pop()
                    self._try_lock_and_start(rec)
                break
            self._try_lock_and_start(rec)
        for entry in deferred:
            heapq.heappush(self._ready, entry)

    def _start(self, rec: StepRecord) -> None:
        if self.cache is not None and self._from_cache(rec):  # cache_runs: restored instead of run
            return
        step, recs = rec.step, self._members(rec)
        # In this thread, before the job (and before its key, which digests what is fetched): the job
        # sees whole inputs, and a failed fetch is the step's failure.
        why = None
        for r in recs if self.storage is not None else ():
            why = why or self.storage.fetch(r.step)
        if why is not None:
            self.progress.started(step, rec.plan, None)
            self._failure(rec, JobEvent(None, JobState.FAILED, message=why), f"cannot fetch its inputs ({why})")  # type: ignore[arg-type]  # no job, no handle
            return
        for r in recs:
            r.plan = with_current_key(r.plan, self.plan.facts) or r.plan
        backend = self._backend_for(step)
        spec = self._spec(rec, recs, local=backend is self.local)  # one step's job, or its pipe group's
        for r in recs:
            prepare_outputs(r.step, self.ctx.workdir)
            self.store.begin(r.step.id, list(r.step.outputs), None)
            self.progress.started(r.step, r.plan, self._shown(r, recs, spec) if self.opt.printshellcmds else None)
        handle = backend.submit(spec)
        pgid = getattr(backend, "pgid", None)
        for r in recs:
            if pgid is not None:
                self.store.begin(r.step.id, list(r.step.outputs), pgid(handle))
            r.state, r.handle, r.backend, r.start = StepState.RUNNING, handle, backend, time.time()
        rec.held = self._need(rec)
        self.capacity.take(rec.held)
        self._running[id(handle)] = rec

    def _poll(self) -> None:
        timeout = self.opt.lock_wait_s if self._locked else 0.5
        backends = {id(r.backend): r.backend for r in self._running.values() if r.backend is not None}
        if not backends:
            if self._locked:
                time.sleep(timeout)
            return
        events: list[JobEvent] = []
        for backend in backends.values():
            events.extend(backend.poll(timeout if len(backends) == 1 else 0.05))
        for ev in events:
            if ev.finished:
                self._finished(ev)
        if self._unlock:
            # Another invocation waiting on these locks reads our traces once it holds them: they
            # must be in the store before the locks go.
            self.store.flush(sync=False)
            for step_id in self._unlock:
                self.locks.release(step_id)
            self._unlock.clear()

    def _finished(self, ev: JobEvent) -> None:
        rec = self._running.pop(id(ev.handle), None)
        if rec is None:
            return
        self.capacity.give(rec.held)
        rec.held = NOTHING
        recs = self._members(rec)  # a pipe group's steps succeed or fail together
        if ev.state is JobState.SUCCEEDED:
            missing = [o for r in recs for o in finish_outputs(r.step, self.ctx.workdir)]
            if missing:
                self._failure(rec, ev, "declared outputs missing after the job: " + ", ".join(missing))
                return
            # Uploaded only once the outputs check out, before the traces vouch for them.
            for r in recs if self.storage is not None else ():
                why = self.storage.upload(r.step)
                if why is not None:
                    self._failure(rec, ev, f"cannot upload its outputs ({why})")
                    return
            for r in recs:
                self._succeeded(r, ev)
                self._drop_unread_temps(r.step)
            for r in recs:
                self._complete(r, StepState.DONE)
            return
        if ev.state is JobState.CANCELLED:
            for r in recs:
                remove_outputs(r.step, self.ctx.workdir)
                self.store.end(r.step.id)
                self._unlock.append(r.step.id)
                r.state = StepState.FAILED
            return
        why = {
            JobState.FAILED: f"exit code {ev.exit_code}",
            JobState.OOM: "killed for running out of memory",
            JobState.TIMEOUT: "exceeded its time limit",
            JobState.LOST: "lost with its host",
        }.get(ev.state, ev.state.value)
        self._failure(rec, ev, why + (f" ({ev.message})" if ev.message else ""))

    def _succeeded(self, rec: StepRecord, ev: JobEvent) -> None:
        step = rec.step
        write_benchmark(step, self.ctx.workdir, ev.runtime_s, ev.peak_rss_kb,
                        extended=self.opt.benchmark_extended, jobid=len(self.result.ran))
        for path in read_products(step, self.graph.producer):
            self.digest(path)  # its dependants are keyed from what the job just wrote
        changed = record_job_traces(self.store, step, rec.plan, self.digest, self.plan.facts)
        self._publish(rec, changed)  # cache_runs: not when an input changed under it
        if changed:  # what the job read may be neither version: not recorded as good
            self.result.inputs_changed.append((step.id, changed))
            self.progress.note(inputs_changed_warning(step.id, changed))
        self._history(rec, ev)
        self.store.end(step.id)
        self._unlock.append(step.id)
        self.result.ran.append(step.id)
        self.progress.finished(step, ok=True)

    def _failure(self, rec: StepRecord, ev: JobEvent, why: str) -> None:
        step, recs = rec.step, self._members(rec)
        for r in recs:  # nothing of a failed pipe group is kept
            remove_outputs(r.step, self.ctx.workdir)
            self._history(r, ev)
            self.store.end(r.step.id)
            self._unlock.append(r.step.id)
        if ev.state is JobState.LOST:  # not the job's fault: rerun without spending a retry
            self.progress.note(f"{step.id}: {why}; resubmitting")
            self.progress.requeued()
            self._requeue(recs)
            return
        rec.attempts += 1
        own = [r.step.rule.retries for r in recs if r.step.rule.retries is not None]
        allowed = max(own) if own else self.opt.retries  # a rule's own retries: wins, as in Snakemake
        if rec.attempts <= allowed and not self._interrupt:
            if ev.state is JobState.OOM:
                rec.mem_scale *= 1.5
            self.progress.note(f"{step.id}: {why}; retry {rec.attempts} of {allowed}")
            self.progress.requeued()
            for r in recs:
                self._reinstantiate(r.step, rec.attempts + 1)
            self._requeue(recs)
            return
        log = rec.handle.spec.log if rec.handle is not None else None
        for r in recs:
            r.state = StepState.FAILED
            said = why if len(recs) == 1 else f"{why}, in the pipe group of {', '.join(m.step.id for m in recs)}"
            self.result.failed.append((r.step.id, said))
            self.progress.finished(r.step, ok=False, why=said, log=os.path.join(self.ctx.workdir, log) if log else "")
        if not self.opt.keep_going:
            self._stop = True
            self._ready.clear()

    def _reinstantiate(self, step: Step, attempt: int) -> None:
        """Resources and threads may depend on the attempt (``lambda wildcards, attempt: ...``)."""
        try:
            step.instance = step.rule.instantiate(step.bindings, self.graph.checkpoint_view, attempt=attempt)
        except Exception:  # the first attempt's instance stays valid; its resources are a fine retry
            if has_pending(step.instance):  # unless a function failed again, its inputs there
                raise

    def _complete(self, rec: StepRecord, state: StepState) -> None:
        rec.state = state
        step = rec.step
        if step.rule.is_checkpoint:
            self.graph.checkpoint_finished(step)
        inst = step.instance
        if inst is not None and not self.opt.notemp:
            for path in inst.input:
                if path in self._temp_consumers:
                    self._temp_consumers[path] -= 1
                    if self._temp_consumers[path] == 0:
                        remove_path(os.path.join(self.ctx.workdir, path))
                        why = self.storage.remove(path) if self.storage is not None else None
                        if why is not None:  # a temp() object left in storage costs space, not correctness
                            self.progress.note(f"warning: {why}")
        if self._stop:
            return
        for dep in rec.dependants:
            if dep.state is not StepState.WAITING or self._records.get(id(dep.step)) is not dep:
                continue  # already decided, or replaced when its checkpoint expanded it
            dep.waiting_on -= 1
            if dep.waiting_on == 0:
                self._settle(dep)

    # ---- records ------------------------------------------------------------------------------

    def _record_traces(self, step: Step, sp: StepPlan) -> None:
        # An adopted step's outputs as the plan saw them: a deleted temp() output that stands in is
        # recorded with the digest it stood in with (planner.ABSENT_TEMP).
        record_traces(self.store, step, sp, self.plan.facts.digest, self.plan.facts)

    def _history(self, rec: StepRecord, ev: JobEvent) -> None:
        step, inst, handle = rec.step, rec.step.instance, rec.handle
        self.store.add_history(HistoryRecord(
            step_id=step.id, rule=step.rule.name, outputs=tuple(step.outputs), start=rec.start,
            end=time.time(), runtime_s=ev.runtime_s or 0.0, exit_code=ev.exit_code, peak_rss_kb=ev.peak_rss_kb,
            backend=getattr(rec.backend, "name", "?"), host=ev.host,
            command=handle.spec.command if handle is not None else "",
            params=repr(list(inst.params)) if inst is not None else "",
        ))

    def _cancel_all(self) -> None:
        for rec in list(self._running.values()):
            if rec.backend is not None and rec.handle is not None:
                rec.backend.cancel(rec.handle)
        deadline = time.monotonic() + 5
        while self._running and time.monotonic() < deadline:
            for backend in {id(r.backend): r.backend for r in self._running.values() if r.backend}.values():
                for ev in backend.poll(0.1):
                    done = self._running.pop(id(ev.handle), None)
                    for r in self._members(done) if done is not None else ():
                        remove_outputs(r.step, self.ctx.workdir)
                        self.store.end(r.step.id)
                        r.state = StepState.FAILED
        for rec in self._running.values():
            # Not reaped: its marker stays, so the next run stops its process group and reruns it.
            for r in self._members(rec):
                remove_outputs(r.step, self.ctx.workdir)
        self._running.clear()
