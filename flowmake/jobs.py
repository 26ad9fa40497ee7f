"""Step → JobSpec: what a backend needs to run one step, or one pipe group (outputs.py keeps the
outputs tidy around it).

Shell rules run their rendered command. ``run:``, ``script:``, ``wrapper:`` and ``notebook:`` rules
become a call to ``python -m flowmake.jobrun`` that loads the same rule file in a fresh process and
executes the action for this step's wildcards, so every backend runs every kind of rule the same
way. Under --use-conda/--use-envmodules the command runs in the rule's environment (``envs.wrap``).
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from flowmake import envs, shadow
from flowmake.backend import JobSpec, Resources
from flowmake.envs import Deployment
from flowmake.graph import Step
from flowmake.journal import hostname
from flowmake.namedlist import Flag
from flowmake.pipes import PipeGroup, group_script, real_outputs
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
    deployment: Deployment = field(default_factory=Deployment)  # --use-conda and friends
    default_storage: tuple[str, str] | None = None  # --default-storage-provider/-prefix: maps paths
    scatter: Mapping[str, int] = field(default_factory=dict)  # --set-scatter, for the job's own load
    resource_args: Mapping[str, Sequence[str]] = field(default_factory=dict)  # overrides.Overrides.args
    workflow_cores: int | None = None  # -c as given: the job's load sees the same workflow.cores
    shadow_prefix: str | None = None  # --shadow-prefix: where shadow: jobs run (``shadow.root``)
    replace_config: bool = False  # --replace-workflow-config, for the job's own load


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
    if step.rule.kind is RuleKind.NONE:
        return ":"
    command = _with_capped_threads(inst, ctx.cores, inst.command) if (
        step.rule.kind is RuleKind.SHELL) else _jobrun_command(step, ctx, attempt)
    command = envs.wrap(command, step.rule, ctx.deployment, ctx.workdir)
    if step.rule.shadow is None:
        return command
    return shadow.wrap(command, step.rule.shadow, inputs=list(inst.input), outputs=list(step.outputs),
                       logs=list(inst.log), prefix=ctx.shadow_prefix, python=ctx.python)


def _jobrun_command(step: Step, ctx: JobContext, attempt: int) -> str:
    bindings = step.bindings
    raw = {n: bindings.raw(n) for n in bindings} if bindings else {}
    payload = {
        "flowfile": ctx.flowfile,
        "workdir": ctx.workdir,
        "config": dict(ctx.config_overrides),
        "configfiles": list(ctx.configfiles),
        **({"scatter": dict(ctx.scatter)} if ctx.scatter else {}),
        **({"replace_config": True} if ctx.replace_config else {}),
        "rule": step.rule.name,
        "wildcards": raw,
        "outputs": list(step.outputs),
        "cores": ctx.cores,
        **({"workflow_cores": ctx.workflow_cores} if ctx.workflow_cores else {}),
        "attempt": attempt,
        "deployment": ctx.deployment.as_payload(),
    }
    if ctx.default_storage is not None:  # the job's rule file must map its paths the same way
        payload["default_storage"] = list(ctx.default_storage)
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


def group_spec(group: PipeGroup, ctx: JobContext, *, attempt: int, inputs: Sequence[tuple[str, str]],
               image: str | None, local: bool, mem_scale: float = 1.0) -> JobSpec:
    """A pipe group as one job (``pipes``): every member's command at once, around its FIFOs, so any
    backend runs the group on one host. It holds what all its members need at once."""
    members = group.members
    lead = members[0]
    streams = set(group.producer)
    parts = [job_resources(m, ctx.cores, mem_scale) for m in members]
    extra: dict[str, Any] = {}
    for r in parts:
        for k, v in r.extra:
            both_numbers = isinstance(v, (int, float)) and isinstance(extra.get(k, 0), (int, float))
            extra[k] = extra.get(k, 0) + v if both_numbers else extra.get(k, v)
    mems = [r.mem_mb for r in parts if r.mem_mb is not None]
    runtimes = [r.runtime_min for r in parts if r.runtime_min is not None]
    outputs = tuple(o for m in members for o in real_outputs(m))
    return JobSpec(
        step_id=lead.id,
        rule="+".join(dict.fromkeys(m.rule.name for m in members)),
        command=group_script(group, [job_command(m, ctx, attempt) for m in members]),
        workdir=ctx.workdir,
        inputs=tuple(dict.fromkeys((p, d) for p, d in inputs if p not in streams)),
        outputs=outputs,
        directories=tuple(o for m in members for o in real_outputs(m)
                          if m.instance is not None and Flag.DIRECTORY in m.instance.flags.get(o, ())),
        log=log_path(lead),
        resources=Resources(threads=min(sum(r.threads for r in parts), max(1, ctx.cores)),
                            mem_mb=sum(mems) if mems else None, runtime_min=max(runtimes) if runtimes else None,
                            extra=tuple(sorted(extra.items()))),
        image=image,
        attempt=attempt,
        local=local,
        env=((RUN_ENV, run_id()),) if local else (),
    )
