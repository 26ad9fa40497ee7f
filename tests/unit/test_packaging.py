"""What `pip install` puts in site-packages: one package, flowmake, with backends and rules inside."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_wheel_installs_only_the_flowmake_package(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True)
    (wheel,) = tmp_path.glob("flowmake-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"flowmake", next(t for t in tops if t.endswith(".dist-info"))}
    for needed in ("flowmake/backends/local.py", "flowmake/backends/slurm_job.sh.j2",
                   "flowmake/library/checksums.flow", "flowmake/__main__.py", "flowmake/rules.py"):
        assert needed in names
    # A package named like an engine module would shadow it once installed.
    modules = {n[:-3] for n in names if n.endswith(".py")}
    packages = {n.rsplit("/", 1)[0] for n in names if n.endswith("/__init__.py")}
    assert not modules & packages
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "flowmake = flowmake.cli:entry" in entry_points
    assert "local = flowmake.backends.local:LocalBackend" in entry_points


def test_backends_are_found_by_entry_point_and_unknown_names_get_a_suggestion() -> None:
    from flowmake.backend import backend_names, load_backend
    from flowmake.errors import BackendError

    assert {"local", "docker", "ssh", "slurm"} <= set(backend_names())
    with pytest.raises(BackendError) as err:
        load_backend("slrum", {}, 1)
    assert err.value.hint == "did you mean 'slurm'?"


def test_rule_library_is_importable_beside_the_engine() -> None:
    import flowmake.library
    import flowmake.rules

    assert hasattr(flowmake.rules, "Rule")
    assert flowmake.library.path("checksums.flow").endswith("checksums.flow")
