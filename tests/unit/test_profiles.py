"""Snakemake profiles: finding them, reading their YAML as Snakemake's parser does, merging into flags."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from flowmake import cli
from flowmake.errors import ConfigError
from flowmake.profiles import apply_profiles, find_profile, find_workflow_profile, read_profile


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def _parse(argv: list[str]):
    args = cli._parser().parse_args(argv)
    used = apply_profiles(args, argv, cli._parser)
    return args, used


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SNAKEMAKE_PROFILE", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "home-config"))
    monkeypatch.setenv("XDG_CONFIG_DIRS", str(tmp_path / "site-config"))


def test_a_directory_a_file_or_a_name(tmp_path: Path) -> None:
    conf = _write(tmp_path / "prof" / "config.yaml", "jobs: 3\n")
    assert find_profile("prof") == Path("prof/config.yaml")
    assert find_profile(str(tmp_path / "prof")).resolve() == conf
    assert find_profile("prof/config.yaml") == Path("prof/config.yaml")
    user = _write(tmp_path / "home-config" / "snakemake" / "cluster" / "config.yaml", "jobs: 1\n")
    site = _write(tmp_path / "site-config" / "snakemake" / "lab" / "config.yaml", "jobs: 1\n")
    assert find_profile("cluster") == user
    assert find_profile("lab") == site


def test_versioned_profile_files_as_snakemake_9_picks_them(tmp_path: Path) -> None:
    _write(tmp_path / "p" / "config.yaml", "jobs: 1\n")
    _write(tmp_path / "p" / "profile.v8+.yaml", "jobs: 8\n")
    _write(tmp_path / "p" / "profile.v10+.yaml", "jobs: 10\n")  # for a later Snakemake: not ours
    assert find_profile("p").name == "profile.v8+.yaml"


def test_missing_profile_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    for name in ("nosuch", "empty"):
        with pytest.raises(ConfigError) as err:
            find_profile(name)
        assert f"profile {name!r} not found, or it has no config.yaml (or profile.yaml)" in str(err.value)


def test_values_are_formatted_like_snakemakes_profile_parser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAB_ACCOUNT", "proj42")
    _write(tmp_path / "p" / "extra.yaml", "x: 1\n")
    path = _write(tmp_path / "p" / "config.yaml", """
        jobs: 100
        printshellcmds: true
        default-resources:
          slurm_account: $LAB_ACCOUNT
          mem_mb: 500
          slurm_qos: "1234"
        set-resources:
          align:
            runtime: 60
            slurm_extra: "'--nice=10'"
        set-threads: {align: 8}
        configfile: extra.yaml
        keep-going:
        retries: [2]
    """)
    entries = {e.key: e.value for e in read_profile(path)}
    assert entries == {
        "jobs": "100",
        "printshellcmds": True,
        "default-resources": ["slurm_account=$LAB_ACCOUNT", "mem_mb=500", "slurm_qos='1234'"],
        "set-resources": ["align:runtime=60", "align:slurm_extra='--nice=10'"],
        "set-threads": ["align=8"],
        "configfile": str(tmp_path / "p" / "extra.yaml"),  # a file in the profile's directory
        "retries": ["2"],
    }  # keep-going without a value is left out, as Snakemake does


def test_profile_fills_flags_and_the_command_line_wins(tmp_path: Path) -> None:
    _write(tmp_path / "p" / "config.yaml", """
        executor: slurm
        jobs: 20
        latency-wait: 60
        default-resources: [slurm_partition=debug, mem_mb=500]
        set-resources: ["a:mem_mb=100"]
        rerun-triggers: [mtime, input]
        keep-going: true
    """)
    args, used = _parse(["--profile", "p", "-j", "4", "--set-resources", "b:mem_mb=1"])
    assert used.used == ["p/config.yaml"] and used.toml is None
    assert args.backend == "slurm" and args.latency_wait == 60 and args.keep_going is True
    assert args.default_resources == ["slurm_partition=debug", "mem_mb=500"]
    assert args.rerun_triggers == ["mtime", "input"]
    assert args.jobs == 4  # given on the command line: the profile's value is not used
    assert args.set_resources == ["b:mem_mb=1"]
    assert used.sources["latency_wait"] == "profile p/config.yaml:3"


def test_later_profiles_override_earlier_ones_key_by_key(tmp_path: Path) -> None:
    _write(tmp_path / "base" / "config.yaml", "jobs: 5\nlatency-wait: 30\n")
    _write(tmp_path / "over" / "config.yaml", "jobs: 7\n")
    args, used = _parse(["--profile", "base", "--profile", "over"])
    assert (args.jobs, args.latency_wait) == (7, 30)
    assert used.used == ["base/config.yaml", "over/config.yaml"]


def test_toml_profile_is_flowmake_settings_and_combines(tmp_path: Path) -> None:
    _write(tmp_path / "p" / "config.yaml", "jobs: 5\n")
    _write(tmp_path / "lab.toml", 'backend = "local"\n')
    args, used = _parse(["--profile", "lab.toml", "--profile", "p"])
    assert used.toml == "lab.toml" and args.jobs == 5


def test_environment_variable_and_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path / "p" / "config.yaml", "jobs: 9\n")
    monkeypatch.setenv("SNAKEMAKE_PROFILE", "p")
    assert _parse([])[0].jobs == 9
    assert _parse(["--profile", "none"])[0].jobs is None
    with pytest.raises(ConfigError, match="--profile none cannot be combined"):
        _parse(["--profile", "none", "--profile", "p"])


def test_workflow_profile_beside_the_rule_file(tmp_path: Path) -> None:
    _write(tmp_path / "wf" / "Snakefile", "rule a:\n    output: 'a'\n")
    prof = _write(tmp_path / "wf" / "profiles" / "default" / "config.yaml", "jobs: 6\n")
    assert find_workflow_profile(None, "wf/Snakefile").resolve() == prof
    assert find_workflow_profile("none", "wf/Snakefile") is None
    assert _parse(["-s", "wf/Snakefile"])[0].jobs == 6
    assert _parse(["-s", "wf/Snakefile", "--workflow-profile", "none"])[0].jobs is None
    assert _parse(["-d", "wf"])[0].jobs == 6  # the rule file found in -d's directory
    with pytest.raises(ConfigError, match="workflow profile 'gone' not found"):
        find_workflow_profile("gone", None)


def test_unknown_key_names_the_file_line_and_key(tmp_path: Path) -> None:
    _write(tmp_path / "p" / "config.yaml", "jobs: 2\nlatency-wiat: 3\n")
    with pytest.raises(ConfigError) as err:
        _parse(["--profile", "p"])
    assert str(err.value) == ("p/config.yaml:2: config error: unknown key 'latency-wiat' in profile: "
                              "no flag --latency-wiat\n  hint: did you mean 'latency-wait'?")


def test_bad_values_name_the_key(tmp_path: Path) -> None:
    for text, message in (
        ("jobs: many\n", "p/config.yaml:1: config error: jobs: expected a number or 'all'"),
        ("keep-going: maybe\n", "p/config.yaml:1: config error: keep-going: expected true or false"),
        ("rerun-triggers: [mtime, clock]\n", "p/config.yaml:1: config error: rerun-triggers: 'clock' is not one of"),
        ("latency-wait: [1, 2]\n", "p/config.yaml:1: config error: latency-wait: --latency-wait takes one value"),
        ("set-resources: {a: 1}\n", "p/config.yaml:1: config error: set-resources must map rule names"),
        ("__use_yte__: true\n", "p/config.yaml:1: config error: YTE templates (__use_yte__) are not supported"),
        ("- jobs\n", "p/config.yaml: config error: a profile must be a YAML mapping"),
        ("jobs: [1\n", "p/config.yaml:2: config error: profile is not valid YAML"),
    ):
        _write(tmp_path / "p" / "config.yaml", text)
        with pytest.raises(ConfigError) as err:
            _parse(["--profile", "p"])
        assert str(err.value).startswith(message), (text, str(err.value))


def test_cli_aliases() -> None:
    p = cli._parser()
    assert p.parse_args(["-e", "slurm"]).backend == "slurm"
    assert p.parse_args(["--executor", "ssh"]).backend == "ssh"
    for flag, kind in (("--list-input-changes", "input"), ("--lc", "code"), ("--list-params-changes", "params")):
        assert p.parse_args([flag]).list_changes == kind
    assert p.parse_args(["-j", "unlimited"]).jobs is None
    args = p.parse_args(["--wrapper-prefix", "file:///w", "--default-storage-provider", "s3",
                         "--default-storage-prefix", "s3://b", "--show-failed-logs", "--local-cores", "1"])
    assert (args.wrapper_prefix, args.default_storage_provider, args.default_storage_prefix) == (
        "file:///w", "s3", "s3://b")
    p.parse_args(["--max-status-checks-per-second", "1", "--scheduler", "greedy"])  # accepted habits
    assert p.parse_args(["--default-resources"]).default_resources == []
    assert p.parse_args([]).default_resources is None


def test_reading_agrees_with_snakemakes_profile_parser(tmp_path: Path) -> None:
    """Where Snakemake is installed (CI), its own parser reads the same profile to the same items."""
    try:
        from snakemake.profiles import ProfileConfigFileParser
    except ImportError:
        pytest.skip("Snakemake is not installed")
    _write(tmp_path / "p" / "cluster.yaml", "x: 1\n")
    path = _write(tmp_path / "p" / "config.yaml", """
        executor: slurm
        jobs: 100
        printshellcmds: true
        latency-wait: 60
        default-resources: {slurm_account: lab, mem_mb: 500, slurm_qos: "1234", tmpdir: /scratch}
        set-resources:
          align: {runtime: 60, slurm_extra: "'--nice=10'", mem_mb: 2*1024}
        set-threads: {align: 8}
        config: {samples: sheet.tsv}
        configfile: cluster.yaml
        keep-going:
        retries: [2]
        rerun-triggers: [mtime, input]
    """)
    with open(path) as stream:
        theirs = dict(ProfileConfigFileParser().parse(stream))
    ours = {e.key: e.value for e in read_profile(path)}
    assert {k: [str(x) for x in v] if isinstance(v, list) else str(v) for k, v in theirs.items()} == {
        k: v if isinstance(v, list) else str(v) for k, v in ours.items()}
