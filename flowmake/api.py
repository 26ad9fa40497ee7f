"""What the CLI can ask for, as functions: build, dry-run, --why, --summary, --list, --dag, --touch.

Each call goes down the pipeline: load the rule file, grow the graph from the targets, plan against
the store, then either report the plan or hand it to the scheduler.
"""

from __future__ import annotations

import gc
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from flowmake.backend import load_backend
from flowmake.digest import Digester
from flowmake.errors import FlowmakeError, JobFailedError, UsageError
from flowmake.flowfile.runtime import run_hook
from flowmake.graph import Graph, Step
from flowmake.jobs import JobContext
from flowmake.namedlist import Flag
from flowmake import graph_memo
from flowmake.graph_memo import ExistsLog, GraphMemo, KnownKeys
from flowmake.planner import Decision, Facts, Plan, converge
from flowmake.progress import Progress
from flowmake.settings import available_cores, load_settings
from flowmake.store import Store
from flowmake.targets import forced_steps, normalize_target, resolve_targets, selected_steps, target_spec

DEFAULT_FILES = ("Flowfile", "Snakefile", "workflow/Snakefile", "workflow/Flowfile")


@dataclass
class Options:
    targets: list[str] = field(default_factory=list)
    flowfile: str | None = None
    directory: str | None = None
    dry_run: bool = False
    json: bool = False
    printshellcmds: bool = False
    cores: int | None = None
    jobs: int | None = None
    quiet: bool = False
    keep_going: bool = False
    config: dict[str, str] = field(default_factory=dict)
    configfiles: list[str] = field(default_factory=list)
    forceall: bool = False
    force: bool = False
    forcerun: list[str] = field(default_factory=list)
    until: list[str] = field(default_factory=list)
    omit_from: list[str] = field(default_factory=list)
    notemp: bool = False
    retries: int = 0
    resources: dict[str, int] = field(default_factory=dict)
    backend: str | None = None
    profile: str | None = None
    started: float = field(default_factory=time.monotonic)


@dataclass
class Session:
    """One invocation's loaded state: the workflow, the graph for the targets, the store, digests."""

    opts: Options
    workdir: str
    flowfile: str
    workflow: Any
    store: Store
    digester: Digester
    graph: Graph
    steps: list[Step]
    plan: Plan
    config_overrides: dict[str, Any]
    image_digest: Callable[[str], str] | None = None  # the backend's, when it runs containers
    graph_memo: GraphMemo | ExistsLog | None = None  # the graph memo used, or what resolution asked
    fingerprint: str | None = None  # the graph memo's, when the workflow can have one
    known_keys: KnownKeys = field(default_factory=dict)  # the keys the graph memo kept, by step

    def close(self) -> None:
        self.store.close()


def find_flowfile(given: str | None) -> str:
    if given:
        if not os.path.isfile(given):
            raise UsageError(f"rule file {given!r} does not exist")
        return os.path.abspath(given)
    for name in DEFAULT_FILES:
        if os.path.isfile(name):
            return os.path.abspath(name)
    raise UsageError(
        "no Flowfile here",
        hint="looked for " + ", ".join(DEFAULT_FILES) + "; pass -s FILE or -d DIR",
    )


def _parse_config(pairs: dict[str, str]) -> dict[str, Any]:
    from flowmake.flowfile.config import parse_value

    # Values are read as Snakemake reads them (``true`` stays a string; see parse_value).
    return {key: parse_value(text) for key, text in pairs.items()}


def enter_directory(opts: Options) -> None:
    """Resolve paths given on the command line, then move into the working directory (-d)."""
    if opts.flowfile:
        opts.flowfile = os.path.abspath(opts.flowfile)
    opts.configfiles = [os.path.abspath(c) for c in opts.configfiles]
    if opts.profile:
        opts.profile = os.path.abspath(opts.profile)
    if opts.directory:
        if not os.path.isdir(opts.directory):
            raise UsageError(f"directory {opts.directory!r} does not exist")
        os.chdir(opts.directory)
        opts.directory = None


