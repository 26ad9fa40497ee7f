"""Benchmark flowmake against Snakemake, and against an earlier flowmake, on the same Snakefiles.

Every tool reads the same Snakefile in sibling temp directories. Measurements alternate the
tools rep by rep (so drift on a shared machine hits all of them), each in a fresh child process
whose `getrusage(RUSAGE_CHILDREN)` gives that one command's peak RSS. Writes bench/RESULTS.md.

    python bench/compare.py --setup            # Snakemake into bench/.venv-snakemake
    python bench/compare.py --quick            # minutes
    python bench/compare.py --sizes 1k,10k     # the default
    python bench/compare.py --full             # adds 100k, for Snakemake too (slow)
    python bench/compare.py --tools flowmake --baseline main   # this code vs main, side by side
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

# bench/*.py: this script's directory is on sys.path
import baseline as baseline_tree
import cache_restore
import micro
from tables import Cell, Workload, merge_rows, render

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
VENV = HERE / ".venv-snakemake"
META_DIRS = (".snakemake", ".flowmake")


@dataclass(frozen=True)
class Tool:
    name: str
    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    # Extra flags for the untimed setup build only. Snakemake's default ILP scheduler spends
    # ~0.1 s per job at 10k jobs; greedy gets to the same built state sooner.
    build_args: tuple[str, ...] = ()

    @property
    def slug(self) -> str:
        """The name as one path component (a baseline ref may contain slashes)."""
        return re.sub(r"[^\w.@-]", "_", self.name)


# ---- workloads ----------------------------------------------------------------------------------

def chains(jobs: int) -> Workload:
    """C independent chains of three rules plus one aggregate: 3C + 1 jobs."""
    c = max(1, round((jobs - 1) / 3))
    # The aggregate does not expand {input}: bash -c takes one argument of at most 128 KiB.
    text = f"""N = {c}

rule all:
    input: "out/agg.txt"

rule agg:
    input: expand("out/c/{{i}}.3", i=range(N))
    output: "out/agg.txt"
    shell: "find out/c -name '*.3' | wc -l > {{output}}"

rule s1:
    input: "in/{{i}}.txt"
    output: "out/c/{{i}}.1"
    shell: "cp {{input}} {{output}}"

rule s2:
    input: "out/c/{{i}}.1"
    output: "out/c/{{i}}.2"
    shell: "cp {{input}} {{output}}"

rule s3:
    input: "out/c/{{i}}.2"
    output: "out/c/{{i}}.3"
    shell: "cp {{input}} {{output}}"
"""
    return Workload(f"chains-{fmt_size(jobs)}", 3 * c + 1, text,
                    {f"in/{i}.txt": f"{i}\n" for i in range(c)})


def fanin(width: int) -> Workload:
    """`width` independent jobs feeding one aggregate."""
    text = f"""N = {width}

rule all:
    input: "out/agg.txt"

rule agg:
    input: expand("out/w/{{i}}.out", i=range(N))
    output: "out/agg.txt"
    shell: "find out/w -name '*.out' | wc -l > {{output}}"

rule work:
    input: "in/{{i}}.txt"
    output: "out/w/{{i}}.out"
    shell: "cp {{input}} {{output}}"
"""
    return Workload(f"fanin-{fmt_size(width)}", width + 1, text,
                    {f"in/{i}.txt": f"{i}\n" for i in range(width)})


def deep(depth: int) -> Workload:
    """One chain `depth` long, through a single wildcard rule and an input function."""
    # The constraint keeps n0 (the source) from matching the rule, which would recurse forever.
    text = f"""DEPTH = {depth}

def previous(wildcards):
    i = int(wildcards.i)
    return "in/n0.txt" if i == 1 else f"out/n{{i - 1}}.txt"

rule all:
    input: f"out/n{{DEPTH}}.txt"

rule step:
    input: previous
    output: "out/n{{i,[1-9][0-9]*}}.txt"
    shell: "cp {{input}} {{output}}"
