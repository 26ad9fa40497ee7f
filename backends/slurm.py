"""The slurm backend: each job is one ``sbatch`` of a script rendered from ``slurm_job.sh.j2``.

SLURM shares the filesystem with the submitting machine, so jobs run in ``spec.workdir`` and their
outputs land in place. Resources become sbatch flags under the names Snakemake's SLURM executor
plugin uses (``_resource_flags``): ``--cpus-per-task`` from ``cpus_per_task`` or threads, ``--mem``
from ``mem_mb``, ``--time`` from ``runtime``, ``slurm_partition``, ``slurm_account``, ``nodes``,
``tasks``, ``constraint``, ``gres``, ``gpu``...; partition, account and qos fall back to the
settings, and extra flags come from ``sbatch_args`` (settings, a list) and ``slurm_extra`` (rule
resource, a string).

Polling costs the controller one ``squeue --json --states=all --me`` per poll interval for all our
jobs together (finished jobs stay listed for the cluster's MinJobAge). Jobs that have left even
that list are looked up in one ``sacct`` call for all of them; where accounting is off (no
slurmdbd) they are reported LOST, since how they ended cannot be known. ``self.queries`` counts
these calls.

Settings (``[backends.slurm]``): ``partition``, ``account``, ``qos``, ``sbatch_args``,
``poll_interval`` (s, default 2), ``max_jobs`` (capacity, default 500), ``slurm_conf`` (exported as
SLURM_CONF to every slurm command), ``bin_dir`` (where sbatch & co. live, default: PATH). Flags set
``latency_wait`` (--latency-wait: seconds a succeeded job's outputs may take to appear here, default
5), ``max_jobs_per_timespan`` (--max-jobs-per-timespan: ``N/TIME`` submissions) and ``verbose``
(print each job's sbatch flags).
"""

from __future__ import annotations

import collections
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
from typing import Any

import jinja2

from flowmake.backend import JobEvent, JobHandle, JobSpec, JobState
from flowmake.errors import BackendError

STATES = {
    "COMPLETED": JobState.SUCCEEDED,
    "FAILED": JobState.FAILED,
    "TIMEOUT": JobState.TIMEOUT,
    "DEADLINE": JobState.TIMEOUT,
    "OUT_OF_MEMORY": JobState.OOM,
    "CANCELLED": JobState.CANCELLED,
    "PREEMPTED": JobState.LOST,
    "NODE_FAIL": JobState.LOST,
    "BOOT_FAIL": JobState.LOST,
}
# Every other state (PENDING, RUNNING, COMPLETING, CONFIGURING, REQUEUED, SUSPENDED, ...) is "not
# finished yet".

_TEMPLATE = jinja2.Environment(
    # Beside this module: installed as package data (setup.cfg), found the same from a checkout.
    loader=jinja2.FileSystemLoader(os.path.dirname(os.path.abspath(__file__))), autoescape=False,
    keep_trailing_newline=True, undefined=jinja2.StrictUndefined,
)
_TEMPLATE.filters["shquote"] = shlex.quote


class SlurmHandle(JobHandle):
    def __init__(self, spec: JobSpec, native_id: str) -> None:
        super().__init__(spec, native_id)
        self.cancelled = False
        self.submitted = time.monotonic()


