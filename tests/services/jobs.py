"""Small helpers the backend tests share: build JobSpecs, wait for events."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterable

from flowmake.backend import Backend, JobEvent, JobHandle, JobSpec, Resources


def spec(workdir: Path, step_id: str, command: str, *, rule: str = "r", outputs: Iterable[str] = (),
         inputs: Iterable[tuple[str, str]] = (), directories: Iterable[str] = (),
         threads: int = 1, mem_mb: int | None = None, runtime_min: int | None = None,
         extra: dict[str, Any] | None = None, **kw: Any) -> JobSpec:
    return JobSpec(
        step_id=step_id, rule=rule, command=command, workdir=str(workdir),
        inputs=tuple(inputs), outputs=tuple(outputs), directories=tuple(directories),
        log=f"logs/{step_id}.log",
        resources=Resources(threads=threads, mem_mb=mem_mb, runtime_min=runtime_min,
                            extra=tuple((extra or {}).items())),
        **kw,
    )


def wait_for(backend: Backend, handles: Iterable[JobHandle], timeout: float = 60.0,
             step: float = 0.5) -> dict[JobHandle, JobEvent]:
    """Poll until every handle has a finished event; fail the test on timeout."""
    pending = set(handles)
    done: dict[JobHandle, JobEvent] = {}
    deadline = time.monotonic() + timeout
    while pending:
        left = deadline - time.monotonic()
        if left <= 0:
            names = sorted(map(repr, pending))
            raise AssertionError(f"no final event after {timeout}s for {names}")
        for ev in backend.poll(min(step, left)):
            if ev.finished and ev.handle in pending:
                pending.discard(ev.handle)
                done[ev.handle] = ev
    return done


def wait_one(backend: Backend, handle: JobHandle, timeout: float = 60.0) -> JobEvent:
    return wait_for(backend, [handle], timeout)[handle]
