"""A step's outputs around its job: a clean slate before it, and after it the checks, the
``touch()``/``protected()`` flags, the ``benchmark:`` file and the traces that make them current.

Traces are recorded only for what the job really read: inputs are digested again when it ends, and
one that changed while it ran marks the traces so they match no key (the step stays out of date).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import time
from typing import TYPE_CHECKING, Any, Callable, Sequence

from flowmake.graph import Step
from flowmake.namedlist import Flag
from flowmake.pipes import STREAM_DIGEST, real_outputs
from flowmake.planner import with_current_key
from flowmake.records import Trace

if TYPE_CHECKING:
    from flowmake.planner import StepPlan
    from flowmake.store import Store


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
    inst = step.instance
    flags = inst.flags if inst is not None else None
    for out in step.outputs:
        full = os.path.join(workdir, out)
        if not flags or Flag.UPDATE not in flags.get(out, ()):  # update(): kept
            remove_path(full)
        os.makedirs(os.path.dirname(full) or workdir, exist_ok=True)
    if inst is not None:
        for log in inst.log:
            os.makedirs(os.path.dirname(os.path.join(workdir, log)) or workdir, exist_ok=True)
        if inst.benchmark:
            os.makedirs(os.path.dirname(os.path.join(workdir, inst.benchmark)) or workdir, exist_ok=True)


def finish_outputs(step: Step, workdir: str) -> list[str]:
    """Create missing log files, touch ``touch()`` outputs, protect ``protected()`` ones; return
    declared outputs still missing (or of the wrong kind)."""
    inst = step.instance
    missing = []
    for log in inst.log if inst is not None else ():
        full = os.path.join(workdir, log)
        if not os.path.lexists(full):  # a job that wrote no log still leaves one, as in Snakemake
            open(full, "a").close()
    files = real_outputs(step)
    for out in step.outputs:
        full = os.path.join(workdir, out)
        if out not in files:  # a pipe or service: never left behind
            remove_path(full)
            continue
        flags = inst.flags.get(out, ()) if inst is not None else ()
        if Flag.TOUCH in flags:
            if Flag.DIRECTORY in flags:  # touch(directory(...)): a directory, as in Snakemake
                os.makedirs(full, exist_ok=True)
            else:
                open(full, "a").close()
            os.utime(full)
        if not os.path.lexists(full):
            missing.append(out)
        elif (Flag.DIRECTORY in flags) != os.path.isdir(full):  # Snakemake checks this too
            missing.append(f"{out} (a directory: declare it with directory())" if os.path.isdir(full)
                           else f"{out} (a file, not the directory() it is declared as)")
        elif Flag.ENSURE in flags and (why := _not_as_ensured(step, out, full)):
            missing.append(f"{out} ({why})")
        elif Flag.PROTECTED in flags:
            mode = os.stat(full).st_mode
            os.chmod(full, mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    return missing


def _not_as_ensured(step: Step, out: str, full: str) -> str | None:
    """Why ``out`` is not what its ``ensure()`` asks for (empty, another SHA-256), or None."""
    spec = next((e.data[i][Flag.ENSURE] for e in step.rule._output
                 for i, p in enumerate(e.patterns)
                 if Flag.ENSURE in e.data[i] and p.match(out) is not None), None)
    if spec is None:
        return None
    if spec.non_empty and os.path.isfile(full) and os.path.getsize(full) == 0:
        return "empty, though declared ensure(non_empty=True)"
    want = spec.sha256
    if callable(want):
        want = want(step.instance.wildcards if step.instance is not None else None)
    if want is not None and os.path.isfile(full):
        h = hashlib.sha256()
        with open(full, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        got = h.hexdigest()
        if got != str(want).lower():
            return f"SHA-256 {got}, though declared ensure(sha256={want})"
    return None


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


# --benchmark-extended: Snakemake's further columns (cpu_usage is NA, as cpu_time: not measured).
EXTENDED_HEADER = "jobid\trule_name\twildcards\tparams\tthreads\tcpu_usage\tresources\tinput_size_mb"


def write_benchmark(step: Step, workdir: str, runtime_s: float | None, peak_rss_kb: int | None,
                    extended: bool = False, jobid: int = 0) -> None:
    """The rule's ``benchmark:`` file, with Snakemake's columns; what the OS did not report is NA.
    A ``.jsonl`` file gets one JSON object instead (keys sorted), as Snakemake writes it."""
    inst = step.instance
    if inst is None or not inst.benchmark:
        return
    secs = runtime_s or 0.0
    m, s = divmod(int(secs), 60)
    h, m = divmod(m, 60)
    rss = f"{peak_rss_kb / 1024:.2f}" if peak_rss_kb else "NA"
    header = BENCHMARK_HEADER.split("\t") + (EXTENDED_HEADER.split("\t") if extended else [])
    row: list[Any] = [f"{secs:.4f}", f"{h}:{m:02d}:{s:02d}", rss] + ["NA"] * 7
    if extended:
        row += [jobid, step.rule.name, dict(inst.wildcards.items()), dict(inst.params.items()),
                inst.threads, "NA", dict(inst.resources.items()), _input_size_mb(workdir, inst.input)]
    path = os.path.join(workdir, inst.benchmark)
    if path.endswith(".jsonl"):
        record = dict(zip(header, row))
        record["s"] = round(secs, 4)
        text = json.dumps(record, sort_keys=True, default=str) + "\n"
    else:
        text = "\t".join(header) + "\n" + "\t".join(map(str, row)) + "\n"
    os.makedirs(os.path.dirname(path) or workdir, exist_ok=True)
    # Written whole or not at all: a reader (or a run stopped mid-write) never sees half a file.
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _input_size_mb(workdir: str, inputs: Sequence[str]) -> dict[str, float]:
    """Each input's size in MiB (Snakemake's input_size_mb column)."""
    sizes = {}
    for f in inputs:
        try:
            sizes[f] = os.stat(os.path.join(workdir, f)).st_size / 1024 / 1024
        except OSError:
            continue
    return sizes


def read_products(step: Step, producer: Any) -> list[str]:
    """The step's ``log:`` and ``benchmark:`` files that another step reads (the graph made this
    step their producer): digested afresh once the job wrote them."""
    inst = step.instance
    if inst is None:
        return []
    return [p for p in (*inst.log, inst.benchmark) if p and producer.get(p) is step]


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
    return [p for p, d in inputs
            if d != "ancient" and not d.startswith(STREAM_DIGEST) and digest(p, settled=False) not in (d, None)]


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
    for out in real_outputs(step):  # a pipe or service has no content to vouch for
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