class SlurmBackend:
    name = "slurm"

    def __init__(self, *, settings: dict, cores: int) -> None:
        self.settings: dict[str, Any] = dict(settings)
        self.cores = cores
        self.interval = float(self.settings.get("poll_interval", 2.0))
        self.latency_wait = float(self.settings.get("latency_wait", 5))
        self._rate = _timespan_rate(self.settings.get("max_jobs_per_timespan"))
        self._submitted: collections.deque[float] = collections.deque()
        self._settling: list[tuple[float, JobEvent]] = []  # succeeded, outputs not visible yet
        self.queries = 0  # squeue/sacct calls made: the load we put on the controller
        self._jobs: dict[str, SlurmHandle] = {}
        self._last_query = -math.inf
        self._failing_since: float | None = None
        self._env = dict(os.environ)
        if self.settings.get("slurm_conf"):
            self._env["SLURM_CONF"] = str(self.settings["slurm_conf"])
        self._bin = str(self.settings.get("bin_dir", ""))

    # -- Backend protocol -------------------------------------------------------------------------

    def capacity(self) -> int:
        return int(self.settings.get("max_jobs", 500))

    def submit(self, spec: JobSpec) -> JobHandle:
        if spec.local:
            raise BackendError(f"localrule {spec.rule!r} sent to the slurm backend",
                               rule=spec.rule,
                               hint="this is a bug: localrules belong to the local backend")
        script = self.render(spec)
        log = os.path.join(spec.workdir, spec.log or f".flowmake/log/{spec.step_id}.log")
        os.makedirs(os.path.dirname(log), exist_ok=True)
        self._throttle()
        proc = self._cmd(["sbatch", "--parsable"], input=script)
        if proc.returncode != 0:
            raise BackendError(f"sbatch refused the job of rule {spec.rule!r}",
                               rule=spec.rule, details=[proc.stderr.strip()],
                               hint="check partition/account/qos and the rule's resources")
        job_id = proc.stdout.strip().split(";")[0]  # "id" or "id;cluster"
        if self.settings.get("verbose"):
            flags = " ".join(line[len("#SBATCH "):] for line in script.splitlines() if line.startswith("#SBATCH "))
            print(f"flowmake: sbatch {job_id} ({spec.step_id}): {flags}", file=sys.stderr)
        handle = SlurmHandle(spec, job_id)
        self._jobs[job_id] = handle
        return handle

    def poll(self, timeout: float) -> list[JobEvent]:
        deadline = time.monotonic() + max(0.0, timeout)
        first = True
        while True:
            now = time.monotonic()
            # Past the deadline only the first round may query: poll(0) still looks once.
            if not first and now >= deadline:
                return []
            first = False
            settled = self._settled(now)
            if settled:
                return settled
            if self._jobs and now >= self._last_query + self.interval:
                events = self._settle(self._query())
                if events:
                    return events
            now = time.monotonic()
            next_query = self._last_query + self.interval if self._jobs else deadline
            if self._settling:
                next_query = min(next_query, now + 0.1)
            time.sleep(max(0.0, min(next_query, deadline) - now))

    def _throttle(self) -> None:
        """--max-jobs-per-timespan: at most N submissions in any window of T seconds."""
        if self._rate is None:
            return
        n, window = self._rate
        now = time.monotonic()
        while self._submitted and self._submitted[0] <= now - window:
            self._submitted.popleft()
        if len(self._submitted) >= n:
            time.sleep(max(0.0, self._submitted[0] + window - now))
            self._submitted.popleft()
        self._submitted.append(time.monotonic())

    def _settle(self, events: list[JobEvent]) -> list[JobEvent]:
        """--latency-wait: a job that succeeded is reported once its outputs are visible here (a
        shared filesystem may show them later), or after the wait, when the scheduler names the
        missing ones. Other events go through at once."""
        out = []
        for ev in events:
            if ev.state is JobState.SUCCEEDED and self.latency_wait > 0 and not _outputs_visible(ev.handle.spec):
                self._settling.append((time.monotonic() + self.latency_wait, ev))
            else:
                out.append(ev)
        return out

    def _settled(self, now: float) -> list[JobEvent]:
        if not self._settling:
            return []
        ready = [ev for until, ev in self._settling if now >= until or _outputs_visible(ev.handle.spec)]
        self._settling = [(u, ev) for u, ev in self._settling if ev not in ready]
        return ready

    def cancel(self, handle: JobHandle) -> None:
        if not isinstance(handle, SlurmHandle):
            raise BackendError(f"not a slurm job: {handle!r}")
        if handle.native_id in self._jobs:
            handle.cancelled = True
            self._cmd(["scancel", handle.native_id])

    def close(self) -> None:
        if self._jobs:
            for h in self._jobs.values():
                h.cancelled = True
            self._cmd(["scancel", *self._jobs])  # one call for all of them
            self._jobs.clear()

    # -- rendering --------------------------------------------------------------------------------

    def render(self, spec: JobSpec) -> str:
        """The job script sbatch gets (public so ``flowmake`` can show it in a dry run)."""
        res = spec.resources
        log = spec.log or f".flowmake/log/{spec.step_id}.log"
        for value in (spec.workdir, log):
            if '"' in value or "\n" in value:
                raise BackendError(f"path not usable in a SLURM job script: {value!r}",
                                   rule=spec.rule)
        extra = [str(a) for a in self.settings.get("sbatch_args", ())]
        extra += _extra_lines(str(res.get("slurm_extra", "") or ""))
        return _TEMPLATE.get_template("slurm_job.sh.j2").render(
            step_id=spec.step_id, rule=spec.rule, attempt=spec.attempt,
            name=re.sub(r"[^A-Za-z0-9_.-]", "_", spec.rule)[:64] or "flowmake",
            workdir=spec.workdir, log=log, flags=_resource_flags(spec, self.settings),
            extra=extra, env=spec.env, command=spec.command,
        )

    # -- polling ----------------------------------------------------------------------------------

    def _query(self) -> list[JobEvent]:
        """One squeue call for all our jobs (plus one sacct for any that squeue forgot)."""
        self._last_query = time.monotonic()
        self.queries += 1
        proc = self._cmd(["squeue", "--json", "--me", "--states=all"])
        try:
            listed = {str(j["job_id"]): j for j in json.loads(proc.stdout)["jobs"]}
        except (ValueError, KeyError, TypeError):
            self._controller_trouble(proc)
            return []
        self._failing_since = None
        events = []
        gone = []
        for job_id, handle in list(self._jobs.items()):
            info = listed.get(job_id)
            if info is None:
                gone.append(job_id)
                continue
            event = self._event(handle, info)
            if event is not None:
                events.append(event)
                del self._jobs[job_id]
        if gone:
            events += self._lookup_gone(gone)
        return events

    def _event(self, handle: SlurmHandle, info: dict[str, Any]) -> JobEvent | None:
        state = str(info.get("job_state", "")).split(",")[0].split(" ")[0]
        mapped = STATES.get(state)
        if mapped is None:
            return None
        if handle.cancelled:
            mapped = JobState.CANCELLED
        code = _exit_code(info.get("exit_code"))
        start, end = info.get("start_time") or 0, info.get("end_time") or 0
        runtime = float(end - start) if start and end and end >= start else None
        reason = info.get("state_reason", "")
        message = "" if mapped is JobState.SUCCEEDED else f"slurm: {state} ({reason})"
        return JobEvent(handle, mapped, exit_code=code, runtime_s=runtime,
                        host=str(info.get("nodes") or ""), message=message)

    def _lookup_gone(self, ids: list[str]) -> list[JobEvent]:
        self.queries += 1
        proc = self._cmd(["sacct", "-X", "-n", "-P", "-o",
                          "JobID,State,ExitCode,NodeList,ElapsedRaw", "-j", ",".join(ids)])
        found: dict[str, list[str]] = {}
        if proc.returncode == 0:
            for line in proc.stdout.splitlines():
                fields = line.split("|")
                if len(fields) == 5:
                    found[fields[0]] = fields
        events = []
        for job_id in ids:
            handle = self._jobs[job_id]
            if job_id in found:
                _, state, exit_code, nodes, elapsed = found[job_id]
                state = state.split()[0]
                mapped = STATES.get(state)
                if mapped is None:
                    continue  # sacct still has it running: squeue will show it again
                code, _, sig = exit_code.partition(":")
                events.append(JobEvent(
                    handle, JobState.CANCELLED if handle.cancelled else mapped,
                    exit_code=128 + int(sig) if sig.isdigit() and int(sig) else _int(code),
                    runtime_s=float(elapsed) if elapsed.isdigit() else None, host=nodes,
                    message="" if mapped is JobState.SUCCEEDED else f"slurm: {state}"))
            elif time.monotonic() - handle.submitted < max(5.0, 3 * self.interval):
                continue  # just submitted: squeue may not list it yet
            else:
                events.append(JobEvent(
                    handle, JobState.CANCELLED if handle.cancelled else JobState.LOST,
                    message="job left the SLURM queue and accounting (sacct) does not know how it "
                            "ended"))
            del self._jobs[job_id]
        return events

    def _controller_trouble(self, proc: subprocess.CompletedProcess) -> None:
        # A controller restarting or busy is normal for a while; only a long outage is an error.
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        if now - self._failing_since > float(self.settings.get("controller_timeout", 600)):
            raise BackendError("squeue keeps failing: the SLURM controller is unreachable",
                               details=[(proc.stderr or proc.stdout).strip()[-500:]])

    def _cmd(self, args: list[str], input: str | None = None) -> subprocess.CompletedProcess:
        exe = os.path.join(self._bin, args[0]) if self._bin else args[0]
        try:
            # surrogateescape: a file name that is not UTF-8 reaches the job script as its bytes
            return subprocess.run([exe, *args[1:]], input=input, capture_output=True,
                                  encoding="utf-8", errors="surrogateescape", env=self._env,
                                  timeout=120)
        except FileNotFoundError:
            raise BackendError(f"{args[0]} not found: is SLURM installed here?",
                               hint="set bin_dir in [backends.slurm]") from None
        except subprocess.TimeoutExpired as exc:
            return subprocess.CompletedProcess(exc.cmd, 1, "", f"{args[0]} timed out")


