"""What the CLI can ask for, as functions: build, dry-run, --why, --summary, --list, --dag, --touch.

Each call goes down the pipeline: load the rule file, grow the graph from the targets, plan against
the store, then either report the plan or hand it to the scheduler.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable

from flowmake.backend import load_backend
from flowmake.digest import Digester
from flowmake.errors import FlowmakeError, JobFailedError
from flowmake.flowfile.runtime import run_hook
from flowmake.graph import Step
from flowmake.jobs import JobContext
from flowmake import envs, graph_memo
from flowmake.namedlist import Flag
from flowmake.planner import Decision
from flowmake.progress import Progress
from flowmake.settings import CLUSTER_BACKENDS, available_cores, backend_settings, load_settings
from flowmake.targets import normalize_target
# Options and open_session are what cli and tests reach through api.
from flowmake.session import (ALL_TRIGGERS, UNCAPPED, Options, Session, default_storage_of, deployment,
                              enter_directory, find_flowfile, open_session, parse_config, selected)


def build(opts: Options) -> int:
    if opts.dry_run:
        session = open_session(opts, readonly=True, image_digest=_image_resolver(opts))
        try:
            from flowmake.explain import print_plan

            print_plan(session, selected(session), as_json=opts.json)
            return 0
        finally:
            session.close()
    enter_directory(opts)
    settings = load_settings(os.getcwd(), opts.profile)
    backend_name = opts.backend or settings.backend
    # -j is the cores of a local run but only the number of jobs on a cluster, whose jobs get
    # the threads they ask for unless -c caps them (as in Snakemake).
    cluster = backend_name in CLUSTER_BACKENDS
    cores = opts.cores or (None if cluster else opts.jobs) or available_cores()
    job_cores = opts.cores or (UNCAPPED if cluster else cores)
    local = load_backend("local", settings.for_backend("local"), cores)
    backend = local if backend_name == "local" else load_backend(backend_name, backend_settings(settings, backend_name, opts),
                                                                 cores)
    try:
        session = open_session(opts, readonly=False, image_digest=getattr(backend, "image_digest", None))
        try:
            return _run(session, selected(session), backend, local, cores, job_cores)
        finally:
            session.close()
    finally:
        backend.close()
        if local is not backend:
            local.close()


# Decisions that may write a step's outputs (a restore places them over what is there).
_REWRITES = (Decision.RUN, Decision.PENDING, Decision.RESTORE)


def _refuse_protected(session: Session, steps: list[Step]) -> None:
    """Like Snakemake, never overwrite a protected() output: the user removes it on purpose."""
    chosen = {id(s) for s in steps}
    found = [(sp.step, o) for sp in session.plan.steps
             if id(sp.step) in chosen and sp.decision in _REWRITES and sp.step.instance
             for o in sp.step.outputs
             if Flag.PROTECTED in sp.step.instance.flags.get(o, ()) and os.path.lexists(o)]
    if found:
        raise FlowmakeError(
            "write-protected outputs would be overwritten",
            rule=found[0][0].rule.name,
            location=found[0][0].rule.location,
            details=[f"{o} (rule {s.rule.name})" for s, o in found],
            hint="remove them first if they really must be rebuilt: rm -f " + " ".join(o for _, o in found),
        )


def _image_resolver(opts: Options) -> Callable[[str], str] | None:
    """The selected backend's image digests, so a dry-run keys container steps like a run does."""
    from flowmake.backend import backend_class

    enter_directory(opts)
    settings = load_settings(os.getcwd(), opts.profile)
    name = opts.backend or settings.backend
    cls = backend_class(name)
    if not hasattr(cls, "image_digest"):
        return None
    backend = cls(settings=settings.for_backend(name), cores=1)
    return backend.image_digest


