"""wrapper:, notebook:, conda: and envmodules: as a user runs them (``python -m flowmake``).

conda and ``module`` are external tools this machine need not have. Where a test needs one, it
puts a small fake executable on PATH: a real process (a test double for the external tool) that
records its argv and does what flowmake relies on — the fake conda creates the prefix with a
``bin/hello``, an activation script and a Python package in it; the fake ``module`` does nothing.
PATH is otherwise only /usr/bin:/bin, so a real conda elsewhere on the machine is never used.
"""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

from tests.conftest import Flow

FAKE_CONDA = """\
#!/bin/sh
# Test double for conda: record the arguments, create the prefix with bin/hello.
echo "$(basename "$0") $*" >> "$FAKE_LOG"
while [ $# -gt 0 ]; do
    case "$1" in --prefix) prefix="$2"; shift;; esac
    shift
done
mkdir -p "$prefix/bin" "$prefix/etc/conda/activate.d"
printf '#!/bin/sh\\necho "hello from the env: $ENV_GREETING $*"\\n' > "$prefix/bin/hello"
chmod +x "$prefix/bin/hello"
echo 'export ENV_GREETING=activated' > "$prefix/etc/conda/activate.d/greet.sh"
mkdir -p "$prefix/lib/python3.99/site-packages"
echo 'GREETING = "imported from the env"' > "$prefix/lib/python3.99/site-packages/envpkg.py"
"""

FAKE_MODULE = """\
#!/bin/sh
# Test double for Lmod's `module`: record the arguments.
echo "module $*" >> "$FAKE_LOG"
"""


def fake_tools(flow: Flow, monkeypatch: pytest.MonkeyPatch, **tools: str) -> Path:
    bin_dir = flow.root / "fakebin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in tools.items():
        path = bin_dir / name
        path.write_text(text)
        path.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setenv("FAKE_LOG", str(flow.root / "fake.log"))
    return flow.root / "fake.log"


CONDA_RULES = """
    rule all:
        input: "out/a.txt", "out/b.txt"

    rule shell_in_env:
        output: "out/a.txt"
        conda: "envs/hello.yaml"
        shell: "hello a > {output}"

    rule run_in_env:
        output: "out/b.txt"
        conda: "envs/hello.yaml"
        run:
            shell("hello b > {output}")
"""


def conda_flow(flow: Flow) -> None:
    flow.write(CONDA_RULES)
    flow.file("envs/hello.yaml", "channels: [conda-forge]\ndependencies: [hello]\n")


def test_use_conda_creates_the_env_once_and_runs_jobs_in_it(flow: Flow, monkeypatch: pytest.MonkeyPatch) -> None:
    log = fake_tools(flow, monkeypatch, conda=FAKE_CONDA)
    conda_flow(flow)
    err = flow.ok("-c", "1", "--use-conda")
    assert flow.read("out/a.txt") == "hello from the env: activated a\n"
    assert flow.read("out/b.txt") == "hello from the env: activated b\n"
    calls = log.read_text().splitlines()
    assert len(calls) == 1, calls  # one environment file, one environment, for both rules
    prefix = next((flow.root / ".flowmake" / "conda").glob("*.yaml")).with_suffix("")
    assert calls[0] == f"conda env create --quiet --file {prefix}.yaml --prefix {prefix}"
    assert "creating conda environment envs/hello.yaml at .flowmake/conda/" in err
    flow.ok("-c", "1", "--use-conda")  # up to date, and the env is not created again
    assert len(log.read_text().splitlines()) == 1


