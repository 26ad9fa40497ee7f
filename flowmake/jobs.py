"""Step → JobSpec: what a backend needs to run one step, and the output housekeeping around it.

Shell rules run their rendered command. ``run:`` and ``script:`` rules become a call to
``python -m flowmake.jobrun`` that loads the same rule file in a fresh process and executes the block
for this step's wildcards, so every backend runs every kind of rule the same way.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import stat
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from flowmake.backend import JobSpec, Resources
from flowmake.graph import Step
from flowmake.journal import hostname
from flowmake.namedlist import Flag
from flowmake.planner import with_current_key
from flowmake.records import Trace
from flowmake.rules import RuleKind

if TYPE_CHECKING:
    from flowmake.planner import StepPlan
    from flowmake.store import Store


@dataclass(frozen=True)
class JobContext:
    """What every job of one invocation shares."""

    workdir: str
    flowfile: str
    config_overrides: Mapping[str, Any] = field(default_factory=dict)
    configfiles: Sequence[str] = ()
    python: str = sys.executable
    cores: int = 1


def _with_capped_threads(inst: Any, cores: int, render: Any) -> str:
    """Render with ``{threads}`` capped at the cores of this run, as Snakemake does.

    Only the command sent to the backend sees the cap; the step key is computed from the rule's own
    threads, so running with another ``-c`` never makes a step out of date.
    """
    declared = inst.threads
    inst.threads = min(int(declared), max(1, cores))
    try:
        return str(render())
    finally:
        inst.threads = declared


def job_command(step: Step, ctx: JobContext, attempt: int = 1) -> str:
    inst = step.instance
    if inst is None:  # pragma: no cover - the scheduler never submits a pending step
        raise RuntimeError(f"step {step.id} is not instantiated")
    if step.rule.kind is RuleKind.SHELL:
        return _with_capped_threads(inst, ctx.cores, inst.command)
    if step.rule.kind is RuleKind.NONE:
        return ":"
    bindings = step.bindings
    raw = {n: bindings.raw(n) for n in bindings} if bindings else {}  # type: ignore[attr-defined]
    payload = {
        "flowfile": ctx.flowfile,
        "workdir": ctx.workdir,
        "config": dict(ctx.config_overrides),
        "configfiles": list(ctx.configfiles),
        "rule": step.rule.name,
        "wildcards": raw,
        "outputs": list(step.outputs),
        "cores": ctx.cores,
        "attempt": attempt,
    }
    return f"{shlex.quote(ctx.python)} -m flowmake.jobrun {shlex.quote(json.dumps(payload))}"


def log_path(step: Step) -> str:
    """Where the backend sends the job's stdout and stderr (the rule's own ``log:`` is the command's)."""
    safe = "".join(c if c.isalnum() or c in "-_.=" else "_" for c in step.id)
    if len(safe) > 150:
        import hashlib

        safe = safe[:100] + "-" + hashlib.sha1(os.fsencode(step.id)).hexdigest()[:16]
    return f".flowmake/logs/{step.rule.name}/{safe}.log"


def job_resources(step: Step, cores: int, mem_scale: float = 1.0) -> Resources:
    inst = step.instance
    res = dict(inst.resources.items()) if inst is not None and hasattr(inst.resources, "items") else {}
    mem = res.pop("mem_mb", None)
    if isinstance(mem, (int, float)):
        mem = int(mem * mem_scale)
    runtime = res.pop("runtime", None)
    threads = min(int(inst.threads) if inst is not None else 1, max(1, cores))
    return Resources(
        threads=threads,
        mem_mb=mem if isinstance(mem, int) else None,
        runtime_min=int(runtime) if isinstance(runtime, (int, float)) else None,
        extra=tuple(sorted((k, v) for k, v in res.items() if not k.startswith("_"))),
    )


# Every local job carries its flowmake's id in its environment: if that flowmake dies before it has
# recorded the job's process group, the run that takes the step over finds the job by it (peers.py).
RUN_ENV = "FLOWMAKE_RUN"


def run_id(pid: int | None = None, host: str | None = None) -> str:
    return f"{host or hostname()} {os.getpid() if pid is None else pid}"


def job_spec(step: Step, ctx: JobContext, *, attempt: int, inputs: tuple[tuple[str, str], ...],
             image: str | None, local: bool, mem_scale: float = 1.0, command: str | None = None) -> JobSpec:
    inst = step.instance
    directories = tuple(o for o in step.outputs if inst is not None and Flag.DIRECTORY in inst.flags.get(o, ()))
    return JobSpec(
        step_id=step.id,
        rule=step.rule.name,
        command=job_command(step, ctx, attempt) if command is None else command,
        workdir=ctx.workdir,
        inputs=inputs,
        outputs=step.outputs,
        directories=directories,
        log=log_path(step),
        resources=job_resources(step, ctx.cores, mem_scale),
        image=image,
        attempt=attempt,
        local=local,
        env=((RUN_ENV, run_id()),) if local else (),
    )


# ---- outputs around a job ---------------------------------------------------------------------


def remove_path(path: str) -> None:
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass
    except PermissionError:
        _make_writable(path)
        remove_path(path)


def _make_writable(path: str) -> None:
    mode = os.lstat(path).st_mode
    os.chmod(path, mode | stat.S_IWUSR)
    parent = os.path.dirname(path) or "."
    os.chmod(parent, os.stat(parent).st_mode | stat.S_IWUSR)


