"""Test doubles for the execution interface, in the spirit of ninja's ``FakeCommandRunner``.

``FakeBackend`` runs nothing. It keeps every JobSpec it was given (``submitted``; ``commands`` are
their command texts, ninja's ``commands_ran_``), lets a test script each submission's outcome
(succeed, fail, out of memory, lost, slow), and on success writes the step's outputs itself, so the
scheduler's real after-job checks, traces and re-planning run in-process and in milliseconds.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from flowmake.backend import JobEvent, JobHandle, JobSpec, JobState


@dataclass(frozen=True)
class Outcome:
    """What one submission does: its end state, after how many polls, and what it writes."""

    state: JobState = JobState.SUCCEEDED
    polls: int = 1  # polls until it finishes: > 1 is a slow job
    write: Callable[[Path, JobSpec], None] | None = None  # default: each output holds the step id
    exit_code: int | None = None


OK = Outcome()
FAIL = Outcome(JobState.FAILED, exit_code=1)
OOM = Outcome(JobState.OOM, exit_code=137)
LOST = Outcome(JobState.LOST)


def slow(polls: int) -> Outcome:
    return Outcome(polls=polls)


def writes(text: str) -> Outcome:
    """A success whose outputs all hold ``text`` (the same bytes every time: early cutoff's case)."""
    def write(workdir: Path, spec: JobSpec) -> None:
        for out in spec.outputs:
            _put(workdir / out, text)
    return Outcome(write=write)


def _put(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@dataclass
class _Job:
    handle: JobHandle
    outcome: Outcome
    left: int
    cancelled: bool = False


class FakeBackend:
    """``script(spec)`` gives each submission's Outcome (default: success after one poll)."""

    def __init__(self, script: Callable[[JobSpec], Outcome] | None = None, *, slots: int = 64,
                 name: str = "fake") -> None:
        self.name = name
        self.script = script or (lambda spec: OK)
        self.slots = slots
        self.submitted: list[JobSpec] = []
        self.cancelled: list[str] = []
        self.max_running = 0
        self.max_threads = 0  # the most threads running at once, as the specs declared them
        self.events: list[str] = []  # "start STEP" and "end STEP", in the order they happened
        self._jobs: list[_Job] = []

    @property
    def commands(self) -> list[str]:
        return [s.command for s in self.submitted]

    @property
    def steps(self) -> list[str]:
        return [s.step_id for s in self.submitted]

    def capacity(self) -> int:
        return self.slots

    def submit(self, spec: JobSpec) -> JobHandle:
        self.submitted.append(spec)
        self.events.append("start " + spec.step_id)
        handle = JobHandle(spec, native_id=str(len(self.submitted)))
        outcome = self.script(spec)
        self._jobs.append(_Job(handle, outcome, max(1, outcome.polls)))
        self.max_running = max(self.max_running, len(self._jobs))
        self.max_threads = max(self.max_threads, sum(j.handle.spec.resources.threads for j in self._jobs))
        return handle

    def poll(self, timeout: float) -> list[JobEvent]:
        events = []
        for job in list(self._jobs):
            job.left -= 1
            if job.cancelled:
                events.append(JobEvent(job.handle, JobState.CANCELLED))
            elif job.left <= 0:
                events.append(self._finish(job))
            else:
                continue
            self._jobs.remove(job)
        return events

    def _finish(self, job: _Job) -> JobEvent:
        spec, outcome = job.handle.spec, job.outcome
        self.events.append("end " + spec.step_id)
        if outcome.state is JobState.SUCCEEDED:
            workdir = Path(spec.workdir)
            if outcome.write is not None:
                outcome.write(workdir, spec)
            else:
                for out in spec.outputs:
                    _put(workdir / out, spec.step_id + "\n")
        return JobEvent(job.handle, outcome.state, exit_code=outcome.exit_code if outcome.exit_code is not None
                        else (0 if outcome.state is JobState.SUCCEEDED else None), runtime_s=0.0, host="fake")

    def cancel(self, handle: JobHandle) -> None:
        self.cancelled.append(handle.spec.step_id)
        for job in self._jobs:
            if job.handle is handle:
                job.cancelled = True

    def close(self) -> None:
        self._jobs.clear()


def by_attempt(outcomes: dict[str, Sequence[Outcome]]) -> Callable[[JobSpec], Outcome]:
    """A script from rule name to the outcomes of its submissions in order (then success)."""
    seen: dict[str, int] = {}

    def script(spec: JobSpec) -> Outcome:
        n = seen.get(spec.step_id, 0)
        seen[spec.step_id] = n + 1
        todo = outcomes.get(spec.rule, ())
        return todo[n] if n < len(todo) else OK
    return script


@dataclass
class Run:
    """What one in-process run left: the scheduler's result, the backend's record, the progress text."""

    result: Any
    backend: FakeBackend
    progress: str
    scheduler: Any = field(repr=False, default=None)

    @property
    def unsettled(self) -> list[str]:
        """Steps the run took in but neither finished nor skipped (after a clean run: none)."""
        from flowmake.step_state import StepRecord, StepState
        return sorted(r.step.id for r in self.scheduler._records.values()
                      if isinstance(r, StepRecord) and r.state not in (StepState.DONE, StepState.SKIPPED))


def run_in_process(workdir: Path, *targets: str, backend: FakeBackend | None = None, local: FakeBackend | None = None,
                   cores: int = 4, **options: Any) -> Run:
    """Plan ``targets`` in ``workdir`` as ``flowmake`` would, then run the plan with fake backends.

    ``options`` go to SchedulerOptions (keep_going, retries, limits, jobs, ...). The working directory
    is changed for the run and restored afterwards.
    """
    from flowmake import api, graph_memo
    from flowmake.jobs import JobContext
    from flowmake.progress import Progress
    from flowmake.scheduler import Scheduler, SchedulerOptions

    backend = backend or FakeBackend()
    local = local or backend
    with _cwd(workdir):
        session = api.open_session(api.Options(targets=list(targets)), readonly=False)
        try:
            out = io.StringIO()
            sched = Scheduler(
                session.graph, session.plan, store=session.store, digest=api._fresh_digest(session.digester),
                backend=backend, local=local, progress=Progress(out, tty=False),
                ctx=JobContext(workdir=session.workdir, flowfile=session.flowfile, cores=cores),
                options=SchedulerOptions(cores=cores, lock_wait_s=0.0, **options),
            )
            result = sched.run(api.selected(session))
            if not result.interrupted:
                graph_memo.keep(session.graph_memo, session.fingerprint, session.store, session.workflow, session.graph,
                          session.steps, sched.current, session.known_keys)
        finally:
            session.close()
    return Run(result, backend, out.getvalue(), sched)


class _cwd:
    def __init__(self, path: Path) -> None:
        self.path, self.old = path, ""

    def __enter__(self) -> None:
        self.old = os.getcwd()
        os.chdir(self.path)

    def __exit__(self, *exc: Any) -> None:
        os.chdir(self.old)