def test_conda_prefix_and_create_envs_only(flow: Flow, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    log = fake_tools(flow, monkeypatch, conda=FAKE_CONDA)
    conda_flow(flow)
    shared = tmp_path / "shared-envs"
    flow.ok("-c", "1", "--conda-create-envs-only", "--conda-prefix", str(shared))
    assert not flow.exists("out/a.txt")  # nothing ran
    assert len(list(shared.glob("*/bin/hello"))) == 1 and not flow.exists(".flowmake/conda")
    flow.ok("-c", "1", "--use-conda", "--conda-prefix", str(shared))
    assert flow.read("out/a.txt") == "hello from the env: activated a\n"
    assert len(log.read_text().splitlines()) == 1  # the env made by the first invocation


def test_sdm_conda_is_use_conda_and_micromamba_is_used_when_alone(flow: Flow, monkeypatch: pytest.MonkeyPatch) -> None:
    log = fake_tools(flow, monkeypatch, micromamba=FAKE_CONDA)
    conda_flow(flow)
    flow.ok("-c", "1", "--sdm", "conda")
    assert flow.read("out/a.txt") == "hello from the env: activated a\n"
    assert log.read_text().startswith("micromamba create --yes --quiet --file ")


def test_env_file_content_is_in_the_step_key(flow: Flow, monkeypatch: pytest.MonkeyPatch) -> None:
    log = fake_tools(flow, monkeypatch, conda=FAKE_CONDA)
    conda_flow(flow)
    flow.ok("-c", "1", "--use-conda")
    assert flow.planned("--use-conda") == []
    flow.file("envs/hello.yaml", "channels: [conda-forge]\ndependencies: [hello=2]\n")
    assert flow.planned("--use-conda") == ["all", "out/a.txt", "out/b.txt"]
    flow.ok("-c", "1", "--use-conda")  # a new environment for the new content
    assert len(log.read_text().splitlines()) == 2
    assert len(list((flow.root / ".flowmake" / "conda").glob("*.yaml"))) == 2


def test_without_use_conda_the_directive_is_ignored(flow: Flow, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_tools(flow, monkeypatch)
    flow.write("""
        rule a:
            output: "a.txt"
            conda: "envs/missing.yaml"
            envmodules: "hello/1.0"
            shell: "echo plain > {output}"
    """)
    flow.ok("-c", "1")
    assert flow.read("a.txt") == "plain\n"
    flow.file("envs/missing.yaml", "dependencies: [x]\n")  # not read without --use-conda
    assert flow.planned() == []


def test_use_conda_without_conda_is_a_clear_error(flow: Flow, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_tools(flow, monkeypatch)
    conda_flow(flow)
    rc, _, err = flow.run("-c", "1", "--use-conda")
    assert rc == 2
    assert err.splitlines()[0] == "Flowfile:4: deployment error: --use-conda: no conda/mamba on PATH"
    assert "  rule: shell_in_env" in err
    assert not flow.exists("out/a.txt")


def test_conda_env_that_fails_to_build(flow: Flow, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_tools(flow, monkeypatch, conda="#!/bin/sh\necho 'PackagesNotFoundError: hello'\nexit 1\n")
    conda_flow(flow)
    rc, _, err = flow.run("-c", "1", "--use-conda")
    assert rc == 2
    assert "deployment error: cannot create the conda environment of" in err
    assert "  PackagesNotFoundError: hello" in err
    # Not marked complete: the next run tries again.
    assert not list((flow.root / ".flowmake" / "conda").glob("*/.flowmake-env-complete"))


def test_use_envmodules_loads_the_modules_first(flow: Flow, monkeypatch: pytest.MonkeyPatch) -> None:
    log = fake_tools(flow, monkeypatch, module=FAKE_MODULE)
    flow.write("""
        rule a:
            output: "a.txt"
            envmodules: "bio/samtools/1.9", "bio/bwa/0.7"
            shell: "echo done > {output}"
    """)
    flow.ok("-c", "1", "--use-envmodules")
    assert flow.read("a.txt") == "done\n"
    assert log.read_text().splitlines() == ["module purge", "module load bio/samtools/1.9 bio/bwa/0.7"]
    assert flow.planned() != []  # the modules are part of the key under --use-envmodules
    assert flow.planned("--sdm", "env-modules") == []


def test_use_envmodules_without_module_is_a_clear_error(flow: Flow, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_tools(flow, monkeypatch)
    flow.write("""
        rule a:
            output: "a.txt"
            envmodules: "bio/samtools/1.9"
            shell: "echo done > {output}"
    """)
    rc, _, err = flow.run("-c", "1", "--use-envmodules")
    assert rc == 2
    assert err.splitlines()[:2] == [
        "Flowfile:1: deployment error: --use-envmodules: the 'module' command is not available",
        "  rule: a"]


def wrapper_flow(flow: Flow) -> Path:
    root = flow.root / "wrappers"
    upper = root / "v1" / "demo" / "upper"
    upper.mkdir(parents=True)
    (upper / "wrapper.py").write_text(textwrap.dedent("""\
        import subprocess
        text = open(snakemake.input[0]).read()
        # A wrapper's tools come from its environment.yaml under --use-conda.
        extra = ""
        if snakemake.params.hello:
            import envpkg  # the environment's Python packages are importable
            extra = subprocess.run(["hello"], capture_output=True, text=True).stdout + envpkg.GREETING
        open(snakemake.output[0], "w").write(text.upper() + extra)
    """))
    (upper / "environment.yaml").write_text("dependencies: [hello]\n")
    flow.file("a.txt", "abc\n")
    flow.write("""
        rule upper:
            input: "a.txt"
            output: "out/a.txt"
            params: hello=config.get("hello", False)
            wrapper: "v1/demo/upper"
    """)
    return root


def test_wrapper_from_a_file_url_prefix_and_its_key(flow: Flow) -> None:
    root = wrapper_flow(flow)
    prefix = f"file://{root}/"
    flow.ok("-c", "1", "--wrapper-prefix", prefix)
    assert flow.read("out/a.txt") == "ABC\n"
    assert flow.planned("--wrapper-prefix", prefix) == []
    with open(root / "v1/demo/upper/wrapper.py", "a") as f:
        f.write("# edited\n")
    assert flow.planned("--wrapper-prefix", prefix) == ["out/a.txt"]  # the wrapper's code is in the key


def test_wrapper_environment_yaml_is_its_conda_env(flow: Flow, monkeypatch: pytest.MonkeyPatch) -> None:
    wrapper_flow(flow)
    log = fake_tools(flow, monkeypatch, conda=FAKE_CONDA)
    flow.ok("-c", "1", "--wrapper-prefix", "wrappers/", "--use-conda", "--config", "hello=true")
    assert flow.read("out/a.txt") == "ABC\nhello from the env: activated \nimported from the env"
    assert len(log.read_text().splitlines()) == 1


def test_notebook_without_jupyter_is_a_clear_error(flow: Flow, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_tools(flow, monkeypatch)
    flow.file("nb/x.py.ipynb", '{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}')
    flow.write("""
        rule nb:
            output: "out.txt"
            notebook: "nb/x.py.ipynb"
    """)
    rc, _, err = flow.run("-c", "1")
    assert rc == 2
    assert err == ("Flowfile:1: deployment error: notebook: jupyter-nbconvert is not on PATH\n"
                   "  rule: nb\n"
                   "  hint: install Jupyter where the job runs (pip install nbconvert ipykernel), or give "
                   "the rule a conda: environment with jupyter and run with --use-conda\n")


NOTEBOOK = """{
 "cells": [
  {"cell_type": "code", "execution_count": null, "id": "c1", "metadata": {}, "outputs": [],
   "source": ["with open(snakemake.output[0], 'w') as f:\\n",
              "    f.write(f\\"{snakemake.wildcards.name} {snakemake.params.n} {snakemake.input.data}\\\\n\\")"]}
 ],
 "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
 "nbformat": 4, "nbformat_minor": 5
}
"""


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("jupyter-nbconvert") is None, reason="needs jupyter-nbconvert on PATH (nbconvert, ipykernel)")
def test_notebook_runs_with_the_snakemake_object(flow: Flow) -> None:
    flow.file("nb/x.py.ipynb", NOTEBOOK)
    flow.file("in/a.txt", "x\n")
    flow.write("""
        rule nb:
            input: data="in/{name}.txt"
            output: "out/{name}.txt"
            params: n=3
            log: notebook="logs/{name}.ipynb"
            notebook: "nb/x.py.ipynb"
    """)
    flow.ok("-c", "1", "out/a.txt")
    assert flow.read("out/a.txt") == "a 3 in/a.txt\n"
    assert "snakemake-job-properties" in flow.read("logs/a.ipynb")  # the executed notebook, kept
    assert "snakemake-job-properties" not in flow.read("nb/x.py.ipynb")