def open_session(opts: Options, *, readonly: bool, image_digest: Callable[[str], str] | None = None) -> Session:
    # Planning builds a few long-lived objects per step and frees almost nothing: the cyclic
    # collector would walk them over and over (a third of the time at 100k steps). Freeze what
    # planning built so later collections during the run skip it.
    gc.disable()
    try:
        return _open_session(opts, readonly=readonly, image_digest=image_digest)
    finally:
        gc.freeze()
        gc.enable()


def _open_session(opts: Options, *, readonly: bool, image_digest: Callable[[str], str] | None) -> Session:
    from flowmake.flowfile import load_workflow

    enter_directory(opts)
    flowfile = find_flowfile(opts.flowfile)
    overrides = _parse_config(opts.config)
    workflow = load_workflow(flowfile, config_overrides=overrides, configfiles=opts.configfiles)
    workdir = workflow.workdir
    if workdir != os.getcwd():  # the rule file's workdir: directive
        os.chdir(workdir)
    store = Store.open(workdir, readonly=readonly)
    for w in store.warnings:  # damaged records were skipped; everything else is used
        print(f"flowmake: warning: {w}", file=sys.stderr)
    digester = Digester(store.stat_cache)
    exists = lambda p: digester.stat(p) is not None  # noqa: E731
    spec = target_spec(workflow, opts.targets, workdir)
    fp = graph_memo.fingerprint(workflow, spec)
    used: GraphMemo | ExistsLog | None = GraphMemo.load(store.path, fp) if fp is not None else None
    known: KnownKeys = {}
    if isinstance(used, GraphMemo) and used.holds(exists):
        graph = Graph(workflow, exists)
        steps, known = used.restore(workflow, graph)
    else:  # resolve; record what resolution asks, to save with the graph
        used = ExistsLog(exists) if fp is not None else None
        graph = Graph(workflow, used or exists)
        resolve_targets(graph, workflow, spec)
        steps = graph.walk()
    session = Session(opts, workdir, flowfile, workflow, store, digester, graph, steps,
                      Plan([], {}, None), overrides, image_digest, used, fp, known)  # type: ignore[arg-type]  # placeholder: _plan_session makes the real plan next
    session.plan = _plan_session(session)
    return session


def _facts(session: Session, forced: Callable[[Step], bool]) -> Facts:
    store, dig = session.store, session.digester
    incomplete = store.incomplete_outputs()
    in_flight = store.in_flight_elsewhere()

    def newer_than(outputs: Iterable[str], inputs: Iterable[str]) -> bool:
        out_times = [st.st_mtime_ns for st in map(dig.stat, outputs) if st is not None]
        in_times = [st.st_mtime_ns for st in map(dig.stat, inputs) if st is not None]
        return bool(out_times) and (not in_times or min(out_times) >= max(in_times))

    return Facts(
        digest=dig.digest,
        trace=store.trace,
        trace_head=store.trace_head,
        incomplete=incomplete.__contains__,
        forced=forced,
        newer_than=newer_than,
        image_digest=_memoised(session.image_digest) if session.image_digest else (lambda ref: ref),
        known_key=session.known_keys.get,
        in_flight=in_flight.__contains__,
    )


def _memoised(fn: Callable[[str], str]) -> Callable[[str], str]:
    seen: dict[str, str] = {}

    def get(ref: str) -> str:
        if ref not in seen:
            seen[ref] = fn(ref)
        return seen[ref]

    return get


def _forced(session: Session) -> Callable[[Step], bool]:
    opts = session.opts
    return forced_steps(session.graph, session.workflow, session.steps, session.workdir,
                        forceall=opts.forceall, force=opts.force, forcerun=opts.forcerun)


def _plan_session(session: Session) -> Plan:
    forced = _forced(session)
    plan, session.steps = converge(session.graph, session.steps, lambda: _facts(session, forced))
    return plan


def _selected_steps(session: Session) -> list[Step]:
    opts = session.opts
    return selected_steps(session.graph, session.workflow, session.steps, session.workdir,
                          until=opts.until, omit_from=opts.omit_from)


# ---- commands ------------------------------------------------------------------------------------


