"""The ssh backend: jobs run on a list of hosts over SSH (paramiko), each with a number of slots.

One connection per host carries every channel (exec, SFTP) of that host's jobs; each job is driven
by its own worker thread, so a slow host never blocks ``poll``. Host keys are always verified
against the configured known_hosts file (paramiko's RejectPolicy): an unknown or changed key is a
``BackendError`` naming the host and the file, never accepted.

Each job is one remote command (``ssh_staging.launch_command``): build the job dir, run the job
under ``setsid`` (so ``cancel`` can kill its whole process group remotely), digest the outputs.
Staging adds SFTP transfers on one SFTP channel per job, and nothing else.

With ``shared_fs = true`` a job runs in ``spec.workdir`` on the host, which must see the same files.
Without it, each host keeps a content-addressed input area ``<remote_root>/cas/<digest>``: inputs
are sent by SFTP only when the host does not have them yet (known from earlier jobs of this
backend, else checked with one SFTP stat), hard-linked into a per-job directory
``<remote_root>/jobs/<id>`` under their relative paths, and the job runs there; finished job dirs
are removed in the background by the host's next job, or by ``close``. Its outputs (files
and directories) come back by SFTP under temporary names in the workdir, are checked against a
digest computed on the host (blake3 if the host's python3 has it, else sha256; the host needs
python3) and renamed into place. The log always comes back. CAS files are made read-only; they are
hard links, so a job that writes into its inputs as root would alter the cached copy.

A host that cannot be reached, or whose connection drops, is marked down for the rest of the run
and its jobs are reported LOST (the scheduler reruns them elsewhere). A job's own non-zero exit is
FAILED. When every host is down, ``capacity()`` is 0 and ``submit`` raises ``BackendError``.
``spot.py`` subclasses this backend: its hosts come and go (``_dispatch``, ``_start_job``, ...).

Settings (``[backends.ssh]``): ``hosts`` ["user@host:port", ...]; ``slots`` int or
{host: int} (default 1; keep it under the server's MaxSessions/2); ``identity_file``;
``known_hosts`` (default ~/.ssh/known_hosts); ``shared_fs`` (default true); ``remote_root``
(default ".flowmake-remote" in the login's home); ``connect_timeout`` (10 s); ``keepalive`` (15 s);
``python`` (the host's interpreter for digests, default "python3"); ``keep_remote_jobs`` (false).
"""

from __future__ import annotations

import collections
import getpass
import os
import queue
import shlex
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paramiko

from flowmake.backend import INLINE_MAX, JobEvent, JobHandle, JobSpec, JobState, drain
from flowmake.errors import BackendError

from . import ssh_dataplane, ssh_staging as staging


class HostDown(Exception):
    """The host or its connection failed: the job is LOST, not FAILED."""


class SshHost:
    def __init__(self, spec: str, slots: int, shared_fs: bool) -> None:
        self.spec = spec
        user, _, rest = spec.rpartition("@")
        if rest.startswith("["):  # [v6 address]:port
            host, _, port = rest[1:].partition("]")
            port = port.lstrip(":")
        else:
            host, _, port = rest.partition(":") if rest.count(":") == 1 else (rest, "", "")
        self.user = user or getpass.getuser()
        self.address = host
        self.port = int(port or 22)
        self.label = self.address if self.port == 22 else f"{self.address}:{self.port}"
        self.slots = slots
        self.shared_fs = shared_fs
        self.running = 0
        self.down: str | None = None  # why, once down
        self.client: paramiko.SSHClient | None = None
        self.cas_known: set[str] = set()
        self.stale_dirs: list[str] = []  # finished job dirs, removed lazily
        self.cas_locks: dict[str, threading.Lock] = collections.defaultdict(threading.Lock)

    @property
    def transport(self) -> paramiko.Transport:
        t = self.client.get_transport() if self.client else None
        if t is None or not t.is_active():
            raise HostDown(f"connection to {self.label} lost")
        return t


class SshHandle(JobHandle):
    def __init__(self, spec: JobSpec) -> None:
        super().__init__(spec, "")
        self.host: SshHost | None = None
        self.cancelled = False
        self.pgid: int | None = None


