"""The docker backend: each job is one ``docker run`` of the rule's image, driven through the CLI.

The workdir is bind-mounted at the same path and is the container's working dir, so paths in the
command mean the same inside and out. Containers run with ``--network none`` (steps must be
hermetic), as the caller's uid:gid (outputs are not root-owned), with ``--cpus`` from threads and
``--memory`` from ``mem_mb``. Each container has a name, so ``cancel`` can ``docker kill`` it.

Containers run without ``--rm``: once one exits we ``docker inspect`` it (``State.OOMKilled``
tells an OOM kill from a job that exited 137 on its own) and then remove it.

Jobs without an image use ``settings["image"]`` when set; otherwise (and for localrules) they run on
this machine as a plain subprocess, exactly as the local backend would.

Settings (``[backends.docker]``): ``image`` default image, ``docker`` CLI path, ``user``
("uid:gid", default the caller's), ``network`` (default "none"), ``run_args`` (extra ``docker run``
arguments), ``pull`` (docker run's --pull: "missing", "never", "always"; default docker's own),
``jobs`` (capacity, default ``cores``). A rule's ``docker_args`` resource (a list) adds arguments
for that rule's containers.
"""

from __future__ import annotations

import itertools
import os
import queue
import re
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from flowmake.backend import JobEvent, JobHandle, JobSpec, JobState, drain, remove_script, script_file
from flowmake.errors import BackendError
from flowmake.settings import available_cores

# docker run's own failures (bad flag, image missing, cannot start): not the job's exit code.
DOCKER_RUN_FAILED = 125
# Longer scripts go into the container as a file (beside the job's log, in the bind-mounted
# workdir), not as an argument: the kernel refuses one argument over 128 KiB (MAX_ARG_STRLEN),
# both for the docker CLI here and for the shell in the container. A script naming a file that is
# not UTF-8 goes as a file too: the CLI sends its arguments to the engine as JSON strings, where
# such bytes would become U+FFFD.


def job_script(spec: JobSpec) -> str:
    """The script a job runs: strict mode, then the rule's command."""
    return "set -euo pipefail\n" + spec.command + "\n"


class DockerHandle(JobHandle):
    def __init__(self, spec: JobSpec, native_id: str) -> None:
        super().__init__(spec, native_id)
        self.proc: subprocess.Popen | None = None
        self.container: str | None = None  # None: runs as a local subprocess
        self.started = time.monotonic()
        self.cancelled = False
        self.timed_out = False
        self.waiter: threading.Thread | None = None
        self.script: str | None = None  # the script's file, when it was too long for argv


