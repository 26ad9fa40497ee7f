"""scripts/snakemake_suite.py reads a Snakemake-style tests/ directory and runs its cases.

The tests/ here is written by this test (no Snakemake files needed): a tests.py in Snakemake's
style, two case directories with expected-results/.
"""
from __future__ import annotations

import importlib.util
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "snakemake_suite.py"


@pytest.fixture(scope="module")
def suite() -> ModuleType:
    spec = importlib.util.spec_from_file_location("snakemake_suite", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["snakemake_suite"] = module
    spec.loader.exec_module(module)
    return module


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")


@pytest.fixture()
def tests_dir(tmp_path: Path) -> Path:
    tests = tmp_path / "tests"
    write(tests / "common.py", "def run(path, **kw): pass\n")
    write(tests / "tests.py", '''
        import pytest
        from .common import run, dpath, conda

        def test_ok():
            run(dpath("ok"), targets=["out.txt"], cores=1)

        def test_fails():
            run(dpath("bad"), shouldfail=True)

        def test_wrong():
            run(dpath("ok"), config={"word": "other"}, targets=["out.txt"])

        @conda
        def test_env():
            run(dpath("ok"), deployment_method={"conda"})

        @pytest.mark.parametrize("target", ["out.txt", "nope.txt"])
        def test_param(target):
            run(dpath("ok"), targets=[target])

        def test_loop_cluster():
            for _ in range(2):
                run(dpath("ok"), cluster="./qsub")
    ''')
    write(tests / "ok" / "Snakefile", '''
        rule make:
            output: "out.txt"
            params: word=config.get("word", "hello")
            shell: "echo {params.word} > {output}"
    ''')
    write(tests / "ok" / "expected-results" / "out.txt", "hello\n")
    write(tests / "bad" / "Snakefile", 'rule a:\n    output: "x"\n    shell: "exit 1"\n')
    return tests


def test_collect_reads_run_calls_and_skips_out_of_scope(suite: ModuleType, tests_dir: Path) -> None:
    cases, total = suite.collect(tests_dir)
    assert total == 6
    by = {c.test.split("::")[1]: c for c in cases}
    assert sorted(by) == ["test_env", "test_fails", "test_loop_cluster", "test_ok", "test_param[0]",
                          "test_param[1]", "test_wrong"]
    assert by["test_env"].skip == "conda"
    assert by["test_loop_cluster"].skip == "cluster executor"
    assert by["test_ok"].calls[0].kwargs == {"targets": ["out.txt"], "cores": 1}
    assert suite.flags(by["test_ok"].calls[0].kwargs) == ["out.txt", "-s", "Snakefile", "-c", "1"]
    assert suite.flags(by["test_wrong"].calls[0].kwargs) == ["out.txt", "-s", "Snakefile", "-c", "3",
                                                            "--config", "word=other"]


def test_run_case_compares_expected_results(suite: ModuleType, tests_dir: Path) -> None:
    cases, _ = suite.collect(tests_dir)
    outcome = {}
    for case in cases:
        if not case.skip:
            done = suite.run_case(case, tests_dir, sys.executable, 60.0)
            outcome[case.test.split("::")[1]] = (done.outcome, done.detail)
    assert outcome["test_ok"] == ("pass", "")
    assert outcome["test_fails"] == ("pass", "")
    assert outcome["test_wrong"] == ("fail", "wrong result produced for file 'out.txt'")
    assert outcome["test_param[0]"] == ("pass", "")
    assert outcome["test_param[1]"][0] == "fail"
    assert "nope.txt" in outcome["test_param[1]"][1]
