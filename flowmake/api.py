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
from flowmake.errors import FlowmakeError, JobFailedError, UsageError, did_you_mean
from flowmake.graph import Graph, Step
from flowmake.jobs import JobContext
from flowmake import memo
from flowmake.memo import ExistsLog, GraphMemo
from flowmake.planner import Decision, Facts, Plan, plan as make_plan
from flowmake.report import Progress
from flowmake.settings import load_settings
from flowmake.store import Store
from flowmake.targets import normalize_target, resolve_targets, target_spec

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
    import yaml

    out: dict[str, Any] = {}
    for key, text in pairs.items():
        try:
            value = yaml.safe_load(text) if text != "" else ""
        except yaml.YAMLError:
            value = text
        out[key] = value
    return out


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
    digester = Digester(store.stat_cache)
    exists = lambda p: digester.stat(p) is not None  # noqa: E731
    graph = Graph(workflow, exists)
    spec = target_spec(workflow, opts.targets, workdir)
    fp = memo.fingerprint(workflow, spec)
    used: GraphMemo | ExistsLog | None = GraphMemo.load(store.path, fp) if fp is not None else None
    if used is not None and used.holds(exists):
        steps = used.restore(workflow, graph)
    else:
        used = None
        if fp is not None:  # record what resolution asks, to save with the graph
            used = graph.exists = ExistsLog(exists)
        resolve_targets(graph, workflow, spec)
        steps = graph.walk()
    session = Session(opts, workdir, flowfile, workflow, store, digester, graph, steps,
                      Plan([], {}, None), overrides, image_digest, used, fp)  # type: ignore[arg-type]
    session.plan = _plan_converged(session)
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
        trace=store.traces.get,
        incomplete=incomplete.__contains__,
        forced=forced,
        newer_than=newer_than,
        image_digest=_memoised(session.image_digest) if session.image_digest else (lambda ref: ref),
        in_flight=in_flight.__contains__,
    )


def _memoised(fn: Callable[[str], str]) -> Callable[[str], str]:
    seen: dict[str, str] = {}

    def get(ref: str) -> str:
        if ref not in seen:
            seen[ref] = fn(ref)
        return seen[ref]

    return get


def _forced_set(session: Session) -> Callable[[Step], bool]:
    opts, steps = session.opts, session.steps
    if opts.forceall:
        return lambda s: True
    chosen: set[int] = set()
    if opts.force:
        chosen.update(id(t) for t in session.graph.targets if isinstance(t, Step))
    if opts.forcerun:
        roots = _select(session, opts.forcerun, "-R/--forcerun")
        chosen.update(id(s) for s in _downstream(steps, roots))
    return lambda s: id(s) in chosen


def _select(session: Session, names: list[str], flag: str) -> list[Step]:
    """Steps named by rule names or output files."""
    rules = {r.name for r in session.workflow.rules}
    picked: list[Step] = []
    for name in names:
        if name in rules:
            picked.extend(s for s in session.steps if s.rule.name == name)
            continue
        path = normalize_target(name, session.workdir)
        prod = session.graph.producer.get(path)
        if isinstance(prod, Step):
            picked.append(prod)
        else:
            raise UsageError(f"{flag}: {name!r} is neither a rule nor an output of this plan",
                             hint=did_you_mean(name, rules))
    return picked


def _downstream(steps: list[Step], roots: list[Step]) -> list[Step]:
    marked = {id(r) for r in roots}
    for s in steps:  # dependencies come first, so one pass suffices
        if any(id(d) in marked for d in s.deps):
            marked.add(id(s))
    return [s for s in steps if id(s) in marked]


def _plan_converged(session: Session) -> Plan:
    """Plan; a checkpoint that will rerun makes its consumers wait for it; repeat until stable."""
    forced = _forced_set(session)
    while True:
        facts = _facts(session, forced)
        plan = make_plan(session.steps, facts)
        rerun = {o for sp in plan.steps if sp.step.rule.is_checkpoint and sp.decision in (Decision.RUN, Decision.PENDING)
                 for o in sp.step.outputs}
        if not rerun:
            return plan
        stale = [s for s in session.steps if s.instance is not None and rerun & s.instance.consulted]
        session.graph.unfinished_checkpoint_outputs |= rerun
        if not stale:
            return plan
        session.graph.invalidate(stale, rerun)
        session.steps = session.graph.walk()


