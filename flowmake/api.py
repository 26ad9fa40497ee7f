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
from flowmake import envs, graph_memo, wrappers
from flowmake.graph_memo import ExistsLog, GraphMemo, KnownKeys
from flowmake.planner import Decision, Facts, Plan, converge
from flowmake.progress import Progress
from flowmake.settings import CLUSTER_BACKENDS, available_cores, backend_settings, load_settings
from flowmake.store import Store
from flowmake.targets import forced_steps, normalize_target, resolve_targets, selected_steps, target_spec

DEFAULT_FILES = ("Flowfile", "Snakefile", "workflow/Snakefile", "workflow/Flowfile")
ALL_TRIGGERS = ("mtime", "params", "input", "software-env", "code")
UNCAPPED = 1 << 20  # the cores a cluster job may ask for when -c sets no cap


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
    set_scatter: dict[str, int] = field(default_factory=dict)  # --set-scatter: over scattergather:
    backend: str | None = None
    profile: str | None = None  # flowmake.toml-style settings file (Snakemake profiles: cli/profiles.py)
    default_resources: list[str] | None = None  # None: not given (see overrides.default_list)
    set_resources: list[str] = field(default_factory=list)
    set_threads: list[str] = field(default_factory=list)
    rerun_triggers: list[str] = field(default_factory=lambda: list(ALL_TRIGGERS))
    latency_wait: int | None = None  # cluster backends: seconds to wait for outputs to appear
    max_jobs_per_timespan: str | None = None  # cluster backends: "N/TIME" submissions
    verbose: bool = False
    wrapper_prefix: str | None = None
    default_storage_provider: str | None = None
    default_storage_prefix: str | None = None
    sources: dict[str, str] = field(default_factory=dict)  # option → the profile that set it
    # Software deployment (envs.Deployment): --use-conda/--sdm conda, --use-envmodules, --wrapper-prefix.
    use_conda: bool = False
    use_envmodules: bool = False
    conda_prefix: str | None = None
    conda_create_envs_only: bool = False
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
    storage: Any = None  # storage.Storage, when the rule file or the flags use storage
    resource_args: dict[str, list[str]] = field(default_factory=dict)  # for job processes (overrides)

    def close(self) -> None:
        if self.storage is not None:
            self.storage.close()
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
    if opts.wrapper_prefix:  # a local one is relative to where the user typed it
        opts.wrapper_prefix = envs.local_prefix(opts.wrapper_prefix)
    if opts.conda_prefix:
        opts.conda_prefix = os.path.abspath(os.path.expanduser(opts.conda_prefix))
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
    workflow = load_workflow(flowfile, config_overrides=overrides, configfiles=opts.configfiles,
                             deployment=deployment(opts), default_storage=_default_storage(opts),
                             scatter=opts.set_scatter)
    resource_args = _apply_resource_flags(opts, workflow)
    workdir = workflow.workdir
    if workdir != os.getcwd():  # the rule file's workdir: directive
        os.chdir(workdir)
    store = Store.open(workdir, readonly=readonly)
    for w in store.warnings:  # damaged records were skipped; everything else is used
        print(f"flowmake: warning: {w}", file=sys.stderr)
    digester = Digester(store.stat_cache)
    exists = lambda p: digester.stat(p) is not None  # noqa: E731
    storage = _storage(workflow, opts, store, digester, readonly)
    if storage is not None:
        exists = storage.exists_fn(exists)
    spec = target_spec(workflow, opts.targets, workdir)
    if storage is not None:  # with a default storage provider, `flowmake out.txt` names the object
        spec = [(k, workflow.storage.map_default(t) if k == "path" else t) for k, t in spec]
    fp = graph_memo.fingerprint(workflow, spec)
    used: GraphMemo | ExistsLog | None = GraphMemo.load(store.path, fp) if fp is not None else None
    known: KnownKeys = {}
    if storage is not None and isinstance(used, GraphMemo):
        storage.prefetch(used.asked())  # the objects the memo's questions name, in parallel
    if isinstance(used, GraphMemo) and used.holds(exists):
        graph = Graph(workflow, exists)
        steps, known = used.restore(workflow, graph)
    else:  # resolve; record what resolution asks, to save with the graph
        used = ExistsLog(exists) if fp is not None else None
        graph = Graph(workflow, used or exists)
        _resolve(graph, workflow, spec, storage)
        steps = graph.walk()
    session = Session(opts, workdir, flowfile, workflow, store, digester, graph, steps,
                      Plan([], {}, None), overrides, image_digest, used, fp, known, storage)  # type: ignore[arg-type]  # placeholder: _plan_session makes the real plan next
    if storage is not None:
        storage.prefetch([o for s in steps for o in s.outputs])
    session.resource_args = resource_args
    session.plan = _plan_session(session)
    return session


def deployment(opts: Options) -> envs.Deployment:
    return envs.Deployment(use_conda=opts.use_conda or opts.conda_create_envs_only,
                           use_envmodules=opts.use_envmodules, conda_prefix=opts.conda_prefix,
                           wrapper_prefix=opts.wrapper_prefix or wrappers.DEFAULT_PREFIX)