def _run(session: Session, steps: list[Step], backend: Any, local: Any, cores: int, job_cores: int) -> int:
    from flowmake.scheduler import Scheduler, SchedulerOptions

    opts = session.opts
    _refuse_protected(session, steps)
    ctx = JobContext(workdir=session.workdir, flowfile=session.flowfile, config_overrides=session.config_overrides,
                     configfiles=list(opts.configfiles), cores=job_cores, deployment=session.workflow.deployment,
                     default_storage=default_storage_of(opts), scatter=dict(opts.set_scatter),
                     resource_args=session.resource_args, shadow_prefix=opts.shadow_prefix,
                     workflow_cores=opts.cores, replace_config=opts.replace_workflow_config)
    progress = Progress(quiet=opts.quiet, started=opts.started)
    envs.prepare(_rules_to_run(session, steps), ctx.deployment, session.workdir, progress.note)
    if opts.conda_create_envs_only:
        return 0
    _stop_orphans(session, progress.note)
    sched = Scheduler(
        session.graph, session.plan, store=session.store, digest=_fresh_digest(session.digester, session.storage),
        backend=backend, local=local, ctx=ctx, progress=progress, storage=session.storage,
        options=SchedulerOptions(cores=cores, jobs=opts.jobs, limits=opts.resources, keep_going=opts.keep_going,
                                 retries=opts.retries, notemp=opts.notemp, printshellcmds=opts.printshellcmds,
                                 keep_target_temps=bool(opts.targets),
                                 benchmark_extended=opts.benchmark_extended,
                                 kept_temps=_batch_kept_temps(session, steps)),
    )
    if session.cache is not None:
        from flowmake.cache_setup import may_cache_of

        sched.use_cache(session.cache, session.digester, may_cache_of(opts), frozenset(session.cache_outcome.asked),
                        session.cache_lookup)
        use_plane = getattr(backend, "use_data_plane", None)  # hosts that move data to S3 themselves
        if use_plane is not None and session.cache.url.startswith("s3://"):
            from flowmake.cache_plane import data_plane

            use_plane(data_plane(session.cache))
    run_hook(session.workflow, "onstart")
    try:
        result = sched.run(steps)
    finally:
        _save_stat_cache(session)
    if session.cache is not None:
        from flowmake.cache_setup import summary_part, warn

        warn(session.cache, sched.cache_stats.warnings)
        progress.cache_words = summary_part(sched.cache_stats)
    if not result.interrupted:  # keep the graph for the next invocation
        graph_memo.keep(session.graph_memo, session.fingerprint, session.store, session.workflow, session.graph,
                  session.steps, sched.current, session.known_keys)
    note = getattr(backend, "summary_note", None)  # e.g. the spot backend's instance-hours and cost
    progress.summary(len(result.ran), len(result.skipped_by_cutoff), len(result.failed), result.interrupted,
                     session.digester.files_hashed, note() if note is not None else "")
    if result.interrupted:
        run_hook(session.workflow, "onerror")
        raise _interrupted()
    if result.failed:
        run_hook(session.workflow, "onerror")
        raise JobFailedError(
            f"{len(result.failed)} step{'s' if len(result.failed) > 1 else ''} failed",
            details=[f"{sid}: {why}" for sid, why in result.failed],
        )
    if result.inputs_changed:  # not a success: the outputs are not what the inputs now give
        run_hook(session.workflow, "onerror")
        n = len(result.inputs_changed)
        raise JobFailedError(
            f"{n} step{'s' if n > 1 else ''} read inputs that changed while {'they' if n > 1 else 'it'} ran",
            details=[f"{sid}: {', '.join(paths)}" for sid, paths in result.inputs_changed],
            hint="their outputs are kept but not recorded as up to date: run flowmake again once the inputs are final",
        )
    run_hook(session.workflow, "onsuccess")
    return 0


def _rules_to_run(session: Session, steps: list[Step]) -> list[Any]:
    """The rules of the steps that will or may run; every rule when a checkpoint may (the steps it
    adds are not known yet)."""
    by_id = session.plan.by_id
    rules = {id(s.rule): s.rule for s in steps
             if (sp := by_id.get(id(s))) is not None and sp.decision in (Decision.RUN, Decision.PENDING)}
    if any(r.is_checkpoint for r in rules.values()):
        return list(session.workflow.rules)
    return list(rules.values())


def _interrupted() -> FlowmakeError:
    from flowmake.errors import Interrupted

    return Interrupted("stopped by a signal; running jobs were cancelled and their partial outputs removed")


def _fresh_digest(dig: Digester, storage: Any = None) -> Callable[[str], str | None]:
    def digest(path: str, settled: bool = True) -> str | None:
        # Called for a finished job's outputs: the job has exited, so nothing still writes them.
        # (Its inputs are asked for with settled=False: someone else may be writing those.)
        dig.invalidate(path)
        return dig.digest(path, settled=settled)

    return digest if storage is None else storage.digest_fn(digest)


