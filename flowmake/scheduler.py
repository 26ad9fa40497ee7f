"""Plan → jobs on a backend, in dependency order, within the resources, until the plan converges.

The scheduler owns order, concurrency and resources; the planner decides; backends execute. When a
step finishes the scheduler records its traces, then asks the planner again about each dependant
whose inputs are now all known: a dependant that was pending on this step skips if the new digests
give the same step key (early cutoff, Shake's ``ChangedRecomputeSame``). When a checkpoint finishes,
steps that waited for it are instantiated again and their new upstream joins the running plan.
"""

from __future__ import annotations

import heapq
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from flowmake.backend import Backend, JobEvent, JobHandle, JobState
from flowmake.graph import Graph, Step
from flowmake.jobs import (JobContext, finish_outputs, inputs_changed_warning, job_spec, prepare_outputs, record_job_traces,
                           record_traces, remove_outputs, remove_path, write_benchmark)
from flowmake.locks import OutputLocks
from flowmake.peers import Peers
from flowmake.planner import (Decision, Plan, Reason, ReasonKind, StepPlan, plan_step, refresh_key,
                              reread)
from flowmake.report import Progress
from flowmake.store import HistoryRecord, Store


@dataclass
class SchedulerOptions:
    cores: int = 1
    jobs: int | None = None  # concurrent jobs on a non-local backend
    limits: Mapping[str, int] = field(default_factory=dict)  # --resources mem_mb=N ...
    keep_going: bool = False
    retries: int = 0
    notemp: bool = False
    printshellcmds: bool = False
    lock_wait_s: float = 0.2


@dataclass
class RunResult:
    ran: list[str] = field(default_factory=list)
    skipped_by_cutoff: list[str] = field(default_factory=list)
    built_elsewhere: list[str] = field(default_factory=list)  # by a concurrent flowmake on this workdir
    failed: list[tuple[str, str]] = field(default_factory=list)  # (step id, why)
    inputs_changed: list[tuple[str, list[str]]] = field(default_factory=list)  # (step id, paths)
    interrupted: bool = False


@dataclass
class _Running:
    step: Step
    plan: StepPlan
    handle: JobHandle
    backend: Backend
    start: float
    threads: int
    mem: int
    extra: dict[str, int]


