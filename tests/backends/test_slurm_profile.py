"""A whole ``flowmake --profile DIR`` run on a real single-node SLURM (the ``slurm_cluster`` fixture).

The profile is what a lab keeps for Snakemake's SLURM executor plugin, used unchanged: the
executor, the number of jobs, default resources and per-rule overrides. The cluster is found
through ``$SLURM_CONF``, as any SLURM client finds its cluster.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

SNAKEFILE = """
rule all:
    input: "small.txt", "big.txt", "wide.txt"

rule small:
    output: "small.txt"
    shell: "echo mem={resources.mem_mb} partition={resources.slurm_partition} > {output}"

rule big:
    output: "big.txt"
    threads: 1
    shell: "echo threads={threads} mem={resources.mem_mb} > {output}"

rule wide:
    output: "wide.txt"
    threads: 2
    shell: "echo threads={threads} > {output}"
"""

PROFILE = """
executor: slurm
jobs: 10
latency-wait: 10
default-resources:
  - slurm_partition=debug
  - mem_mb=500
set-resources:
  big:
    mem_mb: 2*400
    runtime: "f'{attempt*7}m'"
    cpus_per_task: 2
set-threads:
  big: 2
"""


def _jobs(err: str) -> dict[str, str]:
    """rule → SLURM job id, from --verbose's ``flowmake: sbatch ID (STEP): FLAGS`` lines."""
    return {m.group(2): m.group(1) for m in re.finditer(r"^flowmake: sbatch (\d+) \((\w+):\S*\):", err, re.M)}


def _show(cluster, job_id: str) -> dict[str, str]:
    text = cluster.cmd("scontrol", "show", "job", "-o", job_id)
    return dict(re.findall(r"(\S+?)=(\S*)", text))


def test_a_snakemake_slurm_profile_runs_unchanged(slurm_cluster, tmp_path: Path) -> None:
    (tmp_path / "Snakefile").write_text(textwrap.dedent(SNAKEFILE).lstrip())
    (tmp_path / "slurm").mkdir()
    (tmp_path / "slurm" / "config.yaml").write_text(textwrap.dedent(PROFILE).lstrip())
    env = {**slurm_cluster.env(), "SNAKEMAKE_PROFILE": ""}
    proc = subprocess.run([sys.executable, "-m", "flowmake", "--profile", "slurm", "--verbose"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "flowmake: using profile slurm/config.yaml for default flags" in proc.stderr
    assert (tmp_path / "small.txt").read_text() == "mem=500 partition=debug\n"
    assert (tmp_path / "big.txt").read_text() == "threads=2 mem=800\n"
    assert (tmp_path / "wide.txt").read_text() == "threads=2\n"

    jobs = _jobs(proc.stderr)
    assert set(jobs) == {"small", "big", "wide"}, proc.stderr
    small, big, wide = (_show(slurm_cluster, jobs[s]) for s in ("small", "big", "wide"))
    assert (small["Partition"], small["MinMemoryNode"], small["NumCPUs"]) == ("debug", "500M", "1")
    assert (big["Partition"], big["MinMemoryNode"], big["CPUs/Task"]) == ("debug", "800M", "2")
    assert big["TimeLimit"] == "00:07:00"
    assert (wide["MinMemoryNode"], wide["CPUs/Task"]) == ("500M", "2")
    script = slurm_cluster.cmd("scontrol", "write", "batch_script", jobs["big"], "-")
    for line in ("#SBATCH --partition=debug", "#SBATCH --mem=800M", "#SBATCH --cpus-per-task=2",
                 "#SBATCH --time=7", "#SBATCH --ntasks=1", "#SBATCH --nodes=1"):
        assert line in script.splitlines(), script

    again = subprocess.run([sys.executable, "-m", "flowmake", "--profile", "slurm", "-n"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "Nothing to do" in again.stdout, again


def test_the_command_line_overrides_the_profile(slurm_cluster, tmp_path: Path) -> None:
    (tmp_path / "Snakefile").write_text(textwrap.dedent(SNAKEFILE).lstrip())
    (tmp_path / "slurm").mkdir()
    (tmp_path / "slurm" / "config.yaml").write_text(textwrap.dedent(PROFILE).lstrip())
    env = {**slurm_cluster.env(), "SNAKEMAKE_PROFILE": os.path.join(tmp_path, "slurm")}
    proc = subprocess.run([sys.executable, "-m", "flowmake", "--verbose", "small.txt",
                           "--default-resources", "mem_mb=300", "slurm_partition=debug"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "small.txt").read_text() == "mem=300 partition=debug\n"
    assert _show(slurm_cluster, _jobs(proc.stderr)["small"])["MinMemoryNode"] == "300M"
