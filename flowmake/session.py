"""A session: what one command works on — the rule file loaded, the graph grown from the targets,
the store opened, the plan made (with the flags that shape each: config, storage, resources).

``api`` opens one per command and then reports the plan or hands it to the scheduler.
"""

from __future__ import annotations

import gc
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from flowmake import envs, graph_memo, wrappers
from flowmake.digest import Digester
from flowmake.errors import FlowmakeError, UsageError
from flowmake.graph import Graph, Step
from flowmake.graph_memo import ExistsLog, GraphMemo, KnownKeys
from flowmake.planner import Facts, Plan, converge
from flowmake.settings import CLUSTER_BACKENDS, load_settings
from flowmake.store import Store
from flowmake.targets import forced_steps, resolve_targets, selected_steps, target_spec

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
    config: list[str] = field(default_factory=list)  # --config KEY=VALUE items, in order
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
    shadow_prefix: str | None = None  # --shadow-prefix (relative to the workdir)
    default_storage_provider: str | None = None
    default_storage_prefix: str | None = None
    sources: dict[str, str] = field(default_factory=dict)  # option → the profile that set it
    # Software deployment (envs.Deployment): --use-conda/--sdm conda, --use-envmodules, --wrapper-prefix.
    use_conda: bool = False
    use_envmodules: bool = False
    conda_prefix: str | None = None
    conda_create_envs_only: bool = False
    # Reading the workflow (cli_flags): --all-temp, --consider-ancient, --replace-workflow-config.
    all_temp: bool = False
    consider_ancient: dict[str, frozenset[str | int]] = field(default_factory=dict)
    replace_workflow_config: bool = False
    benchmark_extended: bool = False  # Snakemake's extra benchmark columns / JSON lines
    batch: tuple[str, int, int] | None = None  # --batch RULE=i/n: (rule, i, n)
    # The shared cache (cache_setup): --cache URL, Snakemake's --cache RULE..., --cache-mode, --no-cache.
    cache_url: str | None = None
    cache_rules: list[str] = field(default_factory=list)
    cache_flag: bool = False  # --cache given, with or without values
    cache_mode: str | None = None
    no_cache: bool = False
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
    cache: Any = None  # cache.Cache, when one is configured (cache_setup)
    cache_outcome: Any = None  # cache_plan.CacheOutcome: what planning asked the cache
    cache_lookup: Any = None  # cache_setup.Lookup: asks no more once the store failed (planning, then the run)

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


def parse_config(items: list[str]) -> dict[str, Any]:
    from flowmake.flowfile.config import parse_overrides

    # Values are read as Snakemake reads them (``true`` stays a string; see parse_value), and a key
    # given twice merges (``block={a: 1}`` then ``block={b: 2}``), as Snakemake does.
    return parse_overrides(items)


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
    overrides = parse_config(opts.config)
    workflow = load_workflow(flowfile, config_overrides=overrides, configfiles=opts.configfiles,
                             deployment=deployment(opts), default_storage=default_storage_of(opts),
                             scatter=opts.set_scatter, cores=opts.cores, reading=reading_of(opts))
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


def reading_of(opts: Options) -> Any:
    from flowmake.flowfile import Reading

    return Reading(all_temp=opts.all_temp, consider_ancient=dict(opts.consider_ancient),
                   replace_config=opts.replace_workflow_config)


def default_storage_of(opts: Options) -> tuple[str, str] | None:
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
    handover = [r.name for r in workflow.rules if r.handover and not r.resource_pairs()]
    if opts.default_resources is None and not opts.set_resources and not opts.set_threads and not cluster:
        if not handover:
            return {}
    from dataclasses import replace

    from flowmake.overrides import for_options
    from flowmake.settings import available_cores

    # A handover: rule with no resources of its own gets all of --resources and the cores, as
    # Snakemake gives it the global resources; as flags, so its job process sees the same.
    cores = opts.cores or available_cores()
    opts = replace(opts, set_resources=[*(f"{n}:{k}={v}" for n in handover for k, v in opts.resources.items()
                                          if not k.startswith("_")), *opts.set_resources],
                   set_threads=[*(f"{n}={cores}" for n in handover), *opts.set_threads])
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
    from flowmake.cache_plan import would_run

    if session.cache is None and would_run(plan):  # a no-op opens no cache (S3: not even boto3)
        from flowmake.cache_setup import open_configured

        session.cache = open_configured(session.opts, load_settings(session.workdir, session.opts.profile))
    if session.cache is not None:  # steps that would run and the shared cache holds: restored
        from flowmake.cache_setup import Lookup, plan_with_cache

        session.cache_lookup = Lookup(session.cache)
        session.cache_outcome = plan_with_cache(plan, session.cache_lookup, session.graph.targets, session.opts)
    return plan


def selected(session: Session) -> list[Step]:
    opts = session.opts
    return selected_steps(session.graph, session.workflow, session.steps, session.workdir,
                          until=opts.until, omit_from=opts.omit_from, batch=opts.batch)


# ---- commands ------------------------------------------------------------------------------------