"""
    return Workload(f"deep-{fmt_size(depth)}", depth, text, {"in/n0.txt": "0\n"})


def fmt_size(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def parse_size(text: str) -> int:
    text = text.strip().lower()
    return int(float(text[:-1]) * 1000) if text.endswith("k") else int(text)


def materialise(w: Workload, root: Path) -> None:
    root.mkdir(parents=True)
    (root / "Snakefile").write_text(w.snakefile)
    (root / "in").mkdir()
    for rel, content in w.inputs.items():
        (root / rel).write_text(content)


def wipe(root: Path) -> None:
    """Back to a fresh checkout: no outputs, no metadata of either tool."""
    for name in ("out", *META_DIRS):
        shutil.rmtree(root / name, ignore_errors=True)


def touch_inputs(root: Path) -> None:
    now = time.time_ns()
    for p in (root / "in").iterdir():
        os.utime(p, ns=(now, now))


def output_mtimes(root: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for dirpath, _, files in os.walk(root / "out"):
        for f in files:
            p = os.path.join(dirpath, f)
            out[p] = os.stat(p).st_mtime_ns
    return out


# ---- measuring ----------------------------------------------------------------------------------

def child_measure(cwd: str, log: str, cmd: list[str]) -> None:
    """Runs in a fresh interpreter, so RUSAGE_CHILDREN covers exactly this one command."""
    t0 = time.perf_counter()
    with open(log, "wb") as fh:
        rc = subprocess.run(cmd, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
    print(json.dumps({"wall": wall, "rss_kb": rss, "rc": rc}))


def measure(tool: Tool, root: Path, args: list[str], cell: Cell, timeout: float) -> bool:
    log = root / f"last-{tool.slug}.log"
    helper = [sys.executable, str(Path(__file__).resolve()), "--_measure", str(root), str(log),
              "--", *tool.argv, *args]
    env = {**os.environ, **tool.env}
    # Own session, so a timeout can stop the tool and its jobs too, not just the helper.
    proc = subprocess.Popen(helper, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
        res = subprocess.CompletedProcess(helper, proc.returncode, stdout, stderr)
        data = json.loads(res.stdout.strip().splitlines()[-1])
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.communicate()
        cell.failed = f"timeout after {timeout:.0f}s"
        return False
    except (ValueError, IndexError):
        cell.failed = f"harness error: {res.stderr.strip()[-200:]}"
        return False
    if data["rc"] != 0:
        cell.failed = f"exit {data['rc']}: {last_error_line(log)}"
        tail = log.read_text(errors="replace").splitlines()[-15:]
        log_msg("\n".join(f"    | {line}" for line in tail))  # the table keeps one line only
        return False
    cell.walls.append(data["wall"])
    cell.rss_kb.append(data["rss_kb"])
    return True


def last_error_line(log: Path) -> str:
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    # A traceback's last line names the exception; else the last line that mentions an error.
    hits = ([ln for ln in lines if re.match(r"^[\w.]+(Error|Exception)\b", ln)]
            or [ln for ln in lines if "Error" in ln or "error" in ln])
    return (hits or lines or ["(no output)"])[-1][:160].replace("|", "/")


def run_args(dry: bool = False) -> list[str]:
    # Same flags for both tools; -q last because Snakemake's takes optional values.
    return ["-s", "Snakefile", "-c", "2", *(["-n"] if dry else []), "-q"]


def bench_workload(w: Workload, tools: list[Tool], base: Path, reps: int, full_run: bool,
                   timeout: float, dry_only: bool = False) -> dict[str, dict[str, Cell]]:
    """Returns measurement -> tool name -> Cell."""
    roots = {t.name: base / w.name / t.slug for t in tools}
    for r in roots.values():
        materialise(w, r)
    kinds = ["full run -c 2"] if full_run else ["dry-run -n"] if dry_only else ["dry-run -n", "no-op", "no-op after touch"]
    cells = {k: {t.name: Cell() for t in tools} for k in kinds}
    log_msg(f"{w.name}: {w.jobs} jobs, tools {', '.join(roots)}")

    def each(kind: str, before, args: list[str]) -> None:
        for rep in range(reps):
            order = tools if rep % 2 == 0 else list(reversed(tools))  # alternate who goes first
            for t in order:
                cell = cells[kind][t.name]
                if cell.failed:
                    continue
                before(roots[t.name])
                snap = output_mtimes(roots[t.name])
                ok = measure(t, roots[t.name], args, cell, timeout)
                if ok and kind != "dry-run -n":
                    after = output_mtimes(roots[t.name])
                    n = sum(1 for p, m in after.items() if snap.get(p) != m)
                    cell.note = f"{n} outputs written"
                log_msg(f"  {kind:18} {t.name:14} rep {rep + 1}: "
                    f"{cell.walls[-1]:.2f}s" if ok else f"  {kind} {t.name}: FAILED {cell.failed}")

    if full_run:
        each("full run -c 2", wipe, run_args())
        return cells
    each("dry-run -n", wipe, run_args(dry=True))
    if dry_only:
        return cells
    for t in tools:  # the build the no-op runs start from; timed only for the log
        wipe(roots[t.name])
        build = Cell()
        if not measure(t, roots[t.name], [*run_args(), *t.build_args], build, timeout):
            for kind in ("no-op", "no-op after touch"):
                cells[kind][t.name].failed = f"build {build.failed}"
        log_msg(f"  build {t.name}: " + (f"{build.walls[0]:.1f}s" if build.walls else build.failed))
    each("no-op", lambda root: None, run_args())
    each("no-op after touch", touch_inputs, run_args())
    return cells


def log_msg(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---- tools and machine --------------------------------------------------------------------------

def setup_venv(version: str | None) -> None:
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    spec = f"snakemake=={version}" if version else "snakemake"
    subprocess.run([str(VENV / "bin" / "pip"), "install", "--quiet", spec], check=True)
    log_msg(f"installed {spec} into {VENV.relative_to(REPO)}")


def make_tools(args: argparse.Namespace, base: Path) -> list[Tool]:
    tools = []
    smk = args.snakemake or str(VENV / "bin" / "snakemake")
    if "snakemake" in args.tools:
        if not Path(smk).exists() and not shutil.which(smk):
            sys.exit(f"no Snakemake at {smk}: run `python bench/compare.py --setup` first")
        tools.append(Tool("snakemake", (smk,), build_args=("--scheduler", "greedy")))
    if "flowmake" in args.tools:
        env = {}
        if importlib.util.find_spec("flowmake") is None:  # not installed: use this checkout
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        tools.append(Tool("flowmake", (sys.executable, "-m", "flowmake"), env))
    if args.with_cache:
        if "flowmake" not in args.tools or args.baseline:
            sys.exit("--with-cache is compared with flowmake without a cache: keep flowmake in --tools, no --baseline")
        # The same code with a directory cache configured: its no-op must cost what the plain
        # no-op costs (a step whose outputs are current never asks the cache); its fresh dry-run
        # asks the cache once per step (an empty cache: each lookup a miss).
        cache_dir = base / "cache"
        tools.append(Tool("flowmake+cache", (sys.executable, "-m", "flowmake", "--cache", f"file://{cache_dir}"), env))
    if args.baseline:
        if "flowmake" not in args.tools:
            sys.exit("--baseline is compared with the current flowmake: keep flowmake in --tools")
        bl = baseline_tree.prepare(REPO, args.baseline, base / "baseline")
        log_msg(f"baseline {bl.ref} = {bl.commit[:12]}, laid out in {bl.site}")
        # The same interpreter and installed dependencies; only the flowmake code differs.
        tools.append(Tool(f"flowmake@{bl.ref}", (sys.executable, "-m", "flowmake"), bl.env))
        args.baseline_commit = bl.commit
    return tools


def current_code() -> str:
    """Which code "flowmake" is: this checkout's commit, and whether it has uncommitted edits."""
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"],
                              capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "flowmake",
                                "backends", "rules"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"
    return f"{head or 'unknown'}{' + uncommitted changes' if dirty else ''}"