def _resolve(graph: Graph, workflow: Any, spec: list[tuple[str, str]], storage: Any) -> None:
    try:
        resolve_targets(graph, workflow, spec)
    except FlowmakeError as e:
        if storage is not None:  # "'.flowmake/storage/s3/b/k' does not exist": say which object
            e.details.extend(storage.objects_named(e.message))
        raise


def _default_storage(opts: Options) -> tuple[str, str] | None:
    if opts.default_storage_provider is None:
        if opts.default_storage_prefix is not None:
            raise UsageError("--default-storage-prefix needs --default-storage-provider s3")
        return None
    return (opts.default_storage_provider, opts.default_storage_prefix or "")


def _storage(workflow: Any, opts: Options, store: Store, digester: Digester, readonly: bool) -> Any:
    """The objects behind the rule file's storage paths (``storage.py``); None when it has none."""
    if workflow.storage is None or not workflow.storage.active:
        return None
    from flowmake.storage import Storage
    from flowmake.storage_s3 import S3Objects

    toml = load_settings(os.getcwd(), opts.profile).storage
    return Storage(workflow.storage.configured(toml), S3Objects(store.path), digester, readonly=readonly)


def _backend_of(opts: Options) -> str:
    return opts.backend or load_settings(os.getcwd(), opts.profile).backend


def _apply_resource_flags(opts: Options, workflow: Any) -> dict[str, list[str]]:
    """--default-resources, --set-resources, --set-threads (see ``overrides``); their text is
    returned for the job processes, which apply them again."""
    cluster = _backend_of(opts) in CLUSTER_BACKENDS
    if opts.default_resources is None and not opts.set_resources and not opts.set_threads and not cluster:
        return {}
    from flowmake.overrides import for_options

    flags = for_options(opts, cluster)
    flags.apply(workflow, lambda w: print(f"flowmake: warning: {w}", file=sys.stderr))
    return flags.args


def _facts(session: Session, forced: Callable[[Step], bool]) -> Facts:
    store, dig = session.store, session.digester
    incomplete = store.incomplete_outputs()
    in_flight = store.in_flight_elsewhere()

    stat = session.storage.stat_fn(dig.stat) if session.storage is not None else dig.stat

    def newer_than(outputs: Iterable[str], inputs: Iterable[str]) -> bool:
        out_times = [st.st_mtime_ns for st in map(stat, outputs) if st is not None]
        in_times = [st.st_mtime_ns for st in map(stat, inputs) if st is not None]
        return bool(out_times) and (not in_times or min(out_times) >= max(in_times))

    return Facts(
        digest=session.storage.digest_fn(dig.digest) if session.storage is not None else dig.digest,
        trace=store.trace,
        trace_head=store.trace_head,
        incomplete=incomplete.__contains__,
        forced=forced,
        newer_than=newer_than,
        image_digest=_memoised(session.image_digest) if session.image_digest else (lambda ref: ref),
        known_key=session.known_keys.get,
        in_flight=in_flight.__contains__,
        ignored=frozenset(ALL_TRIGGERS) - set(session.opts.rerun_triggers),
        **_snakemake_provenance(session.workdir),
    )


def _snakemake_provenance(workdir: str) -> dict[str, Any]:
    """A directory Snakemake built: its records decide how its untraced outputs are adopted."""
    from flowmake.snakemake_metadata import SnakemakeMetadata

    meta = SnakemakeMetadata(workdir)
    return {"provenance": meta.provenance} if meta.present else {}


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
            return _run(session, _selected_steps(session), backend, local, cores, job_cores)
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


def _run(session: Session, steps: list[Step], backend: Any, local: Any, cores: int, job_cores: int) -> int:
    from flowmake.scheduler import Scheduler, SchedulerOptions

    opts = session.opts
    _refuse_protected(session, steps)
    ctx = JobContext(workdir=session.workdir, flowfile=session.flowfile, config_overrides=session.config_overrides,
                     configfiles=list(opts.configfiles), cores=job_cores, deployment=session.workflow.deployment,
                     default_storage=_default_storage(opts), scatter=dict(opts.set_scatter),
                     resource_args=session.resource_args)
    progress = Progress(quiet=opts.quiet, started=opts.started)
    envs.prepare(_rules_to_run(session, steps), ctx.deployment, session.workdir, progress.note)
    if opts.conda_create_envs_only:
        return 0
    _stop_orphans(session, progress.note)
    sched = Scheduler(
        session.graph, session.plan, store=session.store, digest=_fresh_digest(session.digester, session.storage),
        backend=backend, local=local, ctx=ctx, progress=progress, storage=session.storage,
        options=SchedulerOptions(cores=cores, jobs=opts.jobs, limits=opts.resources, keep_going=opts.keep_going,
                                 retries=opts.retries, notemp=opts.notemp, printshellcmds=opts.printshellcmds),
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



def list_rules(opts: Options) -> int:
    from flowmake.flowfile import load_workflow

    enter_directory(opts)
    flowfile = find_flowfile(opts.flowfile)
    wf = load_workflow(flowfile, config_overrides=_parse_config(opts.config), configfiles=opts.configfiles,
                       default_storage=_default_storage(opts), scatter=opts.set_scatter)
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
        for step in _selected_steps(session):
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
