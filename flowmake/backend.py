"""The execution interface between the scheduler and the places jobs run.

A backend only executes: it takes an immutable ``JobSpec``, starts it somewhere, and reports what
happened through ``poll()``. It never calls back into the scheduler, never decides what to run and
never touches the store. Backends are found through the entry-point group ``flowmake.backends`` and
loaded only when asked for.
"""

from __future__ import annotations

import enum
import importlib.metadata
import os
import queue
import tempfile
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, runtime_checkable

from flowmake.errors import BackendError, did_you_mean


@dataclass(frozen=True)
class Resources:
    threads: int = 1
    mem_mb: int | None = None
    runtime_min: int | None = None
    # Anything else the rule declared (partition, gpu, disk_mb, ...), as given.
    extra: tuple[tuple[str, Any], ...] = ()

    def get(self, name: str, default: Any = None) -> Any:
        return dict(self.extra).get(name, default)


@dataclass(frozen=True)
class JobSpec:
    """Everything needed to run one step, and nothing that would let a backend reach back.

    Paths in ``inputs``/``outputs``/``log`` are relative to ``workdir``. ``command`` is a complete
    bash script body (run under ``set -euo pipefail``); run/script rules arrive here already turned
    into a command that calls ``python -m flowmake.jobrun``.
    """

    step_id: str
    rule: str
    command: str
    workdir: str
    inputs: tuple[tuple[str, str], ...] = ()  # (path, digest hex); digest "" when unknown
    outputs: tuple[str, ...] = ()
    directories: tuple[str, ...] = ()  # outputs that are directories
    log: str | None = None  # where stdout+stderr go; the scheduler always sets one
    resources: Resources = field(default_factory=Resources)
    image: str | None = None  # container image reference, when the rule has one
    env: tuple[tuple[str, str], ...] = ()
    attempt: int = 1
    local: bool = False  # localrule: must run on the submitting machine
    cache_outputs: bool = False  # the shared cache takes its outputs: a host may upload them itself


class JobHandle:
    """Opaque to the scheduler; backends may subclass it to keep their own bookkeeping."""

    __slots__ = ("spec", "native_id", "__weakref__", "__dict__")

    def __init__(self, spec: JobSpec, native_id: str = "") -> None:
        self.spec = spec
        self.native_id = native_id

    def __repr__(self) -> str:
        return f"<JobHandle {self.spec.step_id} {self.native_id}>"


class JobState(enum.Enum):
    RUNNING = "running"  # the job started (optional event)
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # the job's own failure (non-zero exit, missing outputs): may be retried
    OOM = "oom"  # killed for exceeding its memory
    TIMEOUT = "timeout"
    LOST = "lost"  # host died, node failed, preempted: rerun without spending a retry
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class JobEvent:
    handle: JobHandle
    state: JobState
    exit_code: int | None = None
    runtime_s: float | None = None
    peak_rss_kb: int | None = None
    host: str = ""
    message: str = ""

    @property
    def finished(self) -> bool:
        return self.state is not JobState.RUNNING


@runtime_checkable
class Backend(Protocol):
    name: str

    def capacity(self) -> int:
        """How many jobs may be submitted at once (slots, cores); the scheduler respects it."""

    def submit(self, spec: JobSpec) -> JobHandle: ...

    def poll(self, timeout: float) -> list[JobEvent]:
        """Events since the last poll, waiting up to ``timeout`` seconds for at least one."""

    def cancel(self, handle: JobHandle) -> None: ...

    def close(self) -> None: ...


def drain(events: "queue.Queue[JobEvent]", timeout: float) -> list[JobEvent]:
    """For backends whose jobs report from threads: wait up to ``timeout`` for one event, then
    take everything else already queued."""
    out: list[JobEvent] = []
    try:
        out.append(events.get(timeout=max(0.0, timeout)))
    except queue.Empty:
        return out
    while True:
        try:
            out.append(events.get_nowait())
        except queue.Empty:
            return out


# The kernel refuses one argument over 128 KiB (MAX_ARG_STRLEN) and all of them with the
# environment over ARG_MAX (2 MiB here): a rule over thousands of inputs renders a longer command.
# Such a script goes to bash as a file beside the job's log; shorter ones stay an argument (no file
# to write, and bash names itself "bash" in its messages).
INLINE_MAX = 64 * 1024


def script_file(spec: JobSpec, script: str, *, always: bool = False) -> str | None:
    """Write ``script`` to a file beside the job's log when it is too long for argv (or ``always``);
    the file's path, or None when it can stay an argument. The backend removes it when the job ends.

    Encoded as the kernel will see it: a path that is not UTF-8 keeps its bytes (surrogateescape).
    """
    data = os.fsencode(script)
    if len(data) <= INLINE_MAX and not always:
        return None
    where = os.path.dirname(os.path.join(spec.workdir, spec.log)) if spec.log else os.path.join(spec.workdir, ".flowmake")
    os.makedirs(where, exist_ok=True)
    fd, path = tempfile.mkstemp(dir=where, prefix=".job-", suffix=".sh")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def remove_script(path: str | None) -> None:
    if path is not None:
        try:
            os.unlink(path)
        except OSError:
            pass


def backend_names() -> list[str]:
    return sorted(ep.name for ep in importlib.metadata.entry_points(group="flowmake.backends"))


def backend_class(name: str) -> type:
    """The class registered under ``name``, imported only now."""
    for ep in importlib.metadata.entry_points(group="flowmake.backends"):
        if ep.name == name:
            return ep.load()
    names = backend_names()
    raise BackendError(
        f"unknown backend {name!r}",
        hint=did_you_mean(name, names) or "available: " + ", ".join(names),
    )


def load_backend(name: str, settings: Mapping[str, Any], cores: int) -> Backend:
    """Instantiate a backend by its entry-point name with its ``[backends.NAME]`` settings."""
    return backend_class(name)(settings=dict(settings), cores=cores)