class SshBackend(ssh_dataplane.DataPlaneUse):
    name = "ssh"

    def __init__(self, *, settings: dict, cores: int) -> None:
        self.settings: dict[str, Any] = dict(settings)
        specs = self.settings.get("hosts") or []
        if isinstance(specs, str) or not specs:
            raise BackendError("ssh backend needs a list of hosts",
                               hint='set hosts = ["user@host:port", ...] in [backends.ssh]')
        slots = self.settings.get("slots", 1)
        shared = self.settings.get("shared_fs", True)
        self.hosts = [SshHost(s, int(_per_host(slots, s, 1)), bool(_per_host(shared, s, True)))
                      for s in specs]
        self._setup(str(self.settings.get("known_hosts", "~/.ssh/known_hosts")))

    def _setup(self, known_hosts: str | None) -> None:
        """What every SSH-driven backend keeps (the spot backend's instances are hosts too)."""
        self.known_hosts = os.path.expanduser(known_hosts) if known_hosts else None
        identity = self.settings.get("identity_file")
        self.identity = os.path.expanduser(str(identity)) if identity else None
        self.remote_root = str(self.settings.get("remote_root", ".flowmake-remote")).rstrip("/")
        self.timeout = float(self.settings.get("connect_timeout", 10))
        self.python = str(self.settings.get("python", "python3"))
        # Observable counters: files sent into a host's CAS, files fetched back.
        self.uploads = 0
        self.upload_bytes = 0
        self.downloads = 0
        self._connected = False
        self._lock = threading.RLock()
        self._events: queue.Queue[JobEvent] = queue.Queue()
        self._pending: collections.deque[SshHandle] = collections.deque()
        self._running: set[SshHandle] = set()
        self._threads: list[threading.Thread] = []
        self._seq = 0

    # -- Backend protocol -------------------------------------------------------------------------

    def capacity(self) -> int:
        return sum(h.slots for h in self.hosts if not h.down)

    def submit(self, spec: JobSpec) -> JobHandle:
        if spec.local:
            raise BackendError(f"localrule {spec.rule!r} sent to the ssh backend", rule=spec.rule,
                               hint="this is a bug: localrules belong to the local backend")
        self._connect_all()
        handle = SshHandle(spec)
        with self._lock:
            self._seq += 1
            handle.native_id = f"ssh-{self._seq}"
            if not any(not h.down for h in self.hosts):
                raise BackendError("every ssh host is down", details=self._down_reasons())
            self._pending.append(handle)
            self._dispatch()
        return handle

    def poll(self, timeout: float) -> list[JobEvent]:
        return drain(self._events, timeout)

    def cancel(self, handle: JobHandle) -> None:
        if not isinstance(handle, SshHandle):
            raise BackendError(f"not an ssh job: {handle!r}")
        with self._lock:
            handle.cancelled = True
            if handle in self._pending:
                self._pending.remove(handle)
                self._events.put(JobEvent(handle, JobState.CANCELLED))
                return
        self._kill_remote(handle)

    def close(self) -> None:
        with self._lock:
            while self._pending:
                h = self._pending.popleft()
                self._events.put(JobEvent(h, JobState.CANCELLED))
            running = list(self._running)
        for h in running:
            h.cancelled = True
            self._kill_remote(h)
        deadline = time.monotonic() + 15
        for t in list(self._threads):
            t.join(max(0.0, deadline - time.monotonic()))
        for host in self.hosts:
            if host.client is not None and host.stale_dirs and _alive(host):
                try:
                    staging.run(host.client, "rm -rf " + " ".join(map(_q, host.stale_dirs)),
                                self.timeout)
                except Exception:  # best effort: whatever is left in jobs/ is garbage
                    pass
                host.stale_dirs = []
            if host.client is not None:
                host.client.close()
                host.client = None

    # -- hosts ------------------------------------------------------------------------------------

    def _connect_all(self) -> None:
        # Lazily on the first submit (a dry run never connects), all hosts in parallel.
        with self._lock:
            if self._connected:
                return
            errors: list[BackendError] = []
            threads = [threading.Thread(target=self._connect, args=(h, errors)) for h in self.hosts]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if errors:
                for h in self.hosts:
                    if h.client is not None:
                        h.client.close()
                raise errors[0]
            self._connected = True

    def _connect(self, host: SshHost, errors: list[BackendError]) -> None:
        client = paramiko.SSHClient()
        refused = self._load_host_keys(client, host)
        if refused is not None:
            errors.append(refused)
            return
        # Never trust on first use: a key that is not in the file is refused.
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            client.connect(host.address, host.port, host.user, key_filename=self.identity,
                           look_for_keys=self.identity is None, allow_agent=self.identity is None,
                           timeout=self.timeout, banner_timeout=self.timeout,
                           auth_timeout=self.timeout)
            t = client.get_transport()
            if t is not None:
                t.set_keepalive(int(self.settings.get("keepalive", 15)))
            mkdir = f"mkdir -p {_q(self.remote_root)}/cas {_q(self.remote_root)}/jobs"
            if not host.shared_fs:
                staging.run(client, mkdir, self.timeout)
            host.client = client
        except paramiko.BadHostKeyException as exc:
            errors.append(BackendError(
                f"host key of {host.label} does not match {self._key_source}",
                details=[f"got {exc.key.get_name()} {exc.key.get_fingerprint().hex()}"],
                hint="if the host was really reinstalled, verify its new key and replace its line "
                     "in that file; flowmake never accepts a changed key"))
        except paramiko.AuthenticationException as exc:
            errors.append(BackendError(f"ssh login to {host.spec} failed: {exc}",
                                       hint="check identity_file and the user name"))
        except paramiko.SSHException as exc:
            if "known_hosts" in str(exc):
                errors.append(BackendError(
                    f"host key of {host.label} is not in {self._key_source}",
                    hint="add the host's key to that file after checking its fingerprint "
                         "(ssh-keyscan); flowmake never accepts unknown keys"))
            else:
                host.down = f"{host.label}: {exc}"
        except (OSError, EOFError) as exc:
            host.down = f"{host.label}: cannot connect: {exc}"

    @property
    def _key_source(self) -> str:
        return f"known_hosts file {self.known_hosts}"

    def _load_host_keys(self, client: paramiko.SSHClient, host: SshHost) -> BackendError | None:
        """The keys ``host`` may present; the error that makes connecting pointless."""
        try:
            client.load_host_keys(str(self.known_hosts))
        except OSError as exc:
            return BackendError(f"cannot read known_hosts file {self.known_hosts}: {exc}",
                                hint=f"set known_hosts in [backends.{self.name}]")
        return None

    def _down_reasons(self) -> list[str]:
        return [h.down for h in self.hosts if h.down]

    def _mark_down(self, host: SshHost, reason: str) -> None:
        with self._lock:
            if host.down is None:
                host.down = reason
                if host.client is not None:
                    host.client.close()

    def _dispatch(self) -> None:
        """Start pending jobs on hosts with free slots (caller holds the lock)."""
        while self._pending:
            free = [h for h in self.hosts if not h.down and h.running < h.slots]
            if not free:
                if all(h.down for h in self.hosts):
                    while self._pending:  # nowhere left to run: the scheduler decides
                        h = self._pending.popleft()
                        self._events.put(JobEvent(h, JobState.LOST,
                                                  message="every ssh host is down"))
                return
            host = min(free, key=lambda h: h.running / h.slots)
            self._start_job(self._pending.popleft(), host)

    def _start_job(self, handle: SshHandle, host: SshHost) -> None:
        """Run ``handle`` on ``host`` in its own thread (caller holds the lock)."""
        handle.host = host
        host.running += 1
        self._running.add(handle)
        t = threading.Thread(target=self._job_thread, args=(handle,), daemon=True,
                             name=f"{self.name}-{handle.native_id}")
        self._threads = [x for x in self._threads if x.is_alive()] + [t]
        t.start()

    # -- one job ----------------------------------------------------------------------------------

    def _job_thread(self, handle: SshHandle) -> None:
        host = handle.host
        if host is None:  # dispatched jobs always have a host
            return
        try:
            event = self._execute(handle, host)
        except HostDown as exc:
            self._mark_down(host, str(exc))
            event = JobEvent(handle, JobState.LOST, host=host.label, message=str(exc))
        except staging.TransferError as exc:  # the network's fault, not the job's: rerun it
            event = JobEvent(handle, JobState.LOST, host=host.label, message=str(exc))
        except Exception as exc:
            # On a dead connection any error is the host's; on a live one it is the job's
            # (a remote error such as a full disk, or a bug here): FAILED, with the reason.
            # EOFError is the connection ending, even when paramiko has not yet marked the
            # transport inactive.
            if isinstance(exc, EOFError) or not _alive(host):
                self._mark_down(host, f"{host.label}: {exc}")
                event = JobEvent(handle, JobState.LOST, host=host.label, message=str(exc))
            else:
                event = JobEvent(handle, JobState.FAILED, host=host.label,
                                 message=f"{type(exc).__name__}: {exc}")
        with self._lock:
            host.running -= 1
            self._running.discard(handle)
            self._events.put(self._job_ended(handle, host, event))
            self._dispatch()

    def _job_ended(self, handle: SshHandle, host: SshHost, event: JobEvent) -> JobEvent:
        """A job left ``host`` (caller holds the lock): for backends that account more per host."""
        return event

    def _execute(self, handle: SshHandle, host: SshHost) -> JobEvent:
        spec = handle.spec
        if handle.cancelled:
            return JobEvent(handle, JobState.CANCELLED, host=host.label)
        workdir = Path(spec.workdir)
        log = spec.log or f".flowmake/log/{spec.step_id}.log"
        outputs = list(dict.fromkeys(o.rstrip("/") for o in [*spec.outputs, *spec.directories]))
        if host.shared_fs:
            launch = staging.Launch(rundir=spec.workdir, log=log)
            result = self._run(handle, host, launch)
            message = result.message
        else:
            missing = [p for p, _ in spec.inputs if not (workdir / p).exists()]
            if missing:
                return JobEvent(handle, JobState.FAILED, host=host.label,
                                message="missing input: " + ", ".join(missing))
            rundir = f"{self.remote_root}/jobs/{handle.native_id}-{uuid.uuid4().hex[:8]}"
            sftp = paramiko.SFTPClient.from_transport(host.transport)
            if sftp is None:
                raise HostDown(f"{host.label}: cannot open SFTP")
            try:
                files = self._stage_in(host, sftp, spec)
                # Setup, job and output digests in one remote command: one round trip per job.
                with self._lock:
                    stale, host.stale_dirs = host.stale_dirs, []
                launch = staging.Launch(
                    rundir=rundir, log=log, stale=stale,
                    links=staging.link_commands(f"{self.remote_root}/cas", rundir, files, outputs),
                    manifest=staging.manifest_command(self.python, outputs) if outputs else "")
                result = self._run(handle, host, launch)
                message = result.message
                if result.launched:
                    staging.fetch_log(sftp, rundir, log, workdir)
                if result.manifest is not None and not handle.cancelled and not result.timed_out:
                    if result.manifest["missing"]:
                        message = "missing output: " + ", ".join(result.manifest["missing"])
                    else:
                        n = self._fetch_outputs(host, sftp, spec, rundir, outputs, result.manifest)
                        with self._lock:
                            self.downloads += n
            finally:
                sftp.close()
                if not self.settings.get("keep_remote_jobs"):
                    with self._lock:
                        host.stale_dirs.append(rundir)  # removed by the host's next job, or close()
        code = result.code
        if handle.cancelled:
            state = JobState.CANCELLED
        elif result.timed_out:
            state, message = JobState.TIMEOUT, f"killed after {spec.resources.runtime_min} min"
        elif code == 0 and not message:
            state = JobState.SUCCEEDED
        else:
            state = JobState.FAILED
        return JobEvent(handle, state, exit_code=code, runtime_s=result.runtime, host=host.label,
                        message=message)

    def _run(self, handle: SshHandle, host: SshHost, launch: staging.Launch) -> staging.Result:
        """Run the job and wait for it. HostDown when the connection dies."""
        spec = handle.spec
        script = "set -euo pipefail\n" + "".join(
            f"export {k}={shlex.quote(v)}\n" for k, v in spec.env) + spec.command + "\n"
        result = staging.Result()
        command, stdin = staging.launch_command(launch, script), b""
        if len(os.fsencode(command)) > INLINE_MAX:
            command, stdin = staging.launch_via_stdin(launch, script)
        try:
            chan = host.transport.open_session(timeout=self.timeout)
            chan.exec_command(os.fsencode(command))  # bytes: a name that is not UTF-8 stays as it is
            if stdin:  # the host's cat reads all of it before the job starts
                chan.sendall(stdin)
                chan.shutdown_write()
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise HostDown(f"{host.label}: {exc}") from exc
        limit = spec.resources.runtime_min
        started = time.monotonic()
        out, err = bytearray(), bytearray()
        while True:
            done = chan.status_event.wait(0.1)
            # Keep reading while waiting: a large manifest must not fill the channel's window.
            while chan.recv_ready():
                out += chan.recv(1 << 16)
            while chan.recv_stderr_ready():
                err += chan.recv_stderr(1 << 16)
            if handle.pgid is None and b"\n" in out:
                handle.pgid = staging.parse_pid(out)
                started = time.monotonic()
                if handle.cancelled:
                    self._kill_remote(handle)
            if result.runtime is None and staging.MARK in out:
                result.runtime = time.monotonic() - started
            if done:
                break
            if not _alive(host):
                raise HostDown(f"connection to {host.label} lost while the job ran")
            if limit and not result.timed_out and time.monotonic() - started > limit * 60:
                result.timed_out = True
                self._kill_remote(handle)
        staging.drain(chan, out, err, self.timeout)
        if result.runtime is None:
            result.runtime = time.monotonic() - started
        code: int | None = chan.exit_status
        chan.close()
        if code == -1:  # no exit status: the server went away (or killed our shell)
            if not _alive(host):
                raise HostDown(f"connection to {host.label} lost while the job ran")
            code = None
        staging.interpret(result, code, bytes(out), bytes(err))
        if handle.pgid is None:
            handle.pgid = staging.parse_pid(out)
        return result

    def _kill_remote(self, handle: SshHandle) -> None:
        host, pgid = handle.host, handle.pgid
        if host is None or pgid is None or host.down or host.client is None:
            return
        # TERM, a short grace, then KILL for the whole group; in a thread so cancel() returns.
        cmd = (f"kill -TERM -- -{pgid} 2>/dev/null; for i in 1 2 3 4 5 6 7 8 9 10; do "
               f"kill -0 -- -{pgid} 2>/dev/null || exit 0; sleep 0.2; done; kill -KILL -- -{pgid}")
        client = host.client

        def kill() -> None:
            try:
                staging.run(client, cmd, self.timeout)
            except Exception:  # host gone: the job thread reports LOST
                pass

        threading.Thread(target=kill, daemon=True).start()

    # -- staging ----------------------------------------------------------------------------------

    def _stage_in(self, host: SshHost, sftp: paramiko.SFTPClient, spec: JobSpec
                  ) -> list[tuple[str, str, Path]]:
        """Send the host what its CAS lacks; the input files as (path, digest, local path)."""
        files = self._plane_fetch(host, staging.expand_inputs(Path(spec.workdir), spec.inputs))
        for _rel, digest, local in files:
            if digest in host.cas_known:
                continue
            # Per digest: two jobs needing the same input send it once.
            with host.cas_locks[digest]:
                if digest in host.cas_known:
                    continue
                sent = staging.ensure_cas(sftp, f"{self.remote_root}/cas", digest, local)
                host.cas_known.add(digest)
                if sent:
                    with self._lock:
                        self.uploads += 1
                        self.upload_bytes += local.stat().st_size
        return files


def _alive(host: SshHost) -> bool:
    t = host.client.get_transport() if host.client is not None else None
    return t is not None and t.is_active()


def _per_host(value: Any, spec: str, default: Any) -> Any:
    """A setting that is either one value for all hosts or a {host: value} table."""
    if isinstance(value, dict):
        host = spec.rpartition("@")[2]
        for key in (spec, host, host.rsplit(":", 1)[0]):
            if key in value:
                return value[key]
        return value.get("default", default)
    return value


_q = staging.q