def _exit_code(raw: Any) -> int | None:
    # squeue --json gives a wait status (22.05: an int, 3 << 8 for "exit 3") or, in later
    # versions, {"status": ..., "return_code": ..., "signal": {"signal_id": ...}}.
    if isinstance(raw, dict):
        sig = (raw.get("signal") or {}).get("signal_id")
        if isinstance(sig, int) and sig:
            return 128 + sig
        rc = raw.get("return_code")
        return rc if isinstance(rc, int) else None
    if isinstance(raw, int):
        return 128 + (raw & 0x7F) if raw & 0x7F else (raw >> 8) & 0xFF
    return None


def _int(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def _flag(value: Any, what: str = "partition/account/qos name", pattern: str = r"[A-Za-z0-9_.,:@+-]+") -> str | None:
    if value is None or value == "":
        return None
    text = str(value)
    if not re.fullmatch(pattern, text):
        raise BackendError(f"unusable SLURM {what} {text!r}")
    return text


def _count(res: Any, name: str) -> int | None:
    value = res.get(name)
    if value is None or value == "" or value is False:
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise BackendError(f"resource {name} must be a whole number, got {value!r}") from None
    if number < 0:
        raise BackendError(f"resource {name} must not be negative, got {number}")
    return number


_GRES = r"[A-Za-z0-9_]+(:[A-Za-z0-9_.]+)?:\d+"
_CONSTRAINT = r"[A-Za-z0-9_.,:@+&|\[\]*!-]+"


def _resource_flags(spec: JobSpec, settings: dict[str, Any]) -> list[str]:
    """The rule's resources as sbatch flags, named as Snakemake's SLURM executor plugin names them:
    ``slurm_partition``, ``slurm_account``, ``slurm_qos``/``qos``, ``runtime`` (minutes),
    ``mem_mb`` (or ``mem_mb_per_cpu``), ``cpus_per_task`` (else threads; ``cpus_per_gpu`` for GPU
    jobs), ``nodes``, ``tasks`` (``tasks_per_gpu``), ``constraint``, ``gres``, ``gpu`` with
    ``gpu_model``, ``clusters``; ``slurm_extra`` is added verbatim (see ``render``)."""
    res = spec.resources
    flags = []
    gres, gpus = res.get("gres"), _count(res, "gpu")
    if gres and gpus:
        raise BackendError("resources gres and gpu are both set: set only one", rule=spec.rule)
    if gres:
        flags.append(f"--gres={_flag(gres, 'gres (expected NAME:N or NAME:TYPE:N)', _GRES)}")
    model = _flag(res.get("gpu_model"), "gpu_model", r"[A-Za-z0-9_.]+")
    if model and not gpus:
        raise BackendError("resource gpu_model is set, but gpu (how many) is not", rule=spec.rule)
    if gpus:
        flags.append(f"--gpus={model + ':' if model else ''}{gpus}")
    gpu_job = bool(gpus) or "gpu" in str(gres or "")
    per_task = _count(res, "cpus_per_gpu" if gpu_job else "cpus_per_task")
    if gpu_job and per_task:
        flags.append(f"--cpus-per-gpu={per_task}")
    elif not gpu_job:
        flags.append(f"--cpus-per-task={per_task or max(1, int(res.threads))}")
    tasks = _count(res, "tasks")
    if gpu_job:
        per_gpu = _count(res, "tasks_per_gpu")
        per_gpu = per_gpu if per_gpu is not None else tasks or 1
        if per_gpu >= 1:
            flags.append(f"--ntasks-per-gpu={per_gpu}")
    else:
        flags.append(f"--ntasks={tasks or 1}")
    flags.append(f"--nodes={_count(res, 'nodes') or 1}")
    per_cpu = _count(res, "mem_mb_per_cpu")
    if per_cpu:
        flags.append(f"--mem-per-cpu={per_cpu}M")
    elif res.mem_mb:
        flags.append(f"--mem={int(math.ceil(res.mem_mb))}M")
    if res.runtime_min:
        flags.append(f"--time={int(math.ceil(res.runtime_min))}")
    for flag, value in (("partition", res.get("slurm_partition") or settings.get("partition")),
                        ("account", res.get("slurm_account") or settings.get("account")),
                        ("qos", res.get("slurm_qos") or res.get("qos") or settings.get("qos"))):
        text = _flag(value)
        if text:
            flags.append(f"--{flag}={text}")
    constraint = _flag(res.get("constraint"), "constraint", _CONSTRAINT)
    if constraint:
        flags.append(f"--constraint={constraint}")
    clusters = _flag(res.get("clusters") or res.get("cluster") or res.get("slurm_cluster"), "cluster name")
    if clusters:
        flags.append(f"--clusters={clusters}")
    return flags


def _extra_lines(text: str) -> list[str]:
    """``slurm_extra`` as #SBATCH lines: each flag with the words that follow it (``--mail-user x``)."""
    lines: list[str] = []
    for word in shlex.split(text):
        if "\n" in word:
            raise BackendError(f"slurm_extra holds a newline: {text!r}")
        if word.startswith("-") or not lines:
            lines.append(word)
        else:
            lines[-1] += " " + shlex.quote(word)
    return lines


def _outputs_visible(spec: JobSpec) -> bool:
    return all(os.path.exists(os.path.join(spec.workdir, o)) for o in spec.outputs)


def _timespan_rate(text: Any) -> tuple[int, float] | None:
    """``100/1s`` → (100, 1.0): Snakemake's --max-jobs-per-timespan (units ms, s, m, h)."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d*\.?\d+)?\s*(ms|s|m|h)?\s*", str(text))
    if m is None or int(m.group(1)) < 1:
        raise BackendError(f"--max-jobs-per-timespan expects N/TIME such as 100/1s, got {text!r}")
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[m.group(3) or "s"]
    return int(m.group(1)), float(m.group(2) or 1) * scale
