"""The slurm backend's job script for Snakemake's SLURM plugin resource names (no cluster needed:
what sbatch does with them is tested against a real SLURM in tests/backends/test_slurm*.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from flowmake.errors import BackendError
from tests.services.jobs import spec


def sbatch_lines(tmp_path: Path, settings: dict | None = None, **kw) -> list[str]:
    from flowmake.backends.slurm import SlurmBackend

    script = SlurmBackend(settings=settings or {}, cores=1).render(spec(tmp_path, "s", "true", **kw))
    return [line[len("#SBATCH "):] for line in script.splitlines() if line.startswith("#SBATCH ")][4:]


def test_plain_job(tmp_path: Path) -> None:
    assert sbatch_lines(tmp_path, threads=3, mem_mb=500, runtime_min=30) == [
        "--cpus-per-task=3", "--ntasks=1", "--nodes=1", "--mem=500M", "--time=30"]


def test_plugin_names(tmp_path: Path) -> None:
    lines = sbatch_lines(tmp_path, {"account": "fallback"}, threads=1, extra={
        "cpus_per_task": 8, "tasks": 4, "nodes": 2, "mem_mb_per_cpu": 100, "slurm_partition": "long",
        "slurm_qos": "high", "constraint": "intel&[rack1|rack2]", "clusters": "north",
        "slurm_extra": "--mail-type=ALL --mail-user lab@example.org --nice=5"})
    assert lines == ["--cpus-per-task=8", "--ntasks=4", "--nodes=2", "--mem-per-cpu=100M",
                     "--partition=long", "--account=fallback", "--qos=high",
                     "--constraint=intel&[rack1|rack2]", "--clusters=north",
                     "--mail-type=ALL", "--mail-user lab@example.org", "--nice=5"]


def test_gpu_jobs(tmp_path: Path) -> None:
    assert sbatch_lines(tmp_path, extra={"gpu": 2, "gpu_model": "a100", "cpus_per_gpu": 4}) == [
        "--gpus=a100:2", "--cpus-per-gpu=4", "--ntasks-per-gpu=1", "--nodes=1"]
    assert sbatch_lines(tmp_path, threads=2, extra={"gres": "gpu:tesla:1", "tasks": 2})[:2] == [
        "--gres=gpu:tesla:1", "--ntasks-per-gpu=2"]
    assert sbatch_lines(tmp_path, extra={"gres": "shard:1"})[:3] == [
        "--gres=shard:1", "--cpus-per-task=1", "--ntasks=1"]


@pytest.mark.parametrize("extra,message", [
    ({"gres": "gpu"}, "unusable SLURM gres (expected NAME:N or NAME:TYPE:N) 'gpu'"),
    ({"gres": "gpu:1", "gpu": 1}, "resources gres and gpu are both set"),
    ({"gpu_model": "a100"}, "resource gpu_model is set, but gpu (how many) is not"),
    ({"constraint": "a b"}, "unusable SLURM constraint 'a b'"),
    ({"slurm_partition": "x\n#SBATCH --uid=0"}, "unusable SLURM partition/account/qos name"),
    ({"tasks": "many"}, "resource tasks must be a whole number, got 'many'"),
])
def test_refused(tmp_path: Path, extra: dict, message: str) -> None:
    with pytest.raises(BackendError) as err:
        sbatch_lines(tmp_path, extra=extra)
    assert message in str(err.value)


def test_rate() -> None:
    from flowmake.backends.slurm import _timespan_rate

    assert _timespan_rate("100/1s") == (100, 1.0)
    assert _timespan_rate("10/2m") == (10, 120.0)
    assert _timespan_rate("5/500ms") == (5, 0.5)
    assert _timespan_rate(None) is None
    with pytest.raises(BackendError, match="expects N/TIME"):
        _timespan_rate("fast")
