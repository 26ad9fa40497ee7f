"""Each fragment in rules/ works when included from a Flowfile, and its output is reproducible.

The Flowfiles include the fragment by path, which is also how a Snakefile would. Every test
runs under flowmake and, when it is installed, under Snakemake: the fragments are plain
Snakemake syntax and must mean the same thing to both.
"""
from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

RULES = Path(__file__).resolve().parents[2] / "rules"


def _snakemake() -> list[str] | None:
    if importlib.util.find_spec("snakemake") is not None:
        return [sys.executable, "-m", "snakemake"]
    exe = shutil.which("snakemake")
    return [exe] if exe else None


@pytest.fixture(params=["flowmake", "snakemake"])
def build(request: pytest.FixtureRequest, tmp_path: Path):
    """build(flowfile_text, *targets) runs the tool in tmp_path and returns tmp_path."""
    if request.param == "flowmake":
        tool = [sys.executable, "-m", "flowmake"]
    else:
        tool = _snakemake() or pytest.skip("snakemake is not installed in this environment")

    def run(text: str, *targets: str) -> Path:
        (tmp_path / "Flowfile").write_text(text)
        cmd = [*tool, "-s", "Flowfile", "-c", "1", *targets]
        res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stdout}\n{res.stderr}"
        return tmp_path
    return run


def include(*fragments: str) -> str:
    return "".join(f'include: "{RULES / f}"\n' for f in fragments)


def write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_path_helper_finds_every_fragment() -> None:
    spec = importlib.util.spec_from_file_location("fragments", RULES / "__init__.py",
                                                  submodule_search_locations=[str(RULES)])
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.names() == ["archive.flow", "checksums.flow", "compress.flow"]
    assert Path(mod.path("compress.flow")).read_text() == (RULES / "compress.flow").read_text()
    with pytest.raises(FileNotFoundError, match="did you mean 'checksums.flow'"):
        mod.path("checksum.flow")


def test_checksum_is_sha256sum_format_with_basename(build, tmp_path: Path) -> None:
    data = b"ACGT\n" * 100
    write(tmp_path / "data" / "reads.fq", data)
    out = build(include("checksums.flow") + 'rule all:\n    input: "data/reads.fq.sha256"\n')
    line = (out / "data" / "reads.fq.sha256").read_text()
    assert line == f"{hashlib.sha256(data).hexdigest()}  reads.fq\n"
    # The pair verifies where it lives, whatever the workdir was.
    subprocess.run(["sha256sum", "-c", "--status", "reads.fq.sha256"], cwd=out / "data", check=True)


def test_gzip_output_has_no_name_or_timestamp(build, tmp_path: Path) -> None:
    data = b"sample\tvalue\n" + b"".join(b"s%d\t%d\n" % (i, i * i) for i in range(500))
    write(tmp_path / "table.tsv", data)
    out = build(include("compress.flow") + 'rule all:\n    input: "table.tsv.gz"\n')
    blob = (out / "table.tsv.gz").read_bytes()
    assert gzip.decompress(blob) == data
    assert blob[4:8] == b"\0\0\0\0", "MTIME must be zero"
    assert not blob[3] & 0x08, "FNAME must be absent"
    assert (out / "table.tsv").read_bytes() == data, "the input is kept"


def test_gzip_level_comes_from_config(build, tmp_path: Path) -> None:
    data = bytes(range(256)) * 64
    write(tmp_path / "blob.bin", data)
    out = build("config['gzip_level'] = 1\n" + include("compress.flow")
                + 'rule all:\n    input: "blob.bin.gz"\n')
    assert (out / "blob.bin.gz").read_bytes()[8] == 4, "XFL 4 means fastest compression"


def make_results(root: Path) -> None:
    write(root / "results" / "b.txt", b"bee\n")
    write(root / "results" / "a.txt", b"ay\n")
    write(root / "results" / "sub" / "c.txt", b"sea\n")


def test_tar_is_normalised(build, tmp_path: Path) -> None:
    make_results(tmp_path)
    out = build(include("archive.flow") + 'rule all:\n    input: "results.tar"\n')
    with tarfile.open(out / "results.tar") as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["results", "results/a.txt", "results/b.txt",
                                             "results/sub", "results/sub/c.txt"]
        assert {(m.mtime, m.uid, m.gid) for m in members} == {(0, 0, 0)}
        assert tar.extractfile("results/sub/c.txt").read() == b"sea\n"


def test_tar_bytes_depend_only_on_contents(build, tmp_path: Path) -> None:
    make_results(tmp_path)
    text = include("archive.flow") + 'rule all:\n    input: "results.tar"\n'
    first = build(text).joinpath("results.tar").read_bytes()
    for p in (tmp_path / "results").rglob("*"):
        os.utime(p, (1_700_000_000, 1_700_000_000))
    (tmp_path / "results.tar").unlink()
    assert build(text).joinpath("results.tar").read_bytes() == first


def test_fragments_compose_to_checksummed_tarball(build, tmp_path: Path) -> None:
    make_results(tmp_path)
    out = build(include("archive.flow", "compress.flow", "checksums.flow")
                + 'rule all:\n    input: "results.tar.gz.sha256"\n')
    blob = (out / "results.tar.gz").read_bytes()
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as tar:
        assert "results/sub/c.txt" in tar.getnames()
    assert (out / "results.tar.gz.sha256").read_text().startswith(hashlib.sha256(blob).hexdigest())