def prepare_outputs(step: Step, workdir: str) -> None:
    """Remove stale outputs and create their directories, so a job starts from a clean slate."""
    for out in step.outputs:
        full = os.path.join(workdir, out)
        remove_path(full)
        os.makedirs(os.path.dirname(full) or workdir, exist_ok=True)
    inst = step.instance
    if inst is not None:
        for log in inst.log:
            os.makedirs(os.path.dirname(os.path.join(workdir, log)) or workdir, exist_ok=True)
        if inst.benchmark:
            os.makedirs(os.path.dirname(os.path.join(workdir, inst.benchmark)) or workdir, exist_ok=True)


def finish_outputs(step: Step, workdir: str) -> list[str]:
    """Touch ``touch()`` outputs, protect ``protected()`` ones; return declared outputs still missing."""
    inst = step.instance
    missing = []
    for out in step.outputs:
        full = os.path.join(workdir, out)
        flags = inst.flags.get(out, ()) if inst is not None else ()
        if Flag.TOUCH in flags:
            with open(full, "a"):
                os.utime(full)
        if not os.path.lexists(full):
            missing.append(out)
        elif Flag.PROTECTED in flags:
            mode = os.stat(full).st_mode
            os.chmod(full, mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    return missing


def ctime_ns(workdir: str, path: str) -> int:
    """When the file's inode last changed (0 if it does not exist)."""
    try:
        return os.lstat(os.path.join(workdir, path)).st_ctime_ns
    except OSError:
        return 0


def remove_outputs(step: Step, workdir: str) -> None:
    for out in step.outputs:
        remove_path(os.path.join(workdir, out))


BENCHMARK_HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time"


def write_benchmark(step: Step, workdir: str, runtime_s: float | None, peak_rss_kb: int | None) -> None:
    """The rule's ``benchmark:`` file, with Snakemake's columns; what the OS did not report is NA."""
    inst = step.instance
    if inst is None or not inst.benchmark:
        return
    secs = runtime_s or 0.0
    m, s = divmod(int(secs), 60)
    h, m = divmod(m, 60)
    rss = f"{peak_rss_kb / 1024:.2f}" if peak_rss_kb else "NA"
    row = [f"{secs:.4f}", f"{h}:{m:02d}:{s:02d}", rss] + ["NA"] * 7
    path = os.path.join(workdir, inst.benchmark)
    os.makedirs(os.path.dirname(path) or workdir, exist_ok=True)
    # Written whole or not at all: a reader (or a run stopped mid-write) never sees half a file.
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as fh:
        fh.write(BENCHMARK_HEADER + "\n" + "\t".join(row) + "\n")
    os.replace(tmp, path)


# Stands in a trace for the digest of an input that changed while the job ran: it never equals a
# digest, so the step's key never matches and the next run reruns it, naming the input.
CHANGED_WHILE_RUNNING = "changed-while-running"


def changed_inputs(inputs: Sequence[tuple[str, str]], digest: Callable[..., str | None]) -> list[str]:
    """Inputs whose digest now differs from the one the step's key was computed from.

    Called when the job has ended: ``digest(path, settled=False)`` re-stats, and re-hashes only a
    file whose stat identity moved, so an unchanged input costs one ``stat``. Not settled: an input
    is not the job's to finish, and one rewritten within a timestamp tick must be re-read next time.
    An input gone by then (a job that moves its input away) is not one: the next run sees it missing.
    """
    return [p for p, d in inputs if d != "ancient" and digest(p, settled=False) not in (d, None)]


def record_traces(store: Store, step: Step, sp: StepPlan, digest: Callable[[str], str | None],
                  facts: Any = None, changed: Sequence[str] = ()) -> None:
    """One trace per output: the step key's fields, its input digests and the output's digest.

    ``changed`` names inputs that changed while the job ran: what it read may be neither version,
    so the traces say so (a key and an input digest that match nothing) instead of vouching for
    the outputs. The outputs stay; the next run reruns the step with "input changed".
    """
    if sp.texts is None and facts is not None:
        sp = with_current_key(sp, facts) or sp
    if sp.texts is None:
        return
    key = sp.key or ""
    fields = sp.fields or {}
    inputs = tuple(sp.inputs)
    if changed:
        key = f"{CHANGED_WHILE_RUNNING}:{key}"
        fields = {**fields, "inputs": CHANGED_WHILE_RUNNING}
        inputs = tuple((p, CHANGED_WHILE_RUNNING if p in changed else d) for p, d in inputs)
    now = time.time()
    traces = []
    for out in step.outputs:
        d = digest(out)
        if d is not None:
            traces.append(Trace(output=out, rule=step.rule.name, key=key, fields=fields,
                                inputs=inputs, output_digest=d, step_id=step.id, time=now))
    store.put_traces(traces)


def record_job_traces(store: Store, step: Step, sp: StepPlan, digest: Callable[..., str | None],
                      facts: Any) -> list[str]:
    """A finished job's traces; returns the inputs that changed while it ran (then not vouched for).

    The inputs a job read must be the ones its trace names (Bazel's issue 3360 is the same hazard).
    """
    changed = changed_inputs(sp.inputs, digest)
    record_traces(store, step, sp, digest, facts, changed=changed)
    return changed


def inputs_changed_warning(step_id: str, changed: Sequence[str]) -> str:
    return (f"warning: {step_id}: input {', '.join(changed)} changed while the job ran; its outputs are kept"
            " but not recorded as up to date (the next run reruns it)")
