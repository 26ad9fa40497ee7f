"""Scheduling overhead: 3,000 trivial jobs (1,000 chains of 3) at -c 2.

The wall time depends on the machine (every job is a bash process); what flowmake itself spends per
job does not, much: it is measured as flowmake's own CPU time (RUSAGE_SELF), not its jobs'.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import Flow

CHAINS = """
    rule all:
        input: expand("c/{i}.3", i=range(1000))
    rule first:
        output: "c/{i}.1"
        shell: "touch {output}"
    rule next:
        input: lambda wc: f"c/{wc.i}.{int(wc.j) - 1}"
        output: "c/{i}.{j}"
        wildcard_constraints: j="[23]"
        shell: "touch {output}"
"""

MEASURE = """
import json, resource, sys, time
from flowmake.cli import main
t = time.perf_counter()
rc = main(["-c", "2", "-q"])
me = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"rc": rc, "wall": time.perf_counter() - t, "cpu": me.ru_utime + me.ru_stime}))
"""


@pytest.mark.slow
def test_three_thousand_trivial_jobs(flow: Flow) -> None:
    flow.write(CHAINS)
    res = subprocess.run([sys.executable, "-c", MEASURE], cwd=flow.root, capture_output=True, text=True,
                         timeout=300, env=flow.env())
    got = json.loads(res.stdout.strip().splitlines()[-1])
    print(f"3000 jobs: wall {got['wall']:.1f} s, flowmake CPU {got['cpu']:.2f} s "
          f"({got['cpu'] / 3 :.2f} ms per job)")
    assert got["rc"] == 0, res.stderr
    assert len(list((flow.root / "c").iterdir())) == 3000
    assert got["cpu"] / 3000 < 0.003, "flowmake's own CPU per job"
    assert flow.planned() == []
