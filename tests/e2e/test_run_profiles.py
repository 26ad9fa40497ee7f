"""Snakemake profiles and the resource flags, as a user runs them: ``flowmake --profile DIR``."""

from __future__ import annotations

from tests.conftest import Flow

RULES = """
    rule all:
        input: "a.txt", "b.txt"

    rule a:
        output: "a.txt"
        threads: 4
        resources: mem_mb=100
        shell: "echo threads={threads} mem={resources.mem_mb} part={resources.slurm_partition} > {output}"

    rule b:
        output: "b.txt"
        run:
            with open(output[0], "w") as f:
                f.write(f"threads={threads} mem={resources.mem_mb} rt={resources.runtime}\\n")
"""

PROFILE = """\
cores: 8
default-resources: [slurm_partition=debug, mem_mb=500, 'runtime=f"{attempt*60}"']
set-resources:
  a:
    mem_mb: 2*1024
set-threads:
  b: 3
"""


def test_profile_sets_resources_and_threads_for_shell_and_run_rules(flow: Flow) -> None:
    flow.write(RULES)
    flow.file("lab/config.yaml", PROFILE)
    err = flow.ok("--profile", "lab")
    assert "flowmake: using profile lab/config.yaml for default flags" in err
    assert flow.read("a.txt") == "threads=4 mem=2048 part=debug\n"
    assert flow.read("b.txt") == "threads=3 mem=500 rt=60\n"  # the run: block sees them too
    assert flow.planned("--profile", "lab") == []  # resources are not part of what a step makes


def test_the_command_line_wins_over_the_profile(flow: Flow) -> None:
    flow.write(RULES)
    flow.file("lab/config.yaml", PROFILE)
    flow.ok("--profile", "lab", "--set-resources", "a:mem_mb=7", "--set-threads", "a=1")
    assert flow.read("a.txt") == "threads=1 mem=7 part=debug\n"


