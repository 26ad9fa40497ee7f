"""Micro-benchmarks: path matching and rule evaluation, per call, for `compare.py --only micro`.

Run as a script, it times the flowmake it imports (whichever PYTHONPATH gives) and prints one
JSON object, seconds per call by measurement. `run` starts it once per tool and rep, alternating
the tools like the workflow measurements do; `render` makes the table.

The workloads are those the unit tests used to bound by wall clock: a typed pattern matching a
path and missing one, and a rule with named input, log, params and threads matching its output
and instantiating.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import timeit
from typing import Any, Callable, Protocol, Sequence

import children  # bench/ is on the path: these run as scripts, or are imported by compare.py

NUMBER = 20000  # calls per timing
REPEAT = 5      # timings per process; the best is kept (the others measured interruptions)

FLOWFILE = '''rule a:
    input: "data/{sample}.fq", ref="ref.fa"
    output: "out/{sample}.bam"
    log: "logs/{sample}.log"
    params: x=1
    threads: 2
    shell: "bwa {input} > {output}"
'''

MEASUREMENTS = ("Pattern.match, hit", "Pattern.match, miss", "Rule.match_output",
                "Rule.instantiate")


class ToolLike(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def env(self) -> dict[str, str]: ...


def per_call(fn: Callable[[], Any]) -> float:
    return min(timeit.repeat(fn, number=NUMBER, repeat=REPEAT)) / NUMBER


def measure_here(workdir: str) -> dict[str, float]:
    from flowmake.flowfile import load_workflow
    from flowmake.patterns import Pattern
    from flowmake.rules import AllDone

    p = Pattern("results/{sample}/{lane:int}.bam")
    path = os.path.join(workdir, "Flowfile")
    with open(path, "w") as fh:
        fh.write(FLOWFILE)
    rule = load_workflow(path, workdir=workdir).rule("a")
    bindings = rule.match_output("out/s123.bam")
    view = AllDone()
    # Wrong answers would make the timings meaningless: check them once before timing.
    if (p.match("results/s1/007.bam") is None or p.match("other/s1/007.txt") is not None
            or bindings is None or list(rule.instantiate(bindings, view).output) != ["out/s123.bam"]):
        raise SystemExit("micro: the workloads do not give the expected results")
    return {
        "Pattern.match, hit": per_call(lambda: p.match("results/s1/007.bam")),
        "Pattern.match, miss": per_call(lambda: p.match("other/s1/007.txt")),
        "Rule.match_output": per_call(lambda: rule.match_output("out/s123.bam")),
        "Rule.instantiate": per_call(lambda: rule.instantiate(bindings, view)),
    }


def run(tools: Sequence[ToolLike], reps: int, timeout: float,
        log: Callable[[str], None]) -> dict[str, dict[str, list[float] | str]]:
    """tool name -> measurement -> seconds per call of each rep, or tool name -> {"failed": why}."""
    return children.run_each(__file__, MEASUREMENTS, "micro", tools, reps, timeout, log,
                             lambda m, v: f"{m} {v * 1e6:.2f} µs")


def render(results: dict[str, dict[str, Any]], base_name: str | None) -> str:
    names = ["flowmake"] + ([base_name] if base_name else [])
    lines = ["## Micro-benchmarks", "",
             f"Microseconds per call: in each rep a fresh process per tool keeps the best of "
             f"{REPEAT} timings of {NUMBER:,} calls; the table gives the median over reps, and "
             "calls per second from it."
             + (f" Ratio = {base_name} / flowmake (above 1: the current code is faster)."
                if base_name else ""), ""]
    lines.append("| measurement | " + "".join(f"{n} µs | {n} calls/s | " for n in names)
                 + ("ratio |" if base_name else ""))
    lines.append("|---|" + "---:|" * (2 * len(names) + (1 if base_name else 0)))
    for m in MEASUREMENTS:
        meds = [median(results.get(n, {}), m) for n in names]
        row = f"| {m} | "
        for n, med in zip(names, meds):
            failed = results.get(n, {}).get("failed")
            row += (f"failed ({failed}) | – | " if failed else "– | – | " if med is None
                    else f"{med * 1e6:.2f} | {1 / med:,.0f} | ")
        if base_name:
            row += f"{meds[1] / meds[0]:.2f} |" if meds[0] and meds[1] else "– |"
        lines.append(row)
    return "\n".join(lines) + "\n"


def median(by_measurement: dict[str, Any], m: str) -> float | None:
    walls = by_measurement.get(m)
    return statistics.median(walls) if isinstance(walls, list) and walls else None


if __name__ == "__main__":
    print(json.dumps(measure_here(sys.argv[1])))
