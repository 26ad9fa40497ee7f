"""The ``flowmake`` command: Snakemake's everyday flags, parsed into ``api.Options``.

Thin on purpose: everything it does is in ``api``. User errors print one message and exit 2 (1 when
a job failed, 130 when interrupted); anything else is a bug and says so.

Ctrl-C (SIGINT) and SIGTERM mean the same at every moment: exit 130 with one line, no traceback.
``entry`` takes both signals over before anything else happens, so the module imports only what
the interpreter has already loaded: a signal during those imports is Python's KeyboardInterrupt,
which only ``__main__`` can catch. While jobs run, the scheduler swaps in its own handler (cancel
the jobs, remove partial outputs) and puts ours back afterwards.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    import argparse
    from typing import Sequence

    from flowmake import api

INTERRUPTED = "flowmake: interrupted"
TRIGGERS = ("mtime", "params", "input", "software-env", "code")


def _parser() -> argparse.ArgumentParser:
    import argparse

    from flowmake import __version__, cli_flags

    p = argparse.ArgumentParser(
        prog="flowmake",
        description="Build the requested targets from a Flowfile (or Snakefile), running exactly the "
        "steps whose inputs, code or parameters changed.",
        epilog="other commands: `flowmake cache stats|gc` (the shared cache's size, and its upkeep), "
        "`flowmake spot list|cleanup` (the spot backend's instances); each takes -h.",
    )
    p.add_argument("targets", nargs="*", metavar="TARGET", help="files or rule names (default: the first rule)")
    p.add_argument("-s", "--snakefile", "--flowfile", dest="flowfile", metavar="FILE",
                   help="rule file (default: Flowfile, Snakefile, workflow/Snakefile)")
    p.add_argument("-d", "--directory", metavar="DIR", help="working directory")
    p.add_argument("-n", "--dry-run", "--dryrun", action="store_true", help="show what would run and why")
    p.add_argument("--json", action="store_true", help="with -n: the plan as JSON")
    p.add_argument("-p", "--printshellcmds", action="store_true", help="print the commands that run")
    p.add_argument("-c", "--cores", type=_count, metavar="N", help="cores to use (default: all)")
    p.add_argument("-j", "--jobs", type=_jobs, metavar="N", help="jobs at once (cores on the local backend); "
                   "unlimited: the backend's own limit")
    p.add_argument("-q", "--quiet", action="store_true", help="print only errors and the summary of failures")
    p.add_argument("-k", "--keep-going", action="store_true", help="go on with independent steps after a failure")
    p.add_argument("--config", nargs="+", default=[], metavar="KEY=VALUE", help="override config values")
    p.add_argument("--configfile", "--configfiles", nargs="+", default=[], metavar="FILE", help="extra config files")
    p.add_argument("-F", "--forceall", action="store_true", help="run every step needed for the targets")
    p.add_argument("-f", "--force", action="store_true", help="run the steps that make the targets")
    p.add_argument("-R", "--forcerun", nargs="+", default=[], metavar="RULE|FILE",
                   help="run these rules or files and everything downstream")
    p.add_argument("--until", nargs="+", default=[], metavar="RULE|FILE", help="run only up to these")
    p.add_argument("--omit-from", nargs="+", default=[], metavar="RULE|FILE", help="leave these and their downstream out")
    p.add_argument("-l", "--list", action="store_true", help="list rules with their file and line")
    p.add_argument("--dag", nargs="?", const="dot", choices=["dot", "mermaid", "mermaid-js"],
                   help="print the step graph (mermaid-js: Snakemake's own Mermaid layout)")
    p.add_argument("--why", metavar="FILE", help="tell what made FILE, from what, and whether it is up to date")
    p.add_argument("--summary", "-D", action="store_true", help="one line per output: rule, date, state")
    p.add_argument("--touch", "-t", action="store_true", help="record current outputs as up to date without running")
    p.add_argument("--list-changes", choices=["input", "code", "params"], help="outputs whose input/code/params changed")
    for kind, short in (("input", "li"), ("code", "lc"), ("params", "lp")):
        p.add_argument(f"--list-{kind}-changes", f"--{short}", dest="list_changes", action="store_const",
                       const=kind, help=f"= --list-changes {kind}")
    p.add_argument("--notemp", "--no-temp", action="store_true", help="keep temp() outputs")
    p.add_argument("--retries", "--restart-times", type=int, default=0, metavar="N", help="retries for failed jobs")
    p.add_argument("--resources", "--res", nargs="+", default=[], metavar="NAME=N", help="global limits, e.g. mem_mb=8000")
    p.add_argument("--set-scatter", nargs="+", default=[], metavar="NAME=N", help="scatter counts over the scattergather: ones")
    p.add_argument("--backend", "-e", "--executor", metavar="NAME",
                   help="where jobs run: local, docker, ssh, slurm, spot (default: local)")
    p.add_argument("--profile", action="append", metavar="DIR|FILE",
                   help="a Snakemake profile (directory, its config.yaml, or a name) or a flowmake .toml "
                        "settings file; repeatable; default $SNAKEMAKE_PROFILE")
    p.add_argument("--workflow-profile", metavar="DIR|none", help="default: profiles/default beside the rule file")
    p.add_argument("--default-resources", "--default-res", nargs="*", metavar="NAME=VALUE",
                   help="resources of rules that do not set them (starts from Snakemake's mem_mb/disk_mb/tmpdir)")
    p.add_argument("--set-resources", nargs="+", default=[], metavar="RULE:NAME=VALUE", help="override a rule's resources")
    p.add_argument("--set-threads", nargs="+", default=[], metavar="RULE=N", help="override a rule's threads")
    p.add_argument("--rerun-triggers", nargs="+", choices=TRIGGERS, default=list(TRIGGERS),
                   help="which changes rerun a step (default: all; input changes always do)")
    p.add_argument("--latency-wait", "--output-wait", "-w", type=int, metavar="SECONDS",
                   help="cluster jobs: wait this long for outputs to appear on a shared filesystem (default 5)")
    p.add_argument("--max-jobs-per-timespan", metavar="N/TIME",
                   help="cluster jobs: submit at most N per TIME, e.g. 100/1s (Snakemake's default)")
    p.add_argument("--verbose", action="store_true", help="print commands, profiles used and each sbatch script")
    p.add_argument("--default-storage-provider", metavar="NAME",
                   help="keep every input and output not marked local() in this storage (s3; none: no default)")
    p.add_argument("--default-storage-prefix", metavar="URL", help="where in it, e.g. s3://bucket/prefix")
    p.add_argument("--version", action="version", version=f"flowmake {__version__}")
    cli_flags.add_flags(p)
    sdm = p.add_argument_group("software deployment (conda:, envmodules:, wrapper: directives)")
    sdm.add_argument("--use-conda", action="store_true", help="run jobs in their rule's conda environment")
    sdm.add_argument("--use-envmodules", action="store_true", help="load a rule's envmodules: before its jobs")
    sdm.add_argument("--sdm", "--software-deployment-method", nargs="+", default=[], choices=["conda", "env-modules"],
                     metavar="METHOD", help="conda and/or env-modules (Snakemake 8's spelling of the two above)")
    sdm.add_argument("--conda-prefix", metavar="DIR", help="where conda environments live (default: .flowmake/conda)")
    sdm.add_argument("--conda-create-envs-only", action="store_true", help="create the environments the jobs need, run nothing")
    sdm.add_argument("--wrapper-prefix", metavar="URL|DIR", help="where wrapper: names are looked up "
                     "(default: Snakemake's wrapper repository; file:///path works offline)")
    sdm.add_argument("--shadow-prefix", metavar="DIR", help="where shadow: jobs run "
                     "(DIR/shadow; default: .flowmake/shadow)")
    habits = p.add_argument_group("Snakemake habits flowmake does not need (accepted, no effect)")
    habits.add_argument("-r", "--reason", action="store_true", help="reasons are always shown")
    habits.add_argument("--rerun-incomplete", "--ri", action="store_true",
                        help="steps a killed run left unfinished always rerun")
    habits.add_argument("--unlock", action="store_true", help="there is no lock to remove: dead runs' locks free themselves")
    habits.add_argument("--nolock", action="store_true", help="per-output locks are cheap and always on")
    habits.add_argument("--show-failed-logs", action="store_true", help="a failed job's log tail is always shown")
    habits.add_argument("--local-cores", type=int, metavar="N", help="localrules run within -c cores")
    habits.add_argument("--max-status-checks-per-second", type=float, metavar="N",
                        help="one squeue per poll interval covers all jobs")
    habits.add_argument("--scheduler", metavar="ilp|greedy", help="flowmake orders jobs by priority and readiness")
    return p


def _count(text: str) -> int:
    import argparse

    if text == "all":
        from flowmake.settings import available_cores

        return available_cores()
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'all', got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _jobs(text: str) -> int | None:
    return None if text == "unlimited" else _count(text)


def _pairs(items: Sequence[str], what: str) -> dict[str, str]:
    from flowmake.errors import UsageError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{what} expects NAME=VALUE, got {item!r}")
        out[key.strip()] = value
    return out


def main(argv: Sequence[str] | None = None) -> int:
    import traceback

    from flowmake import api
    from flowmake.errors import FlowmakeError

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["cache"] and argv[1:2] in (["stats"], ["gc"], ["-h"], ["--help"]):
        return _cache_command(argv[1:])  # `flowmake cache stats|gc`; a rule named cache still builds
    if argv[:1] == ["spot"] and argv[1:2] in (["list"], ["cleanup"], ["-h"], ["--help"]):  # the spot backend's instances
        try:
            return api.spot(argv[1:])
        except FlowmakeError as err:
            print(str(err), file=sys.stderr)
            return err.exit_code
    args = _parser().parse_args(argv)
    if args.unlock:
        print("nothing to unlock: locks of runs that died are released by themselves", file=sys.stderr)
        return 0
    try:
        opts = _options(args, argv)
        if args.list:
            return api.list_rules(opts)
        if args.dag:
            return api.dag(opts, args.dag)
        if args.why:
            return api.why(opts, args.why)
        if args.summary:
            return api.summary(opts)
        if args.list_changes:
            return api.list_changes(opts, args.list_changes)
        if args.touch:
            return api.touch(opts)
        return api.build(opts)
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return 130
    except BrokenPipeError:  # `flowmake -n | head`: the reader has all it wanted, as with any Unix tool
        _quiet_stdout()
        return 141  # 128 + SIGPIPE, what a shell reports for a tool killed by the closed pipe
    except FlowmakeError as err:
        if _by_signal(err):
            print(INTERRUPTED, file=sys.stderr)
            return 130
        print(str(err), file=sys.stderr)
        return err.exit_code
    except Exception as exc:  # a bug, not the user's mistake: say so, with the traceback to report
        if _by_signal(exc):
            print(INTERRUPTED, file=sys.stderr)
            return 130
        traceback.print_exc()
        print("flowmake: internal error (this is a bug; please report it with the traceback above)", file=sys.stderr)
        return 3


def _cache_command(argv: list[str]) -> int:
    import traceback

    from flowmake import cache_admin
    from flowmake.errors import FlowmakeError

    try:
        return cache_admin.main(argv)
    except FlowmakeError as err:
        print(str(err), file=sys.stderr)
        return err.exit_code
    except Exception:  # a bug, as in main
        traceback.print_exc()
        print("flowmake: internal error (this is a bug; please report it with the traceback above)", file=sys.stderr)
        return 3


def _options(args: argparse.Namespace, argv: list[str]) -> api.Options:
    """The parsed command line, completed by the profiles, as ``api.Options``."""
    from flowmake import api, cli_flags

    toml: str | None = None
    sources: dict[str, str] = {}
    if _may_have_profiles(args):
        from flowmake.profiles import apply_profiles

        profiles = apply_profiles(args, argv, _parser)
        toml, sources = profiles.toml, profiles.sources
        if profiles.used and not args.quiet:
            print(f"flowmake: using profile{'s' if len(profiles.used) > 1 else ''} "
                  + " and ".join(profiles.used) + " for default flags", file=sys.stderr)
    resources = {k: _int(v, "--resources") for k, v in _pairs(args.resources, "--resources").items()}
    _pairs(args.config, "--config")  # each item is KEY=VALUE; a repeated KEY merges (parse_config)
    flags = cli_flags.options(args)  # first: targets after --cache URL go back to args.targets
    return api.Options(
        targets=list(args.targets), flowfile=args.flowfile, directory=args.directory,
        dry_run=args.dry_run, json=args.json, printshellcmds=args.printshellcmds or args.verbose,
        cores=args.cores, jobs=args.jobs, quiet=args.quiet, keep_going=args.keep_going,
        config=list(args.config), configfiles=list(args.configfile),
        forceall=args.forceall, force=args.force, forcerun=list(args.forcerun),
        until=list(args.until), omit_from=list(args.omit_from), notemp=args.notemp,
        retries=args.retries, resources=resources, backend=args.backend, profile=toml,
        default_resources=args.default_resources, set_resources=list(args.set_resources),
        set_threads=list(args.set_threads), rerun_triggers=list(args.rerun_triggers),
        latency_wait=args.latency_wait, max_jobs_per_timespan=args.max_jobs_per_timespan,
        verbose=args.verbose, wrapper_prefix=args.wrapper_prefix,
        shadow_prefix=args.shadow_prefix,
        # Snakemake's `none`: no default storage, as without the flag.
        default_storage_provider=None if args.default_storage_provider == "none"
        else args.default_storage_provider,
        default_storage_prefix=args.default_storage_prefix, sources=sources,
        use_conda=args.use_conda or "conda" in args.sdm,
        use_envmodules=args.use_envmodules or "env-modules" in args.sdm,
        conda_prefix=args.conda_prefix, conda_create_envs_only=args.conda_create_envs_only,
        set_scatter={k: _int(v, "--set-scatter") for k, v in _pairs(args.set_scatter, "--set-scatter").items()},
        **flags,
    )


def _may_have_profiles(args: argparse.Namespace) -> bool:
    """Whether profiles.apply_profiles has anything to look at (most runs: no, so it is not imported)."""
    if args.profile or args.workflow_profile or os.environ.get("SNAKEMAKE_PROFILE"):
        return True
    base = args.directory or "."
    dirs = [".", base, os.path.join(base, "workflow")]
    if args.flowfile:
        dirs.append(os.path.dirname(args.flowfile))
    return any(os.path.isdir(os.path.join(d or ".", "profiles")) for d in dirs)


def _quiet_stdout() -> None:
    # Python flushes stdout again at exit, into the same closed pipe: point it at /dev/null first.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _int(value: str, what: str) -> int:
    from flowmake.errors import UsageError

    try:
        return int(value)
    except ValueError:
        raise UsageError(f"{what} values must be whole numbers, got {value!r}") from None


def entry() -> None:
    """The console script: ``main``, then leave without tearing down the heap.

    A plan over 100,000 steps leaves millions of objects; freeing them one by one at exit takes
    longer than some whole no-op runs. Everything that must reach disk is closed by then (an
    interrupted run may leave a frame unwritten: the store survives that, as it survives SIGKILL).
    """
    try:
        trap_signals()
        print_any_path()
        code = main()
    except KeyboardInterrupt:  # a signal before main's own handling, or Python's before ours
        code = _leave_interrupted()
    except SystemExit as exit:  # argparse's --help, --version and usage errors (always an int)
        code = exit.code if isinstance(exit.code, int) else 0 if exit.code is None else 1
    _ignore_signals()  # leaving: a late signal must not turn into a traceback
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (KeyboardInterrupt, OSError):  # a closed pipe, or a signal just before the line above
        pass
    os._exit(code)


# The signals trap_signals' handler has turned into KeyboardInterrupt in this process. Python wraps
# an exception raised in some places (RuntimeError from ``__set_name__`` while a class is made,
# user code in the rule file re-raising): once a signal came, whatever error follows is its doing.
_SIGNALLED: list[int] = []


def _stop(signum: int, frame: object) -> None:
    _SIGNALLED.append(signum)
    raise KeyboardInterrupt


def trap_signals() -> None:
    """SIGINT and SIGTERM both become KeyboardInterrupt: exit 130 at any moment, like the scheduler.

    The exception unwinds through the ``finally`` clauses that close the store and the backend. A
    second signal meanwhile cuts that short, which leaves the store as safe as a SIGKILL would; the
    jobs die with flowmake (the backends see to that).
    """
    import signal

    sys.unraisablehook = _redeliver
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)


def _redeliver(info: sys.UnraisableHookArgs) -> None:
    """A KeyboardInterrupt raised where Python can only print it (a weakref callback such as the
    import system's module locks, a ``__del__``) is lost: deliver the signal again, soon."""
    if _SIGNALLED and issubclass(info.exc_type, KeyboardInterrupt):
        import _thread

        # From another thread, a moment later: delivered now, it would be handled right here
        # again. Should it land in such a place once more, this hook sends it once more.
        _thread.start_new_thread(_interrupt_main_soon, (_SIGNALLED[-1],))
        return
    sys.__unraisablehook__(info)


def _interrupt_main_soon(signum: int) -> None:
    import _thread
    import signal
    import time

    time.sleep(0.002)
    _thread.interrupt_main(signal.Signals(signum))


def print_any_path() -> None:
    """stdout and stderr write a file name that is not UTF-8 with the bytes it has on disk.

    Linux file names are bytes; Python hands undecodable ones over as surrogates (PEP 383), which
    a UTF-8 stream refuses unless told otherwise (in a UTF-8 locale stdout is strict, stderr writes
    ``\\udce9``). Written back as the original bytes, a name shows the way ``ls`` shows it and can
    be piped to other tools; any other unencodable text is backslash-escaped, never an error.
    """
    import codecs

    codecs.register_error("flowmake.path", _original_bytes)
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="flowmake.path")


def _original_bytes(err: UnicodeError) -> tuple[str | bytes, int]:
    if not isinstance(err, UnicodeEncodeError):
        raise err
    part = err.object[err.start:err.end]
    if all(0xDC80 <= ord(c) <= 0xDCFF for c in part):  # surrogateescape's range: bytes 0x80-0xff
        return bytes(ord(c) - 0xDC00 for c in part), err.end
    return part.encode("ascii", "backslashreplace").decode("ascii"), err.end


def _ignore_signals() -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _leave_interrupted() -> int:
    """Say so in one line; 130 like a shell reports a command stopped by Ctrl-C."""
    try:
        _ignore_signals()
        print(INTERRUPTED, file=sys.stderr)
    except (KeyboardInterrupt, OSError):
        pass
    return 130


def _by_signal(exc: BaseException) -> bool:
    """Whether a signal caused this error (it came after one, or wraps a KeyboardInterrupt)."""
    seen: BaseException | None = exc
    for _ in range(20):
        if seen is None:
            break
        if isinstance(seen, KeyboardInterrupt):
            return True
        seen = seen.__cause__ or seen.__context__
    return bool(_SIGNALLED)
