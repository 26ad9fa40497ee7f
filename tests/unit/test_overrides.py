"""--default-resources, --set-resources, --set-threads: values read as Snakemake reads them, applied
in its order (defaults < the rule's resources < --set-resources), evaluated without running code."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from flowmake.errors import ConfigError
from flowmake.flowfile import load_workflow
from flowmake.flowfile.runtime import instantiate
from flowmake.overrides import (FULL_DEFAULTS, Expr, default_list, from_args, parse_overrides,
                                parse_value, runtime_minutes, size_mb)

RULES = """
rule a:
    input: "in.txt"
    output: "a/{x}.txt"
    threads: 4
    resources: mem_mb=100, slurm_partition="short"
    shell: "true"

rule b:
    output: "b.txt"
    resources: mem="3GB"
    shell: "true"
"""


def resources(tmp_path: Path, defaults: list[str] | None, set_res: list[str] = (), threads: list[str] = (),
              rule: str = "a", wildcards: dict[str, str] | None = None, attempt: int = 1):
    (tmp_path / "Flowfile").write_text(textwrap.dedent(RULES).lstrip())
    (tmp_path / "in.txt").write_text("x" * 3_000_000)
    wf = load_workflow(str(tmp_path / "Flowfile"), workdir=str(tmp_path))
    warnings: list[str] = []
    parse_overrides(defaults, list(set_res), list(threads)).apply(wf, warnings.append)
    inst = instantiate(wf, rule, wildcards if wildcards is not None else ({"x": "1"} if rule == "a" else {}), attempt)
    return dict(inst.resources.items()), inst.threads, warnings


@pytest.fixture(autouse=True)
def _in_workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # steps are instantiated in their workdir (input.size_mb reads in.txt)


@pytest.mark.parametrize("name,text,value", [
    ("mem_mb", "500", 500),
    ("mem_mb", "2*1024", 2048),
    ("mem", "4GB", 4000),
    ("mem", "1GiB", 1074),
    ("disk_mb", "10 GB", 10000),
    ("runtime", "2h", 120),
    ("runtime", "90s", 1),
    ("runtime", "45", 45),
    ("slurm_partition", "debug", "debug"),
    ("slurm_account", "'1234'", "1234"),  # a quoted number stays a string
    ("slurm_extra", "'--qos=long --mail-type=ALL'", "--qos=long --mail-type=ALL"),
    ("slurm_extra", "--nice=150", "--nice=150"),  # no expression: the text itself
    ("gres", "gpu:1", "gpu:1"),
    ("constraint", "intel&avx2", "intel&avx2"),
    ("machine", "n1-standard-4", "n1-standard-4"),
    ("flag", "True", True),
])
def test_values(name: str, text: str, value: object) -> None:
    assert parse_value(name, text, "here") == value


def test_expressions_are_evaluated_per_job() -> None:
    runtime = parse_value("runtime", 'f"{attempt*60}"', "here")
    assert isinstance(runtime, Expr)
    assert [runtime(None, [], 1, a) for a in (1, 3)] == [60, 180]
    mem = parse_value("mem_mb", "attempt * 1000 if threads > 1 else 500", "here")
    assert mem(None, [], 4, 2) == 2000 and mem(None, [], 1, 2) == 500
    assert parse_value("mem_mb", "f'{attempt*3}'", "here")(None, [], 1, 2) == 6  # Snakemake: an error
    with pytest.raises(ConfigError, match="mem_mb must be a number, got 'x2'"):
        parse_value("mem_mb", "f'x{attempt}'", "here")(None, [], 1, 2)


def test_no_code_runs_from_a_profile() -> None:
    for text in ("input.__class__", "wildcards.__dict__", "(1).real"):
        with pytest.raises(ConfigError, match="flowmake does not evaluate"):
            parse_value("x", text, "prof/config.yaml:3")
    # Unknown names are text, as Snakemake's NameError makes them: nothing is called.
    assert parse_value("x", "__import__('os').system('false')", "here") == "__import__('os').system('false')"
    with pytest.raises(ConfigError, match="exponent too large"):
        parse_value("mem_mb", "attempt ** 10 ** 10", "here")(None, [], 1, 1)


def test_numeric_resources_must_be_numbers() -> None:
    with pytest.raises(ConfigError) as err:
        parse_value("mem_mb", "lots", "prof/config.yaml:4")
    assert str(err.value).startswith("config error: prof/config.yaml:4: mem_mb=lots is neither a number")
    with pytest.raises(ConfigError, match="runtime=2 fortnights is not a timespan"):
        parse_value("runtime", "2 fortnights", "here")
    with pytest.raises(ConfigError, match="must not be negative"):
        parse_value("mem_mb", "-5", "here")


def test_units() -> None:
    assert size_mb("500MB") == 500 and size_mb("2 G") == 2000 and size_mb("500") is None
    assert runtime_minutes(30) == 30 and runtime_minutes("1.5h") == 90 and runtime_minutes("1d") == 1440
    assert runtime_minutes("soon") is None


def test_default_list_is_snakemakes_full_defaults_plus_given() -> None:
    assert default_list(None) is None
    assert default_list(None, cluster=True) == list(FULL_DEFAULTS)
    assert default_list(["mem_mb=10"]) == [*FULL_DEFAULTS, "mem_mb=10"]


def test_order_defaults_rule_then_set_resources(tmp_path: Path) -> None:
    res, threads, _ = resources(tmp_path, default_list(["slurm_partition=debug", "slurm_account=lab",
                                                        "scratch_mb=2*input.size_mb"]))
    # The rule's own mem_mb and partition win over the defaults; the account comes from them.
    assert (res["mem_mb"], res["slurm_partition"], res["slurm_account"]) == (100, "short", "lab")
    assert (res["scratch_mb"], res["disk_mb"], threads) == (6.0, 1000, 4)  # in.txt is 3 MB
    res, threads, _ = resources(tmp_path, None, ["a:mem_mb=2*400", "a:runtime=1h", "a:tasks=2"], ["a=2"])
    assert (res["mem_mb"], res["runtime"], res["tasks"], res["slurm_partition"], threads) == (800, 60, 2, "short", 2)


def test_size_resources_cover_each_other(tmp_path: Path) -> None:
    # Rule b says mem="3GB": a default mem_mb does not replace it (Snakemake keeps both as mem_mb).
    res, _, _ = resources(tmp_path, default_list(["mem_mb=500"]), rule="b")
    assert res["mem"] == "3 GB" and res["mem_mb"] == 3000  # mem gives mem_mb (resource_units)
    res, _, _ = resources(tmp_path, None, ["b:mem=2GB"], rule="b")
    assert res["mem_mb"] == 2000 and res["mem"] == "2 GB"  # the rule's "3GB" is gone


def test_threads_expression_and_attempt(tmp_path: Path) -> None:
    _, threads, _ = resources(tmp_path, None, threads=["a=attempt*2"], attempt=3)
    assert threads == 6


def test_unknown_rules_are_warned_about(tmp_path: Path) -> None:
    _, _, warnings = resources(tmp_path, None, ["nosuch:mem_mb=1"], ["other=2"])
    assert warnings == ["--set-resources: no rule named 'nosuch'; ignored",
                        "--set-threads: no rule named 'other'; ignored"]


def test_bad_items() -> None:
    for args, message in (
        ((None, ["mem_mb=1"], []), "--set-resources expects RULE:NAME=VALUE, got 'mem_mb=1'"),
        ((None, [], ["a:2"]), "--set-threads expects RULE=THREADS, got 'a:2'"),
        ((None, [], ["a=many"]), "_threads=many is neither a number"),
        ((["1x=2"], [], []), "--default-resources expects NAME=VALUE with NAME an identifier"),
        ((["_cores=2"], [], []), "the resource name _cores is reserved"),
    ):
        with pytest.raises(ConfigError) as err:
            parse_overrides(*args)
        assert message in str(err.value), str(err.value)


def test_job_processes_get_the_same_overrides() -> None:
    ov = parse_overrides(default_list(["x=1"]), ["a:y=2"], ["a=3"])
    again = from_args(ov.args)
    assert again.args == ov.args
    assert again.per_rule == {"a": {"y": 2}} and again.threads == {"a": 3} and again.defaults["x"] == 1


AGREED = ["mem_mb=500", "mem_mib=953.67", "disk_mib=953.6743", "mem_mb=2*1024", "mem=4GB", "mem=1GiB", "mem_mib=1024", "runtime=2h",
          "runtime=90s", "runtime=45", "slurm_partition=debug", "slurm_account='1234'",
          "slurm_extra='--qos=long --mail-type=ALL'", "slurm_extra=--nice=150", "gres=gpu:1",
          "constraint=intel&avx2", "machine=n1-standard-4", "flag=True", "tmpdir=system_tmpdir",
          "mem_mb=attempt*1000 if threads > 1 else 500", "mem_mb=min(max(2*input.size_mb, 1000), 8000)",
          "disk_mb=max(2*input.size_mb, 1000) if input else 50000"]


@pytest.mark.parametrize("item", AGREED)
def test_values_agree_with_snakemake(item: str) -> None:
    """Where Snakemake is installed (CI), its parser gives the same values (job: attempt 2, 4 threads)."""
    try:
        from snakemake.iocontainers import InputFiles
        from snakemake.resources import Resources
    except ImportError:
        pytest.skip("Snakemake is not installed")
    theirs = {}
    for name, res in Resources.parse([item], allow_expressions=True).items():
        theirs[name] = (res.evaluate(wildcards={}, input=InputFiles([]), attempt=2, threads=4, rulename="a",
                                     async_run=None) if res.is_evaluable() else res).value
    ours = {name: v(None, [], 4, 2) if isinstance(v, Expr) else v
            for name, v in parse_overrides([item], [], []).defaults.items()}
    assert {k: int(v) if k == "mem_mb" else v for k, v in ours.items()} == theirs