def build(opts: Options) -> int:
    if opts.dry_run:
        session = open_session(opts, readonly=True, image_digest=_image_resolver(opts))
        try:
            from flowmake.explain import print_plan

            print_plan(session, _selected_steps(session), as_json=opts.json)
            return 0
        finally:
            session.close()
    enter_directory(opts)
    cores = opts.cores or available_cores()
    settings = load_settings(os.getcwd(), opts.profile)
    backend_name = opts.backend or settings.backend
    local = load_backend("local", settings.for_backend("local"), cores)
    backend = local if backend_name == "local" else load_backend(backend_name, settings.for_backend(backend_name), cores)
    try:
        session = open_session(opts, readonly=False, image_digest=getattr(backend, "image_digest", None))
        try:
            return _run(session, _selected_steps(session), backend, local, cores)
        finally:
            session.close()
    finally:
        backend.close()
        if local is not backend:
            local.close()


def _refuse_protected(session: Session, steps: list[Step]) -> None:
    """Like Snakemake, never overwrite a protected() output: the user removes it on purpose."""
    chosen = {id(s) for s in steps}
    found = [(sp.step, o) for sp in session.plan.steps
             if id(sp.step) in chosen and sp.decision in (Decision.RUN, Decision.PENDING) and sp.step.instance
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


def _run(session: Session, steps: list[Step], backend: Any, local: Any, cores: int) -> int:
    from flowmake.scheduler import Scheduler, SchedulerOptions

    opts = session.opts
    _refuse_protected(session, steps)
    ctx = JobContext(workdir=session.workdir, flowfile=session.flowfile, config_overrides=session.config_overrides,
                     configfiles=list(opts.configfiles), cores=cores)
    progress = Progress(quiet=opts.quiet, started=opts.started)
    _stop_orphans(session, progress.note)
    sched = Scheduler(
        session.graph, session.plan, store=session.store, digest=_fresh_digest(session.digester), backend=backend,
        local=local, ctx=ctx, progress=progress,
        options=SchedulerOptions(cores=cores, jobs=opts.jobs, limits=opts.resources, keep_going=opts.keep_going,
                                 retries=opts.retries, notemp=opts.notemp, printshellcmds=opts.printshellcmds,
                                 keep_target_temps=bool(opts.targets)),
    )
    run_hook(session.workflow, "onstart")
    try:
        result = sched.run(steps)
    finally:
        _save_stat_cache(session)
    if not result.interrupted:  # keep the graph for the next invocation
        graph_memo.keep(session.graph_memo, session.fingerprint, session.store, session.workflow, session.graph,
                  session.steps, sched.current, session.known_keys)
    progress.summary(len(result.ran), len(result.skipped_by_cutoff), len(result.failed), result.interrupted,
                     session.digester.files_hashed)
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


def _interrupted() -> FlowmakeError:
    from flowmake.errors import Interrupted

    return Interrupted("stopped by a signal; running jobs were cancelled and their partial outputs removed")


def _fresh_digest(dig: Digester) -> Callable[[str], str | None]:
    def digest(path: str, settled: bool = True) -> str | None:
        # Called for a finished job's outputs: the job has exited, so nothing still writes them.
        # (Its inputs are asked for with settled=False: someone else may be writing those.)
        dig.invalidate(path)
        return dig.digest(path, settled=settled)

    return digest


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



def list_rules(opts: Options) -> int:
    from flowmake.flowfile import load_workflow

    enter_directory(opts)
    flowfile = find_flowfile(opts.flowfile)
    wf = load_workflow(flowfile, config_overrides=_parse_config(opts.config), configfiles=opts.configfiles)
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
        for step in _selected_steps(session):
            sp = decided[id(step)] = plan_step(step, unsettled, facts)
            if sp.decision is Decision.SKIP:
                continue
            if any(session.digester.digest(o) is None for o in step.outputs) or step.instance is None:
                continue
            keyed = with_current_key(sp, facts)
            if keyed is None:
                continue
            record_traces(session.store, step, keyed, session.digester.digest)
            decided[id(step)] = replace(keyed, decision=Decision.SKIP)
            if not opts.quiet:
                print(f"touched {', '.join(step.outputs)}", file=sys.stderr)
        session.store.flush()
        _save_stat_cache(session)
    finally:
        session.close()
    return 0