def _save_stat_cache(session: Session) -> None:
    saver = getattr(session.store, "save_stat_cache", None)
    if saver is not None:
        saver()


def _stop_orphans(session: Session, note: Callable[[str], None]) -> None:
    """Jobs of a run killed with SIGKILL must not write into this run's outputs: stop them first."""
    from flowmake.peers import stop_job  # (runs that die while this one runs: peers.Peers)
    seen: set[int] = set()
    for marker in session.store.incomplete_outputs().values():
        stop_job(marker, note, seen)



def spot(argv: list[str]) -> int:
    """``flowmake spot list|cleanup [--all]``: the spot backend's instances of this workdir."""
    from flowmake.backend import backend_class

    command: Any = getattr(backend_class("spot"), "command")  # an entry point, like the backend
    return int(command(argv, load_settings(os.getcwd()).for_backend("spot"), os.getcwd()))


def list_rules(opts: Options) -> int:
    from flowmake.flowfile import load_workflow

    enter_directory(opts)
    flowfile = find_flowfile(opts.flowfile)
    wf = load_workflow(flowfile, config_overrides=parse_config(opts.config), configfiles=opts.configfiles,
                       default_storage=default_storage_of(opts), scatter=opts.set_scatter)
    for rule in wf.rules:
        kind = "checkpoint" if rule.is_checkpoint else "rule"
        print(f"{rule.name}\t{kind}\t{os.path.relpath(str(rule.location.file))}:{rule.location.line}")
    return 0


def dag(opts: Options, fmt: str) -> int:
    from flowmake.explain import print_dag

    session = open_session(opts, readonly=True)
    try:
        print_dag(session, fmt)
    finally:
        session.close()
    return 0


def why(opts: Options, path: str) -> int:
    from flowmake.explain import print_why

    session = open_session(opts, readonly=True)
    try:
        print_why(session, normalize_target(path, session.workdir))
    finally:
        session.close()
    return 0


def summary(opts: Options) -> int:
    from flowmake.explain import print_summary

    session = open_session(opts, readonly=True)
    try:
        print_summary(session)
    finally:
        session.close()
    return 0


def list_changes(opts: Options, kind: str) -> int:
    from flowmake.explain import print_changes

    opts.rerun_triggers = list(ALL_TRIGGERS)  # as in Snakemake: every change is listed, whatever reruns
    session = open_session(opts, readonly=True)
    try:
        print_changes(session, kind)
    finally:
        session.close()
    return 0


def touch(opts: Options) -> int:
    """Record the outputs that exist as up to date, without running anything."""
    from dataclasses import replace

    from flowmake.outputs import record_traces
    from flowmake.planner import plan_step, unsettled_in, with_current_key

    session = open_session(opts, readonly=False)
    try:
        decided = dict(session.plan.by_id)  # a touched step is up to date for its dependants
        unsettled = unsettled_in(decided)
        facts = session.plan.facts
        digest = session.storage.digest_fn(session.digester.digest) if session.storage else session.digester.digest
        for step in selected(session):
            sp = decided[id(step)] = plan_step(step, unsettled, facts)
            if sp.decision is Decision.SKIP:
                continue
            if any(digest(o) is None for o in step.outputs) or step.instance is None:
                continue
            keyed = with_current_key(sp, facts)
            if keyed is None:
                continue
            record_traces(session.store, step, keyed, digest)
            decided[id(step)] = replace(keyed, decision=Decision.SKIP)
            if not opts.quiet:
                print(f"touched {', '.join(step.outputs)}", file=sys.stderr)
        session.store.flush()
        _save_stat_cache(session)
    finally:
        session.close()
    return 0


def _batch_kept_temps(session: Session, steps: list[Step]) -> frozenset[str]:
    """With --batch, the temp() files the steps left out (the batched rule, before its last batch)
    will read: kept for them, as Snakemake keeps them."""
    if session.opts.batch is None:
        return frozenset()
    chosen = {id(s) for s in steps}
    return frozenset(p for s in session.steps if id(s) not in chosen and s.instance is not None
                     for p in s.instance.input)