def test_profile_by_name_from_the_user_config_dir_and_the_environment(flow: Flow, tmp_path) -> None:
    flow.write(RULES)
    home = tmp_path / "xdg"
    (home / "snakemake" / "lab").mkdir(parents=True)
    (home / "snakemake" / "lab" / "config.yaml").write_text(PROFILE)
    env = {**flow.env(), "XDG_CONFIG_HOME": str(home)}
    import subprocess
    import sys

    for extra_env, args in (({}, ["--profile", "lab"]), ({"SNAKEMAKE_PROFILE": "lab"}, [])):
        (flow.root / "a.txt").unlink(missing_ok=True)
        res = subprocess.run([sys.executable, "-m", "flowmake", "a.txt", *args], cwd=flow.root,
                             env={**env, **extra_env}, capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        assert f"using profile {home}/snakemake/lab/config.yaml" in res.stderr
        assert flow.read("a.txt") == "threads=4 mem=2048 part=debug\n"


def test_workflow_profile_beside_the_snakefile_comes_last(flow: Flow) -> None:
    flow.write(RULES, "workflow/Snakefile")
    flow.file("workflow/profiles/default/config.yaml", "set-threads: {a: 2}\ncores: 8\n")
    flow.file("lab/config.yaml", PROFILE)
    err = flow.ok("--profile", "lab", "a.txt")
    assert "using profiles lab/config.yaml and workflow/profiles/default/config.yaml" in err
    assert flow.read("a.txt") == "threads=2 mem=2048 part=debug\n"
    flow.ok("--profile", "lab", "-F", "a.txt", "--workflow-profile", "none")
    assert flow.read("a.txt") == "threads=4 mem=2048 part=debug\n"


def test_unknown_key_is_an_error_naming_file_line_and_key(flow: Flow) -> None:
    flow.write(RULES)
    flow.file("lab/config.yaml", "jobs: 2\ncluster: \"sbatch -p short\"\n")
    rc, out, err = flow.run("--profile", "lab")
    assert rc == 2
    assert err == ("lab/config.yaml:2: config error: unknown key 'cluster' in profile: no flag --cluster\n"
                   "  hint: a profile's keys are long flags without their dashes (jobs, executor, "
                   "default-resources...)\n")
    assert not flow.exists("a.txt")


def test_flowmake_toml_still_applies_beside_a_profile(flow: Flow) -> None:
    flow.write(RULES)
    flow.file("lab/config.yaml", "jobs: 1\n")
    flow.file("site.toml", 'backend = "nosuch"\n')
    rc, _, err = flow.run("--profile", "lab", "--profile", "site.toml")
    assert rc == 2 and "unknown backend 'nosuch'" in err, err
    flow.file("lab/config.yaml", "executor: local\ndefault-resources: [slurm_partition=p]\n")
    flow.ok("--profile", "lab", "--profile", "site.toml", "-c", "2", "a.txt")  # a flag overrides the toml
    assert flow.read("a.txt") == "threads=2 mem=100 part=p\n"


def test_expression_that_would_run_code_is_refused(flow: Flow) -> None:
    flow.write(RULES)
    flow.file("lab/config.yaml", "set-resources:\n  a:\n    tmp: input.__class__\n")
    rc, _, err = flow.run("--profile", "lab", "-n")
    assert rc == 2
    assert err.startswith("flowmake: using profile lab/config.yaml for default flags\n"
                          "config error: profile lab/config.yaml:1: tmp=input.__class__: "
                          "flowmake does not evaluate the attribute .__class__ in resource values\n")


def test_rerun_triggers_leave_out_params_and_code(flow: Flow) -> None:
    text = """
        rule a:
            output: "a.txt"
            params: n=1
            shell: "echo {params.n} > {output}"
    """
    flow.write(text)
    flow.ok()
    flow.write(text.replace("n=1", "n=2").replace("echo", "echo -n"))
    assert flow.planned("--rerun-triggers", "mtime", "input") == []
    assert flow.planned("--rerun-triggers", "params", "input") == ["a.txt"]
    assert flow.planned() == ["a.txt"]
    rc, out, _ = flow.run("--list-params-changes", "--rerun-triggers", "mtime")
    assert (rc, out) == (0, "a.txt\n")
    rc, out, _ = flow.run("--lc")
    assert (rc, out) == (0, "a.txt\n")
    rc, out, _ = flow.run("--list-input-changes")
    assert (rc, out) == (0, "")


def test_default_resources_without_values_are_snakemakes(flow: Flow) -> None:
    flow.write("""
        rule a:
            output: "a.txt"
            shell: "echo {resources.mem_mb} {resources.disk_mb} > {output}"
    """)
    flow.ok("--default-resources")
    assert flow.read("a.txt") == "1000 50000\n"  # no input: disk_mb is 50000, mem_mb at least 1000


def test_flags_flowmake_does_not_need_are_accepted(flow: Flow) -> None:
    flow.write("""
        rule a:
            output: "a.txt"
            shell: "echo done > {output}"
    """)
    err = flow.ok("--show-failed-logs", "--local-cores", "1", "--verbose", "--wrapper-prefix", "file:///w/",
                  "--max-jobs-per-timespan", "10/1s", "--latency-wait", "1", "-e", "local")
    assert "    echo done > a.txt\n" in err  # --verbose prints the commands, like -p
    assert flow.read("a.txt") == "done\n"


def test_resource_expressions_keep_the_graph_memo(flow: Flow) -> None:
    from flowmake.graph_memo import MEMO_FILE

    flow.write("""
        rule a:
            output: "a.txt"
            shell: "echo {resources.mem_mb} {resources.runtime} > {output}"
    """)
    flow.ok("--default-resources", "--set-resources", "a:runtime=attempt*60")
    assert flow.read("a.txt") == "1000 60\n"
    assert (flow.root / ".flowmake" / MEMO_FILE).exists(), "Snakemake's default expressions are no functions"
    assert flow.planned("--default-resources", "--set-resources", "a:runtime=attempt*60") == []
    assert flow.planned("--default-resources", "--set-resources", "a:runtime=attempt*30") == ["a.txt"]