class DockerBackend:
    name = "docker"

    def __init__(self, *, settings: dict, cores: int) -> None:
        self.settings: dict[str, Any] = dict(settings)
        self.cores = max(1, int(cores))
        self.docker = str(self.settings.get("docker", "docker"))
        self.default_image: str | None = self.settings.get("image") or None
        self.user = str(self.settings.get("user") or f"{os.getuid()}:{os.getgid()}")
        self.network = str(self.settings.get("network", "none"))
        self.run_args = [str(a) for a in self.settings.get("run_args", ())]
        # None: docker's default (pull when missing). "never" keeps a run from reaching a registry.
        self.pull: str | None = self.settings.get("pull") or None
        self._events: queue.Queue[JobEvent] = queue.Queue()
        self._running: dict[str, DockerHandle] = {}
        self._lock = threading.Lock()
        self._seq = itertools.count(1)
        # One tag per backend instance: close() removes exactly our containers, nobody else's.
        self._tag = uuid.uuid4().hex[:10]

    # -- Backend protocol -------------------------------------------------------------------------

    def capacity(self) -> int:
        return max(1, int(self.settings.get("jobs", self.cores)))

    def submit(self, spec: JobSpec) -> JobHandle:
        workdir = Path(spec.workdir)
        log = workdir / (spec.log or f".flowmake/log/{spec.step_id}.log")
        log.parent.mkdir(parents=True, exist_ok=True)
        image = None if spec.local else (spec.image or self.default_image)
        handle = DockerHandle(spec, "")
        script = job_script(spec)
        handle.script = script_file(spec, script, always=not _is_utf8(os.fsencode(script)))
        if image:
            handle.container = f"flowmake-{self._tag}-{next(self._seq)}-{_safe(spec.rule)}"[:120]
            handle.native_id = handle.container
            cmd = self._run_command(spec, image, handle.container, handle.script)
        else:
            handle.native_id = f"local-{next(self._seq)}"
            cmd = ["bash", handle.script] if handle.script else ["bash", "-c", job_script(spec)]
        env = {**os.environ, **dict(spec.env)} if not image else None
        try:
            with open(log, "ab") as out:  # appends across attempts, as the local backend does
                # Own session: cancel can kill the whole process group of a local job.
                handle.proc = subprocess.Popen(
                    cmd, cwd=workdir, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    env=env, start_new_session=True,
                )
        except BaseException:
            remove_script(handle.script)
            raise
        with self._lock:
            self._running[handle.native_id] = handle
        handle.waiter = threading.Thread(target=self._wait, args=(handle,), daemon=True,
                                         name=f"docker-wait-{handle.native_id}")
        handle.waiter.start()
        return handle

    def poll(self, timeout: float) -> list[JobEvent]:
        return drain(self._events, timeout)

    def cancel(self, handle: JobHandle) -> None:
        if not isinstance(handle, DockerHandle):
            raise BackendError(f"not a docker job: {handle!r}")
        handle.cancelled = True
        self._kill(handle)

    def close(self) -> None:
        with self._lock:
            handles = list(self._running.values())
        for h in handles:
            h.cancelled = True
            self._kill(h)
        for h in handles:
            # The waiter thread inspects and removes the container; wait for it to finish so
            # nothing of ours outlives close().
            if h.waiter is not None:
                h.waiter.join(15)
        # Containers whose docker CLI died before it could be waited for.
        mine = f"label=flowmake.run={self._tag}"
        ids = self._docker("ps", "-aq", "--filter", mine).stdout.split()
        if ids:
            self._docker("rm", "-f", *ids)

    # -- docker specifics -------------------------------------------------------------------------

    def image_digest(self, ref: str) -> str:
        """The content digest (image id) of ``ref``; BackendError when it cannot be resolved."""
        proc = self._docker("image", "inspect", "--format", "{{.Id}}", ref)
        digest = proc.stdout.strip()
        if proc.returncode != 0 or not digest:
            raise BackendError(
                f"cannot resolve container image {ref!r}",
                details=[proc.stderr.strip()] if proc.stderr.strip() else (),
                hint="pull or build the image first (docker pull / docker load); "
                     "flowmake does not pull images itself",
            )
        return digest

    def _run_command(self, spec: JobSpec, image: str, name: str, script: str | None = None
                     ) -> list[str]:
        res = spec.resources
        cmd = [self.docker, "run", "--name", name, "--label", f"flowmake.run={self._tag}",
               "--label", f"flowmake.step={spec.step_id}", f"--network={self.network}",
               "--user", self.user,
               "-v", f"{spec.workdir}:{spec.workdir}", "-w", spec.workdir,
               # docker refuses more CPUs than the machine has; the limit then is the machine.
               "--cpus", str(max(1, min(int(res.threads), available_cores())))]
        if res.mem_mb:
            # memory-swap == memory: the limit is the limit, no spill into swap.
            cmd += ["--memory", f"{int(res.mem_mb)}m", "--memory-swap", f"{int(res.mem_mb)}m"]
        for key, value in spec.env:
            cmd += ["-e", f"{key}={value}"]
        if self.pull:
            cmd.append(f"--pull={self.pull}")
        cmd += [*self.run_args, *map(str, spec.resources.get("docker_args", ()) or ()), image]
        # bash when the image has it (the command is a bash script), else the image's POSIX sh.
        if script is not None:  # the same path inside: the workdir is mounted where it is here
            launcher = 'if command -v bash >/dev/null 2>&1; then exec bash "$1"; fi; exec sh "$1"'
            return cmd + ["sh", "-c", launcher, "flowmake-job", script]
        launcher = 'if command -v bash >/dev/null 2>&1; then exec bash -c "$1"; fi; exec sh -c "$1"'
        return cmd + ["sh", "-c", launcher, "flowmake-job", job_script(spec)]

    def _wait(self, handle: DockerHandle) -> None:
        proc = handle.proc
        if proc is None:  # the thread starts only after the process does
            return
        limit = handle.spec.resources.runtime_min
        try:
            code = proc.wait(timeout=limit * 60 if limit else None)
        except subprocess.TimeoutExpired:
            handle.timed_out = True
            self._kill(handle)
            code = proc.wait()
        runtime = time.monotonic() - handle.started
        remove_script(handle.script)
        oom, message = False, ""
        if handle.container:
            state = self._docker("inspect", "--format",
                                 "{{.State.OOMKilled}} {{.State.ExitCode}}", handle.container)
            fields = state.stdout.split()
            if state.returncode == 0 and len(fields) == 2:
                oom = fields[0] == "true"
            self._docker("rm", "-f", handle.container)
        if handle.cancelled:
            st = JobState.CANCELLED
        elif handle.timed_out:
            st, message = JobState.TIMEOUT, f"killed after {limit} min (runtime_min)"
        elif oom:
            st, message = JobState.OOM, f"out of memory (limit {handle.spec.resources.mem_mb} MB)"
        elif code == 0:
            st = JobState.SUCCEEDED
        else:
            st = JobState.FAILED
            if handle.container and code == DOCKER_RUN_FAILED:
                message = "docker could not run the container (exit 125); see the log"
        with self._lock:
            self._running.pop(handle.native_id, None)
        self._events.put(JobEvent(handle, st, exit_code=code, runtime_s=runtime,
                                  host="docker" if handle.container else socket.gethostname(),
                                  message=message))

    def _kill(self, handle: DockerHandle) -> None:
        proc = handle.proc
        if proc is None or proc.poll() is not None:
            return
        if handle.container:
            # Killing the CLI would leave the container running: kill the container itself. A
            # container the CLI has not created yet cannot be killed: retry until it exits.
            container = handle.container

            def kill() -> None:
                deadline = time.monotonic() + 30
                while proc.poll() is None and time.monotonic() < deadline:
                    self._docker("kill", container)
                    try:
                        proc.wait(0.3)
                    except subprocess.TimeoutExpired:
                        pass

            if self._docker("kill", container).returncode != 0 and proc.poll() is None:
                threading.Thread(target=kill, daemon=True).start()
        else:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _docker(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([self.docker, *args], capture_output=True, text=True,
                              stdin=subprocess.DEVNULL)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _safe(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_.-]", "_", text) or "job"

