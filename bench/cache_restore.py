"""Restoring from a directory cache, for `compare.py --only cache`: MB/s next to `cp -r`.

Run as a script, it builds the file sets in a temp dir, publishes each into a directory cache
(`flowmake.cache`, whichever PYTHONPATH gives), then times `Cache.restore` of the whole entry into
an empty folder against `cp -r` of the same files, alternating the two, and prints one JSON
object. A restore streams every blob through BLAKE3 and renames it into place; `cp -r` only
copies. Both read what was just written, so both read from the page cache: the numbers compare
the work each does per byte, not the disk. It also times `Cache.lookup` (a hit, read and checked,
and a miss) among 10,000 entries: what asking the cache costs a step that would run.

`run` starts it once per tool and rep, like micro.py; `render` makes the table.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Sequence

import children  # bench/ is on the path: these run as scripts, or are imported by compare.py

SETS = {"200 files of 1 MB": (200, 1 << 20), "2 files of 100 MB": (2, 100 << 20)}
INNER = 3  # restore/cp pairs per process; the median is kept
LOOKUP_ENTRIES = 10_000
MEASUREMENTS = [f"{name}: {what}" for name in SETS for what in ("restore MB/s", "cp -r MB/s")] + [
    "lookup, hit (µs)", "lookup, miss (µs)"]


def measure_here(base: str) -> dict[str, float]:
    from flowmake.cache import Mode, open_cache
    from flowmake.digest import Digester, StatCache

    out: dict[str, float] = {}
    for n, (name, (count, size)) in enumerate(SETS.items()):
        wd = os.path.join(base, f"wd{n}")
        os.makedirs(os.path.join(wd, "out"))
        for i in range(count):
            with open(os.path.join(wd, "out", f"f{i:04d}.bin"), "wb") as fh:
                fh.write(os.urandom(size))
        cache = open_cache(os.path.join(base, f"cache{n}"), Mode.READWRITE)
        digester = Digester(StatCache())
        key = f"{n:02d}" * 32
        cache.publish(key, ["out"], wd, lambda p: digester.digest(os.path.join(wd, p)))
        manifest = cache.lookup(key)
        if manifest is None or manifest.size != count * size:
            raise SystemExit("cache bench: the published entry is not whole")
        restores, copies = [], []
        for rep in range(INNER):
            dest = os.path.join(base, f"restore{n}-{rep}")
            os.makedirs(dest)
            started = time.perf_counter()
            cache.restore(manifest, dest)
            restores.append(time.perf_counter() - started)
            copy = os.path.join(base, f"copy{n}-{rep}")
            os.makedirs(copy)
            started = time.perf_counter()
            subprocess.run(["cp", "-r", os.path.join(wd, "out"), copy], check=True)
            copies.append(time.perf_counter() - started)
            shutil.rmtree(dest)
            shutil.rmtree(copy)
        mb = count * size / 1e6
        out[f"{name}: restore MB/s"] = mb / statistics.median(restores)
        out[f"{name}: cp -r MB/s"] = mb / statistics.median(copies)
        shutil.rmtree(wd)
    out.update(_lookups(base))
    return out


def _lookups(base: str) -> dict[str, float]:
    from flowmake.cache import Mode, open_cache

    cache = open_cache(os.path.join(base, "lookups"), Mode.READWRITE)
    keys = [f"{i:064x}" for i in range(LOOKUP_ENTRIES)]
    for k in keys:  # small entries, as most steps' are: one output file
        d = k[-32:]
        body = {"version": 1, "key": k, "outputs": {"out/x.txt": d},
                "files": [["out/x.txt", d, 10, 0o644]], "links": [], "dirs": []}
        cache.store.write_manifest(k, json.dumps(body).encode())
    if cache.lookup(keys[0]) is None:
        raise SystemExit("cache bench: a lookup of a present entry missed")
    started = time.perf_counter()
    for k in keys:
        cache.lookup(k)
    hit = (time.perf_counter() - started) / len(keys)
    started = time.perf_counter()
    for i in range(len(keys)):
        cache.lookup(f"{i + LOOKUP_ENTRIES:064x}")
    miss = (time.perf_counter() - started) / len(keys)
    return {"lookup, hit (µs)": hit * 1e6, "lookup, miss (µs)": miss * 1e6}


def run(tools: Sequence[Any], reps: int, timeout: float,
        log: Callable[[str], None]) -> dict[str, dict[str, Any]]:
    """tool name -> measurement -> the value of each rep, or tool name -> {"failed": why}."""
    return children.run_each(__file__, MEASUREMENTS, "cache", tools, reps, timeout, log,
                             lambda m, v: f"{m} {v:.0f}")


def render(results: dict[str, dict[str, Any]], names: Sequence[str]) -> str:
    def med(n: str, m: str) -> float | None:
        vals = results.get(n, {}).get(m)
        return statistics.median(vals) if isinstance(vals, list) and vals else None

    def cell(n: str, m: str, fmt: str = "{:,.0f}") -> str:
        failed = results.get(n, {}).get("failed")
        value = med(n, m)
        return f"failed ({failed})" if failed else "–" if value is None else fmt.format(value)

    first = names[0]
    lines = ["## Restore from a directory cache", "",
             "MB/s of `Cache.restore` (every blob hashed while it streams, written to a temporary "
             "name, renamed into place) next to `cp -r` of the same files, both reading what was "
             "just written (the page cache). Median over reps; each rep is a fresh process keeping "
             f"the median of {INNER} restore/copy pairs.", "",
             "| files | " + "".join(f"{n} restore MB/s | " for n in names)
             + f"cp -r MB/s | {first} restore / cp -r |",
             "|---|" + "---:|" * (len(names) + 2)]
    for name in SETS:
        restore, cp = med(first, f"{name}: restore MB/s"), med(first, f"{name}: cp -r MB/s")
        lines.append(f"| {name} | " + "".join(f"{cell(n, f'{name}: restore MB/s')} | " for n in names)
                     + f"{cell(first, f'{name}: cp -r MB/s')} | "
                     + (f"{restore / cp:.2f} |" if restore and cp else "– |"))
    lines += ["", f"`Cache.lookup` among {LOOKUP_ENTRIES:,} entries, µs per call (a hit reads, checks "
              "and touches the manifest; a miss is one failed open):", "",
              "| lookup | " + "".join(f"{n} µs | " for n in names), "|---|" + "---:|" * len(names)]
    for m, label in (("lookup, hit (µs)", "hit"), ("lookup, miss (µs)", "miss")):
        lines.append(f"| {label} | " + "".join(f"{cell(n, m, '{:.0f}')} | " for n in names))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(json.dumps(measure_here(sys.argv[1])))
