"""shadow: jobs, through the process every backend runs (``python -m flowmake.shadow``)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from flowmake import shadow


def _run(workdir: Path, depth: str, command: str, *, inputs: list[str] = [],
         outputs: list[str] = [], logs: list[str] = []) -> int:
    payload = {"depth": depth, "root": shadow.root(None), "inputs": inputs, "outputs": outputs,
               "logs": logs, "command": command}
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        return shadow.main([json.dumps(payload)])
    finally:
        os.chdir(cwd)


def test_failed_job_leaves_nothing_but_its_log_and_no_shadow_folder(tmp_path: Path) -> None:
    rc = _run(tmp_path, "shallow", "echo x > out && echo l > job.log && echo j > junk && exit 4",
              outputs=["out"], logs=["job.log"])
    assert rc == 4
    assert not (tmp_path / "out").exists() and not (tmp_path / "junk").exists()
    assert (tmp_path / "job.log").read_text() == "l\n"
    assert os.listdir(tmp_path / ".flowmake" / "shadow") == []


def test_outputs_in_subfolders_come_back_and_links_stay_relative(tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("hi\n")
    rc = _run(tmp_path, "minimal", "mkdir -p o && cp in.txt o/real && ln -s \"$PWD/o/real\" o/link",
              inputs=["in.txt"], outputs=["o/real", "o/link"])
    assert rc == 0
    assert (tmp_path / "o" / "real").read_text() == "hi\n"
    assert not os.path.isabs(os.readlink(tmp_path / "o" / "link"))
    assert (tmp_path / "o" / "link").read_text() == "hi\n"
    assert os.listdir(tmp_path / ".flowmake" / "shadow") == []


def test_shell_sees_the_shadow_folder_as_cwd(tmp_path: Path) -> None:
    rc = _run(tmp_path, "full", f'test "$PWD" = "${shadow.ENV}" && pwd > where', outputs=["where"])
    assert rc == 0
    where = (tmp_path / "where").read_text().strip()
    assert where.startswith(str(tmp_path / ".flowmake" / "shadow"))


@pytest.mark.parametrize("depth", ["deep", "Minimal"])
def test_unknown_depth_is_a_rule_error(tmp_path: Path, depth: str) -> None:
    from flowmake.errors import FlowfileError
    from flowmake.flowfile import load_workflow

    (tmp_path / "Flowfile").write_text(f'rule a:\n    output: "a"\n    shadow: "{depth}"\n    shell: "touch a"\n')
    with pytest.raises(FlowfileError) as err:
        load_workflow(str(tmp_path / "Flowfile"))
    assert f"shadow must be one of 'minimal', 'copy-minimal', 'shallow', 'full', not '{depth}'" in str(err.value)
    assert "Flowfile:1" in str(err.value) or "line 1" in str(err.value)