def _selected_steps(session: Session) -> list[Step]:
    steps = session.steps
    opts = session.opts
    if opts.until:
        keep = {id(s) for s in session.graph.walk(_select(session, opts.until, "--until"))}
        steps = [s for s in steps if id(s) in keep]
    if opts.omit_from:
        drop = {id(s) for s in _downstream(session.steps, _select(session, opts.omit_from, "--omit-from"))}
        steps = [s for s in steps if id(s) not in drop]
    return steps


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
    cores = opts.cores or _all_cores()
    settings = load_settings(os.getcwd(), opts.profile)
    backend_name = opts.backend or settings.backend
    local = load_backend("local", settings.for_backend("local"), cores)
    backend = local if backend_name == "local" else load_backend(backend_name, settings.for_backend(backend_name), cores)
    try:
        session = open_session(opts, readonly=False, image_digest=getattr(backend, "image_digest", None))
        try:
            return _run(session, _selected_steps(session), backend, local, settings.for_backend(backend_name), cores)
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
             if "protected" in sp.step.instance.flags.get(o, ()) and os.path.lexists(o)]
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
    return backend.image_digest  # type: ignore[no-any-return]


def _run(session: Session, steps: list[Step], backend: Any, local: Any, settings: dict[str, Any], cores: int) -> int:
    from flowmake.scheduler import Scheduler, SchedulerOptions

    opts = session.opts
    _refuse_protected(session, steps)
    ctx = JobContext(workdir=session.workdir, flowfile=session.flowfile, config_overrides=session.config_overrides,
                     configfiles=list(opts.configfiles), cores=cores, settings=settings)
    progress = Progress(quiet=opts.quiet, started=opts.started)
    _stop_orphans(session, progress.note)
    sched = Scheduler(
        session.graph, session.plan, store=session.store, digest=_fresh_digest(session.digester), backend=backend,
        local=local, ctx=ctx, progress=progress,
        options=SchedulerOptions(cores=cores, jobs=opts.jobs, limits=opts.resources, keep_going=opts.keep_going,
                                 retries=opts.retries, notemp=opts.notemp, printshellcmds=opts.printshellcmds),
    )
    hooks = session.workflow
    _hook(getattr(hooks, "onstart", None))
    try:
        result = sched.run(steps)
    finally:
        _save_stat_cache(session)
    if not result.interrupted:  # keep the graph for the next invocation
        memo.keep(session.graph_memo, session.fingerprint, session.store, session.workflow, session.graph,
                  session.steps, session.plan.by_id)
    progress.summary(len(result.ran), len(result.failed), result.interrupted, session.digester.files_hashed)
    if result.interrupted:
        _hook(getattr(hooks, "onerror", None))
        raise _interrupted()
    if result.failed:
        _hook(getattr(hooks, "onerror", None))
        raise JobFailedError(
            f"{len(result.failed)} step{'s' if len(result.failed) > 1 else ''} failed",
            details=[f"{sid}: {why}" for sid, why in result.failed],
        )
    if result.inputs_changed:  # not a success: the outputs are not what the inputs now give
        _hook(getattr(hooks, "onerror", None))
        n = len(result.inputs_changed)
        raise JobFailedError(
            f"{n} step{'s' if n > 1 else ''} read inputs that changed while {'they' if n > 1 else 'it'} ran",
            details=[f"{sid}: {', '.join(paths)}" for sid, paths in result.inputs_changed],
            hint="their outputs are kept but not recorded as up to date: run flowmake again once the inputs are final",
        )
    _hook(getattr(hooks, "onsuccess", None))
    return 0


def _interrupted() -> FlowmakeError:
    from flowmake.errors import Interrupted

    return Interrupted("stopped by a signal; running jobs were cancelled and their partial outputs removed")


def _hook(fn: Callable[..., Any] | None) -> None:
    if fn is None:
        return
    try:
        fn()
    except TypeError:
        fn(None)


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


def _all_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


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
    from flowmake.planner import plan_step, refresh_key
    from flowmake.jobs import record_traces

    session = open_session(opts, readonly=False)
    try:
        by_id = session.plan.by_id
        facts = session.plan.facts
        for step in _selected_steps(session):
            sp = plan_step(step, by_id, facts)
            by_id[id(step)] = sp
            if sp.decision is Decision.SKIP:
                continue
            if any(session.digester.digest(o) is None for o in step.outputs) or step.instance is None:
                continue
            if not refresh_key(sp, facts):
                continue
            record_traces(session.store, step, sp, session.digester.digest)
            sp.decision = Decision.SKIP
            if not opts.quiet:
                print(f"touched {', '.join(step.outputs)}", file=sys.stderr)
        session.store.flush()
        _save_stat_cache(session)
    finally:
        session.close()
    return 0