class Scheduler:
    def __init__(self, graph: Graph, plan: Plan, *, store: Store, digest: Callable[[str], str | None],
                 backend: Backend, local: Backend, ctx: JobContext, options: SchedulerOptions,
                 progress: Progress) -> None:
        self.graph = graph
        self.plan = plan
        self.store = store
        self.digest = digest
        self.backend = backend
        self.local = local
        self.ctx = ctx
        self.opt = options
        self.progress = progress
        self.locks = OutputLocks(os.path.join(ctx.workdir, ".flowmake"))
        self.result = RunResult()
        self._ready: list[tuple[int, int, int, int]] = []  # (-priority, -depth, seq, id)
        self._seq = 0
        self._by_id: dict[int, Step] = {}
        self._waiting_deps: dict[int, int] = {}
        self._dependants: dict[int, dict[int, Step]] = {}  # a dict: insertion-ordered and no repeats
        self._counted: set[int] = set()
        self._lock_waited: set[str] = set()
        self._depth: dict[int, int] = {}
        self._running: dict[int, _Running] = {}
        self._locked: list[Step] = []
        self._attempts: dict[int, int] = {}
        self._mem_scale: dict[int, float] = {}
        self._done: set[int] = set()
        self._failed: set[int] = set()
        self._temp_consumers: dict[str, int] = {}
        self._used = {"cores": 0, "mem_mb": 0}
        self._used_extra: dict[str, int] = {}
        self._stop = False
        self._interrupt = False
        self._t0_ns = time.time_ns()
        self._target_ids = {id(t) for t in graph.targets if isinstance(t, Step)}
        self.peers = Peers(store, ctx.workdir)  # what concurrent runs recorded, and dead runs' jobs
        self._unlock: list[str] = []  # step ids whose locks go after the next store flush

    # ---- set-up ------------------------------------------------------------------------------

    def _admit(self, steps: list[Step]) -> None:
        """Take steps (dependencies first) into the run; decide those whose upstream is settled.

        Steps already up to date are only marked done: a no-op over 100,000 steps builds nothing
        else. (A step with a dependency still to run is never up to date, so done steps are
        nobody's dependants.)
        """
        by_id = self.plan.by_id
        live: list[Step] = []
        for step in steps:
            sp = by_id.get(id(step))
            if sp is None:
                sp = by_id[id(step)] = plan_step(step, by_id, self.plan.facts)
            if sp.decision is Decision.ADOPT and not self.peers.may_adopt(self.locks, step.id, step.outputs,
                                                                           self.progress.note):
                sp.decision, sp.reasons = Decision.RUN, [Reason(ReasonKind.NO_TRACE)]  # through the lock
            if sp.decision is Decision.SKIP or sp.decision is Decision.ADOPT:
                if sp.decision is Decision.ADOPT:
                    self._record_traces(step, sp)
                    self._unlock.append(step.id)  # once the traces are flushed
                self._done.add(id(step))
            else:
                live.append(step)
        for step in live:
            self._by_id[id(step)] = step
            self._dependants.setdefault(id(step), {})
            for dep in self.graph._edges(step):
                self._dependants.setdefault(id(dep), {})[id(step)] = step
        self._compute_depths(live)
        for step in live:
            sp = by_id[id(step)]
            if step.outputs or sp.decision is Decision.RUN:  # a pure target rule is no work to count
                self._count(step)
            inst = step.instance
            if inst is not None:
                for path in inst.input:
                    if self._is_temp(path):
                        self._temp_consumers[path] = self._temp_consumers.get(path, 0) + 1
            pending = sum(1 for d in self.graph._edges(step) if id(d) not in self._done)
            self._waiting_deps[id(step)] = pending
            if pending == 0:
                self._settle(step)

    def _count(self, step: Step) -> None:
        if id(step) not in self._counted:
            self._counted.add(id(step))
            self.progress.total += 1

    def _compute_depths(self, steps: list[Step]) -> None:
        # Critical path: the longest chain of dependants below a step runs first when priorities tie.
        for step in reversed(steps):
            below = self._dependants.get(id(step), {}).values()
            self._depth[id(step)] = 1 + max((self._depth.get(id(d), 0) for d in below), default=0)

    def _is_temp(self, path: str) -> bool:
        """A ``temp()`` output to delete once its consumers are done; never one the user asked for."""
        prod = self.graph.producer.get(path)
        if (not isinstance(prod, Step) or not prod.rule.may_flag or prod.pending
                or "temp" not in prod.instance.flags.get(path, ())):  # type: ignore[union-attr]
            return False
        return id(prod) not in self._target_ids

    # ---- deciding ----------------------------------------------------------------------------

    def _settle(self, step: Step) -> None:
        """All of a step's upstream is done: decide it now with real digests."""
        if step.pending:
            self._expand(step)
            return
        sp = self.plan.by_id[id(step)]
        if sp.decision is Decision.PENDING:
            new = plan_step(step, self.plan.by_id, self.plan.facts)
            if new.decision is Decision.PENDING:  # cannot happen once upstream is done; be safe
                new.decision = Decision.RUN
            self.plan.by_id[id(step)] = new
            sp = new
            if sp.decision in (Decision.SKIP, Decision.ADOPT):
                if step.outputs:  # a target rule without outputs has nothing to cut off
                    self.result.skipped_by_cutoff.append(step.id)
                    self.progress.cutoff(step)
                self._complete(step)
                return
        self._push(step)

    def _push(self, step: Step) -> None:
        self._count(step)
        self._seq += 1
        heapq.heappush(self._ready, (-step.rule.priority, -self._depth.get(id(step), 0), self._seq, id(step)))

    def _expand(self, step: Step) -> None:
        """A checkpoint this step waited on is done: instantiate it and admit its new upstream."""
        new_steps = self.graph.expand_pending(step)  # dependencies first, the step itself last
        self.plan.by_id.pop(id(step), None)
        self._admit(new_steps)

    # ---- running ------------------------------------------------------------------------------

    def run(self, steps: list[Step]) -> RunResult:
        old_int = signal.signal(signal.SIGINT, self._on_signal)
        old_term = signal.signal(signal.SIGTERM, self._on_signal)
        try:
            self._admit(steps)
            while (self._ready or self._running or self._locked) and not self._interrupt:
                self._submit_ready()
                self._poll()
            if self._interrupt:
                self._cancel_all()
        finally:
            signal.signal(signal.SIGINT, old_int)
            signal.signal(signal.SIGTERM, old_term)
            self.store.flush()  # before the locks go: a waiting invocation reads our traces
            self.locks.release_all()
        self.result.interrupted = self._interrupt
        return self.result

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._interrupt = True

    def _fits(self, step: Step, backend: Backend) -> bool:
        res = job_res = self._res(step)
        if backend is self.local or getattr(backend, "name", "") == "local":
            if self._used["cores"] and self._used["cores"] + res[0] > self.opt.cores:
                return False
        running_here = sum(1 for r in self._running.values() if r.backend is backend)
        cap = self.opt.jobs if (self.opt.jobs and backend is not self.local) else backend.capacity()
        if running_here >= cap:
            return False
        limit = self.opt.limits.get("mem_mb")
        if limit and self._used["mem_mb"] and self._used["mem_mb"] + job_res[1] > limit:
            return False
        for name, need in res[2].items():
            lim = self.opt.limits.get(name)
            if lim is not None and self._used_extra.get(name, 0) and self._used_extra.get(name, 0) + need > lim:
                return False
        return True

    def _res(self, step: Step) -> tuple[int, int, dict[str, int]]:
        inst = step.instance
        threads = min(max(1, int(inst.threads)), self.opt.cores) if inst is not None else 1
        resources = dict(inst.resources.items()) if inst is not None else {}
        mem = resources.get("mem_mb", 0)
        mem = int(mem) if isinstance(mem, (int, float)) else 0
        extra = {k: int(v) for k, v in resources.items()
                 if k in self.opt.limits and k != "mem_mb" and isinstance(v, (int, float))}
        return threads, mem, extra

    def _backend_for(self, step: Step) -> Backend:
        return self.local if step.rule.localrule else self.backend

    def _submit_ready(self) -> None:
        if self._locked:
            # Back into the queue: a step that waited for a lock must still fit the free cores.
            retry, self._locked = self._locked, []
            for step in retry if not self._stop else ():
                self._push(step)
        deferred = []
        while self._ready and not self._stop and not self._interrupt:  # Ctrl-C: submit nothing more
            entry = heapq.heappop(self._ready)
            step = self._by_id[entry[3]]
            if not self._fits(step, self._backend_for(step)):
                deferred.append(entry)
                if not self._running:  # nothing will free resources: run it alone, capped
                    deferred.pop()
                    self._try_lock_and_start(step)
                break
            self._try_lock_and_start(step)
        for entry in deferred:
            heapq.heappush(self._ready, entry)

    def _try_lock_and_start(self, step: Step) -> None:
        if not self.locks.try_acquire(step.id, step.outputs):
            if step.id not in self._lock_waited:
                self._lock_waited.add(step.id)
                self.progress.note(f"{step.id}: waiting for {self.locks.holder(step.outputs[0])}, which is building it")
            self._locked.append(step)
            return
        in_flight = any(map(self.plan.facts.in_flight, step.outputs))  # then its run may be gone unseen
        if self.peers.take_over(step.outputs, in_flight, self.progress.note):
            self._start(step)  # a dead run left it half written: rebuilt from a clean output
            return
        if self._was_built_meanwhile(step):
            self.locks.release(step.id)
            self.result.built_elsewhere.append(step.id)
            self.progress.skipped(step, "built meanwhile by another flowmake, skipped")
            self._complete(step)
            return
        self._start(step)

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

    def _was_built_meanwhile(self, step: Step) -> bool:
        """Another invocation may have built this step while we waited for, or before we took, its lock."""
        # Another run held its lock, or had its outputs in flight when we loaded the store.
        contended = step.id in self._lock_waited or any(map(self.plan.facts.in_flight, step.outputs))
        if not contended and not self._touched_by_another_run(step):
            return False
        traces = self.peers.finished_traces(step.outputs)
        if traces is None:
            return False
        for out in step.outputs:
            self.digest(out)  # refresh the memoised stat: the file was rewritten by the other run
        self.store.put_traces(traces)
        sp = plan_step(step, self.plan.by_id, reread(self.plan.facts))  # we hold its locks
        if sp.decision is Decision.SKIP:
            self.plan.by_id[id(step)] = sp
            return True
        return False

    def _start(self, step: Step) -> None:
        sp = self.plan.by_id[id(step)]
        refresh_key(sp, self.plan.facts)
        backend = self._backend_for(step)
        attempt = self._attempts.get(id(step), 0) + 1
        spec = job_spec(step, self.ctx, attempt=attempt, inputs=sp.inputs, image=step.rule.container,
                        local=backend is self.local, mem_scale=self._mem_scale.get(id(step), 1.0))
        prepare_outputs(step, self.ctx.workdir)
        self.store.begin(step.id, list(step.outputs), None)
        threads, mem, extra = self._res(step)
        self.progress.started(step, sp, spec.command if self.opt.printshellcmds else None)
        handle = backend.submit(spec)
        pgid = getattr(backend, "pgid", None)
        if pgid is not None:
            self.store.begin(step.id, list(step.outputs), pgid(handle))
        self._used["cores"] += threads
        self._used["mem_mb"] += mem
        for k, v in extra.items():
            self._used_extra[k] = self._used_extra.get(k, 0) + v
        self._running[id(handle)] = _Running(step, sp, handle, backend, time.time(), threads, mem, extra)

    def _poll(self) -> None:
        timeout = self.opt.lock_wait_s if self._locked else 0.5
        backends = {id(r.backend): r.backend for r in self._running.values()}
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

    def _release(self, run: _Running) -> None:
        self._used["cores"] -= run.threads
        self._used["mem_mb"] -= run.mem
        for k, v in run.extra.items():
            self._used_extra[k] -= v

    def _finished(self, ev: JobEvent) -> None:
        run = self._running.pop(id(ev.handle), None)
        if run is None:
            return
        self._release(run)
        step = run.step
        if ev.state is JobState.SUCCEEDED:
            missing = finish_outputs(step, self.ctx.workdir)
            if missing:
                self._failure(run, ev, "declared outputs missing after the job: " + ", ".join(missing))
                return
            write_benchmark(step, self.ctx.workdir, ev.runtime_s, ev.peak_rss_kb)
            changed = record_job_traces(self.store, step, run.plan, self.digest, self.plan.facts)
            if changed:  # what the job read may be neither version: not recorded as good
                self.result.inputs_changed.append((step.id, changed))
                self.progress.note(inputs_changed_warning(step.id, changed))
            self._history(run, ev)
            self.store.end(step.id)
            self._unlock.append(step.id)
            self.result.ran.append(step.id)
            self.progress.finished(step, ok=True)
            self._complete(step)
            return
        if ev.state is JobState.CANCELLED:
            remove_outputs(step, self.ctx.workdir)
            self.store.end(step.id)
            self._unlock.append(step.id)
            return
        why = {
            JobState.FAILED: f"exit code {ev.exit_code}",
            JobState.OOM: "killed for running out of memory",
            JobState.TIMEOUT: "exceeded its time limit",
            JobState.LOST: "lost with its host",
        }.get(ev.state, ev.state.value)
        self._failure(run, ev, why + (f" ({ev.message})" if ev.message else ""))

    def _failure(self, run: _Running, ev: JobEvent, why: str) -> None:
        step = run.step
        remove_outputs(step, self.ctx.workdir)
        self._history(run, ev)
        self.store.end(step.id)
        self._unlock.append(step.id)
        key = id(step)
        if ev.state is JobState.LOST:  # not the job's fault: rerun without spending a retry
            self.progress.note(f"{step.id}: {why}; resubmitting")
            self.progress.requeued()
            self._push(step)
            return
        attempts = self._attempts.get(key, 0) + 1
        self._attempts[key] = attempts
        allowed = max(step.rule.retries or 0, self.opt.retries)
        if attempts <= allowed and not self._interrupt:
            if ev.state is JobState.OOM:
                self._mem_scale[key] = self._mem_scale.get(key, 1.0) * 1.5
            self.progress.note(f"{step.id}: {why}; retry {attempts} of {allowed}")
            self.progress.requeued()
            self._reinstantiate(step, attempts + 1)
            self._push(step)
            return
        self._failed.add(key)
        self.result.failed.append((step.id, why))
        self.progress.finished(step, ok=False, why=why, log=os.path.join(self.ctx.workdir, run.handle.spec.log or ""))
        if not self.opt.keep_going:
            self._stop = True
            self._ready.clear()

    def _reinstantiate(self, step: Step, attempt: int) -> None:
        """Resources and threads may depend on the attempt (``lambda wildcards, attempt: ...``)."""
        try:
            step.instance = step.rule.instantiate(step.bindings, self.graph._view, attempt=attempt)
        except Exception:  # the first attempt's instance stays valid; its resources are a fine retry
            pass

    def _complete(self, step: Step) -> None:
        self._done.add(id(step))
        sp = self.plan.by_id.get(id(step))
        if sp is not None and sp.decision in (Decision.RUN, Decision.PENDING):
            sp.decision = Decision.DONE
        if step.rule.is_checkpoint:
            self.graph.unfinished_checkpoint_outputs.difference_update(step.outputs)
        inst = step.instance
        if inst is not None and not self.opt.notemp:
            for path in inst.input:
                if path in self._temp_consumers:
                    self._temp_consumers[path] -= 1
                    if self._temp_consumers[path] == 0:
                        remove_path(os.path.join(self.ctx.workdir, path))
        if self._stop:
            return
        for dep in self._dependants.get(id(step), {}).values():
            left = self._waiting_deps.get(id(dep))
            if left is None:
                continue
            left -= 1
            self._waiting_deps[id(dep)] = left
            if left == 0:
                self._settle(dep)

    # ---- records ------------------------------------------------------------------------------

    def _record_traces(self, step: Step, sp: StepPlan) -> None:
        record_traces(self.store, step, sp, self.digest, self.plan.facts)

    def _history(self, run: _Running, ev: JobEvent) -> None:
        inst = run.step.instance
        self.store.add_history(HistoryRecord(
            step_id=run.step.id, rule=run.step.rule.name, outputs=list(run.step.outputs), start=run.start,
            end=time.time(), runtime_s=ev.runtime_s or 0.0, exit_code=ev.exit_code, peak_rss_kb=ev.peak_rss_kb,
            backend=getattr(run.backend, "name", "?"), host=ev.host,
            command=run.handle.spec.command, params=repr(list(inst.params)) if inst is not None else "",
        ))

    def _cancel_all(self) -> None:
        for run in list(self._running.values()):
            run.backend.cancel(run.handle)
        deadline = time.monotonic() + 5
        while self._running and time.monotonic() < deadline:
            for backend in {id(r.backend): r.backend for r in self._running.values()}.values():
                for ev in backend.poll(0.1):
                    run = self._running.pop(id(ev.handle), None)
                    if run is not None:
                        remove_outputs(run.step, self.ctx.workdir)
                        self.store.end(run.step.id)
        for run in self._running.values():
            # Not reaped: its marker stays, so the next run stops its process group and reruns it.
            remove_outputs(run.step, self.ctx.workdir)
        self._running.clear()
