"""Step → JobSpec: what a backend needs to run one step (outputs.py keeps the outputs tidy around it).

Shell rules run their rendered command. ``run:`` and ``script:`` rules become a call to
``python -m flowmake.jobrun`` that loads the same rule file in a fresh process and executes the block
for this step's wildcards, so every backend runs every kind of rule the same way.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from flowmake.backend import JobSpec, Resources
from flowmake.graph import Step
from flowmake.journal import hostname
from flowmake.namedlist import Flag
from flowmake.rules import RuleKind


@dataclass(frozen=True)
class JobContext:
    """What every job of one invocation shares."""

    workdir: str
    flowfile: str
    config_overrides: Mapping[str, Any] = field(default_factory=dict)
    configfiles: Sequence[str] = ()
    python: str = sys.executable
    cores: int = 1
    resource_args: Mapping[str, Sequence[str]] = field(default_factory=dict)  # overrides.Overrides.args


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
    raw = {n: bindings.raw(n) for n in bindings} if bindings else {}
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
    if ctx.resource_args:  # the run block sees the resources and threads the profile set
        payload["resource_args"] = {k: list(v) for k, v in ctx.resource_args.items()}
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
    runtime = res.pop("runtime", None)
    if (mem is None and isinstance(res.get("mem"), str)) or isinstance(runtime, str):
        from flowmake.overrides import runtime_minutes, size_mb  # mem="4GB", runtime="2h"

        mem = size_mb(res["mem"]) if mem is None and isinstance(res.get("mem"), str) else mem
        runtime = runtime_minutes(runtime)
    if isinstance(mem, (int, float)):
        mem = int(mem * mem_scale)
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
