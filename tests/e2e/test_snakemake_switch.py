"""Switching mid-project: flowmake on a directory the real Snakemake built.

Snakemake deleted its temp() outputs and write-protected its protected() ones, and left its records
in ``.snakemake/metadata/``. flowmake must find nothing to do there, as Snakemake does, and after
one input edit rerun exactly that input's chain. The build is made once by the ``snakemake`` of
the test environment (``scripts/venv.sh --test``) and copied, mtimes and modes kept, for each test
(marked slow: a real Snakemake build takes a few seconds). The first test needs no Snakemake: its
outputs are written by hand, as any other tool would leave them.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

SNAKEMAKE = Path(sys.executable).parent / "snakemake"

TWO_TEMPS = """
rule all:
    input: "d.txt"
rule b:
    input: "in.txt"
    output: temp("b.txt")
    shell: "cp {input} {output}"
rule c:
    input: "b.txt"
    output: temp("c.txt")
    shell: "cp {input} {output}"
rule d:
    input: "c.txt"
    output: "d.txt"
    shell: "cp {input} {output}"
"""


def test_adoption_works_across_a_chain_of_deleted_temp_outputs(flow: Any) -> None:
    flow.write(TWO_TEMPS)
    flow.file("in.txt", "one\n")
    flow.file("d.txt", "one\n")  # made by another tool, which then deleted b.txt and c.txt
    later = (flow.root / "in.txt").stat().st_mtime + 1
    os.utime(flow.root / "d.txt", (later, later))
    assert flow.run("-n")[1] == "Nothing to do: all 4 steps are up to date.\n"
    flow.ok("-c1")  # adopts, records, and makes nothing
    assert not flow.exists("b.txt") and not flow.exists("c.txt")
    assert flow.run("-n")[1] == "Nothing to do: all 4 steps are up to date.\n"
    flow.file("in.txt", "two\n")
    assert flow.planned() == ["all", "b.txt", "c.txt", "d.txt"]
    flow.ok("-c1")
    assert flow.read("d.txt") == "two\n" and not flow.exists("b.txt") and not flow.exists("c.txt")

# The tutorial's shape with shell stand-ins: a protected genome index, temp mapped reads, sorted
# reads, one call over all samples, one plot.
SNAKEFILE = """
SAMPLES = ["A", "B"]

rule all:
    input:
        "plots/quals.txt",

rule index_genome:
    input:
        "data/genome.fa",
    output:
        protected("data/genome.fa.idx"),
    shell:
        "wc -c < {input} > {output}"

rule map_reads:
    input:
        ref="data/genome.fa",
        idx="data/genome.fa.idx",
        reads="data/samples/{sample}.fastq",
    output:
        temp("mapped_reads/{sample}.bam"),
    shell:
        "cat {input.idx} {input.reads} > {output}"

rule sort_reads:
    input:
        "mapped_reads/{sample}.bam",
    output:
        "sorted_reads/{sample}.bam",
    shell:
        "sort {input} > {output}"

rule call:
    input:
        expand("sorted_reads/{sample}.bam", sample=SAMPLES),
    output:
        "calls/all.vcf",
    params:
        depth=10,
    shell:
        "cat {input} > {output}; echo depth={params.depth} >> {output}"

rule plot:
    input:
        "calls/all.vcf",
    output:
        "plots/quals.txt",
    shell:
        "wc -l < {input} > {output}"
