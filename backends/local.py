"""The local backend: each job a bash process in its own process group on this machine.

Jobs die with flowmake: the job's shell gets SIGKILL from the kernel when flowmake dies
(PR_SET_PDEATHSIG), and its process group id goes into the store's in-flight marker so the next run
can stop whatever the shell left behind before it reruns the step. Runtime and peak RSS come from
``wait4``'s rusage.
"""

from __future__ import annotations

import ctypes
import os
import select
import shutil
import signal
import socket
import subprocess
import time
from typing import Any

from flowmake.backend import JobEvent, JobHandle, JobSpec, JobState, remove_script, script_file

_PR_SET_PDEATHSIG = 1
STRICT = "set -euo pipefail\n"
KILL_AFTER_S = 2.0  # a cancelled job's grace between SIGTERM and SIGKILL


def _libc() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:  # pragma: no cover - not Linux
        return None


_LIBC = _libc()
# util-linux's setpriv sets PR_SET_PDEATHSIG and execs the job's shell. Going through it instead of a
# Python preexec_fn lets subprocess use vfork: 4 ms per job instead of 35 ms from a large flowmake
# process (a forked copy of the whole planned graph faulting its pages in to run one prctl).
_SETPRIV = shutil.which("setpriv")


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: make the kernel kill the job's shell when flowmake
    # dies, however it dies (SIGKILL included).
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class LocalHandle(JobHandle):
    __slots__ = ("proc", "started", "pidfd", "cancelled", "script")
    proc: subprocess.Popen[bytes]
    started: float
    pidfd: int | None
    cancelled: bool
    script: str | None  # the job's script file, when too long for an argument


def script_argv(spec: JobSpec, script: str) -> tuple[list[str], str | None]:
    """bash's arguments for ``script``, and the file it was written to when too long for argv."""
    path = script_file(spec, script)
    return (["bash", "-c", script], None) if path is None else (["bash", path], path)


class LocalBackend:
    name = "local"

    def __init__(self, *, settings: dict[str, Any] | None = None, cores: int = 1) -> None:
        self.settings = settings or {}
        self.cores = cores
        self.host = socket.gethostname()
        self._running: dict[int, LocalHandle] = {}
        self._events: list[JobEvent] = []
        self._kill_at: dict[int, float] = {}  # cancelled jobs' pids -> when SIGTERM becomes SIGKILL

    def capacity(self) -> int:
        return max(1, self.cores)

    def submit(self, spec: JobSpec) -> JobHandle:
        log_path = os.path.join(spec.workdir, spec.log) if spec.log else os.devnull
        if spec.log:
            os.makedirs(os.path.dirname(log_path), exist_ok=True)
        env = None
        if spec.env:
            env = dict(os.environ)
            env.update(spec.env)
        argv, script = script_argv(spec, STRICT + spec.command)
        if _SETPRIV:
            argv[:0] = [_SETPRIV, "--pdeathsig", "KILL"]
        try:
            with open(log_path, "ab") as log:
                proc = subprocess.Popen(
                    argv,
                    cwd=spec.workdir,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=None if _SETPRIV else _die_with_parent,
                    env=env,
                    close_fds=True,
                )
        except BaseException:
            remove_script(script)
            raise
        handle = LocalHandle(spec, str(proc.pid))
        handle.proc = proc
        handle.script = script
        handle.started = time.monotonic()
        handle.cancelled = False
        try:
            handle.pidfd = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):
            handle.pidfd = None
        self._running[proc.pid] = handle
        return handle

    def pgid(self, handle: JobHandle) -> int:
        return int(handle.native_id)

    def poll(self, timeout: float) -> list[JobEvent]:
        if self._kill_at:
            self._escalate()
            timeout = min(timeout, 0.1)
        events = self._reap()
        if events or not self._running:
            if not self._running and not events and timeout:
                time.sleep(min(timeout, 0.05))
            return events
        fds = [h.pidfd for h in self._running.values() if h.pidfd is not None]
        if fds and len(fds) == len(self._running):
            select.select(fds, [], [], timeout)
        else:
            time.sleep(min(timeout, 0.01))
        return self._reap()

    def _reap(self) -> list[JobEvent]:
        events, self._events = self._events, []
        for pid, handle in list(self._running.items()):
            try:
                wpid, status, usage = os.wait4(pid, os.WNOHANG)
            except ChildProcessError:
                wpid, status, usage = pid, 0, None
            if wpid == 0:
                continue
            del self._running[pid]
            remove_script(handle.script)
            if handle.pidfd is not None:
                os.close(handle.pidfd)
            handle.proc.returncode = os.waitstatus_to_exitcode(status)
            code = handle.proc.returncode
            if code < 0:
                code = 128 - code
            # The shell is gone; anything it left in its group must not outlive the job.
            _kill_group(pid, signal.SIGKILL)
            state = JobState.SUCCEEDED if code == 0 else JobState.FAILED
            if handle.cancelled:
                state = JobState.CANCELLED
            events.append(
                JobEvent(
                    handle,
                    state,
                    exit_code=code,
                    runtime_s=time.monotonic() - handle.started,
                    peak_rss_kb=usage.ru_maxrss if usage else None,
                    host=self.host,
                )
            )
        return events

    def cancel(self, handle: JobHandle) -> None:
        """SIGTERM the job's whole group now, SIGKILL it 2 s later (from ``poll``) if it lingers.

        Never waits: on Ctrl-C with many jobs running, every job gets its SIGTERM at once.
        """
        pid = int(handle.native_id)
        if pid not in self._running:
            return
        handle.cancelled = True  # type: ignore[attr-defined]  # a LocalHandle
        _kill_group(pid, signal.SIGTERM)
        self._kill_at[pid] = time.monotonic() + KILL_AFTER_S

    def _escalate(self) -> None:
        now = time.monotonic()
        for pid, when in list(self._kill_at.items()):
            if pid not in self._running:
                del self._kill_at[pid]
            elif now >= when:
                _kill_group(pid, signal.SIGKILL)
                del self._kill_at[pid]

    def close(self) -> None:
        for handle in list(self._running.values()):
            self.cancel(handle)
        deadline = time.monotonic() + KILL_AFTER_S + 1
        while self._running and time.monotonic() < deadline:
            self._events.extend(self.poll(0.05))
        for pid in list(self._running):
            _kill_group(pid, signal.SIGKILL)
        self._events.extend(self._reap())


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