def version_of(tool: Tool) -> str:
    try:
        res = subprocess.run([*tool.argv, "--version"], capture_output=True, text=True, timeout=120,
                             env={**os.environ, **tool.env})
        out = (res.stdout or res.stderr).strip().splitlines()
        return out[-1] if res.returncode == 0 and out else "unavailable"
    except OSError:
        return "unavailable"


def machine() -> dict[str, str]:
    def grep(path: str, key: str) -> str:
        try:
            for line in Path(path).read_text().splitlines():
                if line.startswith(key):
                    return line.split("=" if "=" in line else ":", 1)[1].strip().strip('"')
        except OSError:
            pass
        return "unknown"
    mem_kb = grep("/proc/meminfo", "MemTotal").split()[0]
    return {
        "CPU": grep("/proc/cpuinfo", "model name"),
        "cores": str(os.cpu_count()),
        "RAM": f"{int(mem_kb) / 1024**2:.1f} GiB" if mem_kb.isdigit() else "unknown",
        "OS": f"{grep('/etc/os-release', 'PRETTY_NAME')}, Linux {platform.release()}",
        "Python": platform.python_version(),
    }


# ---- main ---------------------------------------------------------------------------------------

def make_plan(args: argparse.Namespace) -> list[tuple[Workload, bool]]:
    """(workload, is the timed full run), cheap ones first: RESULTS.md is rewritten after each,
    so an interrupted run still reports everything measured so far."""
    only = kinds(args)
    sizes = sorted(parse_size(s) for s in args.sizes.split(","))
    plan: list[tuple[Workload, bool]] = []
    plan += [(chains(sizes[0]), False)] if "chains" in only else []
    plan += [(chains(parse_size(args.run_jobs)), True)] if "run" in only else []
    plan += [(deep(parse_size(args.depth)), False)] if "deep" in only else []
    plan += [(chains(s), False) for s in sizes[1:]] if "chains" in only else []
    plan += [(fanin(parse_size(args.fanin)), False)] if "fanin" in only else []
    return plan