"""

OUTPUTS = ["data/genome.fa.idx", "sorted_reads/A.bam", "sorted_reads/B.bam", "calls/all.vcf", "plots/quals.txt"]


def flowmake(work: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWMAKE_")}
    res = subprocess.run([sys.executable, "-m", "flowmake", *args], cwd=work, capture_output=True, text=True,
                         timeout=60, env=env)
    assert res.returncode == 0, f"flowmake {' '.join(args)} exited {res.returncode}\n{res.stdout}\n{res.stderr}"
    assert "Traceback" not in res.stderr, res.stderr
    return res


def snakemake(work: Path, *args: str) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([str(SNAKEMAKE), *args], cwd=work, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, f"snakemake {' '.join(args)} exited {res.returncode}\n{res.stdout}\n{res.stderr}"
    return res


@pytest.fixture(scope="module")
def built_by_snakemake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not SNAKEMAKE.exists():
        pytest.skip("Snakemake is not installed in the test environment (scripts/venv.sh --test installs it)")
    root = tmp_path_factory.mktemp("snakemake-built")
    (root / "Snakefile").write_text(textwrap.dedent(SNAKEFILE).lstrip())
    (root / "data" / "samples").mkdir(parents=True)
    (root / "data" / "genome.fa").write_text(">chr1\nACGT\n")
    (root / "data" / "samples" / "A.fastq").write_text("@r1\nAAAA\n")
    (root / "data" / "samples" / "B.fastq").write_text("@r2\nCCCC\n")
    snakemake(root, "-c1")
    assert not (root / "mapped_reads" / "A.bam").exists()  # temp(): deleted once sorted
    assert not stat.S_IMODE((root / "data" / "genome.fa.idx").stat().st_mode) & 0o222  # protected()
    return root


@pytest.fixture
def work(built_by_snakemake: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "work"
    shutil.copytree(built_by_snakemake, dest, symlinks=True)  # copy2: mtimes and modes kept
    return dest


def mtimes(work: Path) -> dict[str, int]:
    return {o: (work / o).stat().st_mtime_ns for o in OUTPUTS}


@pytest.mark.slow  # each test of the Snakemake build: a copy and a few flowmake runs
def test_nothing_to_do_where_snakemake_built_everything(work: Path) -> None:
    assert flowmake(work, "-n").stdout == "Nothing to do: all 8 steps are up to date.\n"


@pytest.mark.slow
def test_one_input_edit_reruns_exactly_its_chain(work: Path) -> None:
    before = mtimes(work)
    (work / "data" / "samples" / "A.fastq").write_text("@r1\nGGGG\n")
    assert sorted(s["outputs"][0] if s["outputs"] else s["rule"] for s in _plan(work)) == [
        "all", "calls/all.vcf", "mapped_reads/A.bam", "plots/quals.txt", "sorted_reads/A.bam"]
    err = flowmake(work, "-c1").stderr
    ran = [line.split("] ", 1)[1].split("  (")[0] for line in err.splitlines() if line.startswith("[")]
    assert ran == ["map_reads: mapped_reads/A.bam", "sort_reads: sorted_reads/A.bam", "call: calls/all.vcf",
                   "plot: plots/quals.txt"]
    after = mtimes(work)
    assert [o for o in OUTPUTS if after[o] != before[o]] == ["sorted_reads/A.bam", "calls/all.vcf", "plots/quals.txt"]
    assert (work / "calls" / "all.vcf").read_text() == "11\n@r1\nGGGG\n11\n@r2\nCCCC\ndepth=10\n"
    assert not (work / "mapped_reads" / "A.bam").exists()  # temp() again, once its consumer was done
    assert not (work / "mapped_reads" / "B.bam").exists()  # never remade
    assert flowmake(work, "-n").stdout == "Nothing to do: all 8 steps are up to date.\n"
    assert "Nothing to be done" in snakemake(work, "-n").stdout + snakemake(work, "-n").stderr


@pytest.mark.slow
def test_without_snakemakes_records_mtimes_adopt_across_the_temp_chain(work: Path) -> None:
    shutil.rmtree(work / ".snakemake")
    assert flowmake(work, "-n").stdout == "Nothing to do: all 8 steps are up to date.\n"


@pytest.mark.slow
def test_a_touched_input_with_the_same_content_is_vouched_for_by_its_checksum(work: Path) -> None:
    future = (work / "plots" / "quals.txt").stat().st_mtime + 60
    os.utime(work / "data" / "samples" / "B.fastq", (future, future))  # newer than everything made from it
    assert flowmake(work, "-n").stdout == "Nothing to do: all 8 steps are up to date.\n"


@pytest.mark.slow
def test_a_command_edited_since_snakemake_ran_reruns_its_rule(work: Path) -> None:
    text = (work / "Snakefile").read_text().replace('"wc -l < {input} > {output}"', '"wc -c < {input} > {output}"')
    (work / "Snakefile").write_text(text)  # newer than plots/quals.txt, but mtimes of rule files decide nothing
    assert {s["outputs"][0] if s["outputs"] else s["rule"]: [r["kind"] for r in s["reasons"]]
            for s in _plan(work)} == {"plots/quals.txt": ["command-changed"], "all": ["upstream-changed"]}


@pytest.mark.slow
def test_a_params_value_edited_since_snakemake_ran_reruns_its_rule(work: Path) -> None:
    (work / "Snakefile").write_text((work / "Snakefile").read_text().replace("depth=10", "depth=20"))
    assert {s["outputs"][0] if s["outputs"] else s["rule"]: [r["kind"] for r in s["reasons"]]
            for s in _plan(work)} == {"calls/all.vcf": ["params-changed"], "plots/quals.txt": ["upstream-changed"],
                                      "all": ["upstream-changed"]}


def _plan(work: Path) -> list[dict[str, object]]:
    import json

    return json.loads(flowmake(work, "-n", "--json").stdout)["steps"]  # type: ignore[no-any-return]