def kinds(args: argparse.Namespace) -> set[str]:
    return set(filter(None, args.only.split(","))) or {"chains", "fanin", "deep", "run", "micro", "cache"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--_measure":  # internal: see child_measure
        child_measure(argv[1], argv[2], argv[4:])
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--setup", action="store_true", help="create bench/.venv-snakemake and exit")
    p.add_argument("--snakemake-version", help="pin for --setup")
    p.add_argument("--snakemake", help="Snakemake executable (default: the bench venv's)")
    p.add_argument("--sizes", default="1k,10k", help="chain workload sizes in jobs (default 1k,10k)")
    p.add_argument("--fanin", default="10k", help="fan-in width (default 10k)")
    p.add_argument("--depth", default="2k", help="deep-chain length (default 2k)")
    p.add_argument("--run-jobs", default="3k", help="jobs in the timed full run (default 3k)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="small sizes: 1k chains, 1k fan-in, ...")
    p.add_argument("--full", action="store_true", help="add 100k chains, Snakemake included")
    p.add_argument("--snakemake-max", default=None,
                   help="skip Snakemake above this many jobs (default 10k, 100k with --full)")
    p.add_argument("--tools", default="snakemake,flowmake")
    p.add_argument("--baseline", metavar="REF",
                   help="also run this git revision of flowmake (e.g. main, HEAD~3) as a third "
                        "tool flowmake@REF, alternating with the current code")
    p.add_argument("--with-cache", action="store_true",
                   help="also run flowmake with a directory cache configured (flowmake+cache), "
                        "alternating with flowmake without one")
    p.add_argument("--only", default="",
                   help="comma list of workload kinds: chains,fanin,deep,run,micro,cache")
    p.add_argument("--dry-only", action="store_true",
                   help="measure only the dry-run -n (no setup build, no no-op runs)")
    p.add_argument("--timeout", type=float, default=3600, help="per command, seconds")
    p.add_argument("--workdir", help="where to generate workflows (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the generated workflows")
    p.add_argument("--out", default=str(HERE / "RESULTS.md"))
    p.add_argument("--append", action="store_true",
                   help="keep --out's rows for workloads this run does not measure")
    args = p.parse_args(argv)
    if args.setup:
        setup_venv(args.snakemake_version)
        return 0
    if args.quick:
        args.sizes, args.fanin, args.depth, args.run_jobs = "1k", "1k", "200", "300"
    if args.full:
        args.sizes = ",".join(dict.fromkeys([*args.sizes.split(","), "100k"]))
    smk_max = parse_size(args.snakemake_max or ("100k" if args.full else "10k"))
    started = time.monotonic()
    base = Path(args.workdir or tempfile.mkdtemp(prefix="flowmake-bench-"))
    results: list[tuple[Workload, dict[str, dict[str, Cell]]]] = []
    try:
        tools = make_tools(args, base)
        base_name = tools[-1].name if args.baseline or args.with_cache else None
        plan = make_plan(args)
        info = {**machine(), **{f"{t.name} version": version_of(t) for t in tools}}
        if "flowmake" in args.tools:
            info["flowmake code"] = f"this checkout, {current_code()}"
        if args.baseline:
            info[f"{base_name} code"] = f"commit {args.baseline_commit[:12]}, from `git archive`"
        elif args.with_cache:
            info[f"{base_name} code"] = "this checkout, with --cache file://<a fresh directory>"
        micro_text = cache_text = ""

        def write() -> None:  # after each workload, in case of ^C
            info["bench run time"] = f"{(time.monotonic() - started) / 60:.1f} min"
            text = render(results, info, args.reps, base_name) + micro_text + cache_text
            if args.append and Path(args.out).exists():
                text = merge_rows(Path(args.out).read_text(), text)
            Path(args.out).write_text(text)

        flowmakes = [t for t in tools if t.name.startswith("flowmake")]
        if flowmakes and "micro" in kinds(args):  # seconds: first
            log_msg("micro: pattern matching and rule evaluation, per call")
            measured = micro.run(flowmakes, args.reps, args.timeout, log_msg)
            micro_text = "\n" + micro.render(measured, base_name)
            write()
        if flowmakes and "cache" in kinds(args):  # a minute or two: 400 MB written per rep
            log_msg("cache: restore from a directory cache (MB/s, next to cp -r) and lookups")
            measured = cache_restore.run(flowmakes, args.reps, args.timeout, log_msg)
            cache_text = "\n" + cache_restore.render(measured, [t.name for t in flowmakes])
            write()
        for w, full_run in plan:
            active = [t for t in tools if t.name != "snakemake" or w.jobs <= smk_max + 1]
            results.append((w, bench_workload(w, active, base, args.reps, full_run, args.timeout,
                                                       args.dry_only)))
            write()
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(base, ignore_errors=True)
    log_msg(f"wrote {args.out} after {(time.monotonic() - started) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
