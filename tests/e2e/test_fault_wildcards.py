"""Fault injection: hostile wildcard values pushed through every directive that can carry one.

A wildcard value comes from a target or a file name, which anyone may choose. Each hostile value
(shell syntax, control characters, path escapes) is requested as a target of a rule per directive,
needed as an input, found by ``glob_wildcards`` at load time and discovered after a checkpoint;
each must be refused where it is bound: exit 2, one message naming the target (or file) and the
wildcard, no traceback, nothing the injected command would create, no output written, and no rule
function called with it (each function records what it was called with). Benign odd values build.
Two quick checks close the gaps: a rule whose regex names the character takes such a path, and an
existing file with such a name is a source where it is needed but an error when it is requested.

Trials run in batches inside one driver process that calls the command line's ``main`` once per
trial in a fresh copy of the workflow (jobs still run as real processes): a new interpreter per
trial would make several hundred trials take minutes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Flow

FLOWFILE = '''
import json, os, subprocess

VALUES = json.load(open("values.json", encoding="utf-8")) if os.path.exists("values.json") else []
AGG = config.get("agg", "shell_wc")


def probe(where, value):
    """What a careless author does: hand the value to a shell. Refused values never get here."""
    os.makedirs("seen", exist_ok=True)
    with open(os.path.join("seen", where), "a", encoding="utf-8") as f:
        f.write(value + "\\n")
    subprocess.run("echo " + value + " > /dev/null", shell=True)
    return value


if config.get("glob_at_load"):
    FOUND = glob_wildcards("data/{x}.txt").x

rule shell_wc:
    output: "shell_wc/{x}.txt"
    shell: "echo {wildcards.x} > {output}"

rule params_fn:
    output: "params_fn/{x}.txt"
    params: p=lambda w: "v-" + probe("params", w.x)
    shell: "echo {params.p} > {output}"

rule input_fn:
    input: lambda w: probe("input", w.x) and "src.txt"
    output: "input_fn/{x}.txt"
    shell: "echo {wildcards.x} > {output}"

rule by_output:
    output: main="by_output/{x}.txt", extra="by_output/{x}.extra"
    shell: "echo {wildcards.x} > {output.main}; touch {output.extra}"

rule by_log:
    output: "by_log/{x}.txt"
    log: "logs/{x}.log"
    shell: "echo {wildcards.x} > {output}; echo logged > {log}"

rule resources_fn:
    output: "resources_fn/{x}.txt"
    resources: mem_mb=lambda w: probe("resources", w.x) and 10
    shell: "echo {wildcards.x} > {output}"

rule threads_fn:
    output: "threads_fn/{x}.txt"
    threads: lambda w: probe("threads", w.x) and 1
    shell: "echo {wildcards.x} > {output}"

rule by_run:
    output: "by_run/{x}.txt"
    run:
        probe("run", wildcards.x)
        shell("echo " + wildcards.x + " > /dev/null")
        with open(output[0], "w", encoding="utf-8") as f:
            f.write(wildcards.x + "\\n")

rule by_script:
    output: "by_script/{x}.txt"
    script: "probe_script.py"

rule by_message:
    output: "by_message/{x}.txt"
    message: "making {wildcards.x}"
    shell: "echo {wildcards.x} > {output}"

rule by_benchmark:
    output: "by_benchmark/{x}.txt"
    benchmark: "bench/{x}.tsv"
    shell: "echo {wildcards.x} > {output}"

rule agg:
    input: lambda w: [AGG + "/" + v + ".txt" for v in VALUES]
    output: "agg.txt"
    shell: "cat {input} > {output}"

checkpoint discover:
    output: directory("found")
    shell: "cp -r seed {output}"


def globbed(wildcards):
    found = checkpoints.discover.get().output[0]
    return expand("shell_wc/{x}.txt", x=glob_wildcards(os.path.join(found, "{x}.txt")).x)


def listed(wildcards):
    found = checkpoints.discover.get().output[0]
    return expand("shell_wc/{x}.txt", x=[f[:-4] for f in sorted(os.listdir(found))])

rule after_glob:
    input: globbed
    output: "after_glob.txt"
    shell: "cat {input} > {output}"

rule after_list:
    input: listed
    output: "after_list.txt"
    shell: "cat {input} > {output}"
'''

SCRIPT = '''
import os, subprocess
x = snakemake.wildcards.x
os.makedirs("seen", exist_ok=True)
with open(os.path.join("seen", "script"), "a", encoding="utf-8") as f:
    f.write(x + "\\n")
subprocess.run("echo " + x + " > /dev/null", shell=True)
with open(snakemake.output[0], "w", encoding="utf-8") as f:
    f.write(x + "\\n")
'''

GLOB_LINE = FLOWFILE.lstrip().splitlines().index('    FOUND = glob_wildcards("data/{x}.txt").x') + 1

# Rule (= output folder) per directive a wildcard value can flow through.
DIRECTIVES = ["shell_wc", "params_fn", "input_fn", "by_output", "by_log", "resources_fn", "threads_fn",
              "by_run", "by_script", "by_message", "by_benchmark"]

# Each shell metacharacter, most as a payload that creates PWNED if a shell ever parses it.
SHELL = ["a;touch PWNED", "a|touch PWNED", "a&&touch PWNED", "a&b", "a>PWNED", "a<b", "cat<(touch PWNED)",
         "$(touch PWNED)", "a$b", "${IFS}", "`touch PWNED`", "a(b", "a)b", "(touch PWNED)",
         "x';touch PWNED;'", "a'b", 'x";touch PWNED;"', 'a"b']
CONTROL = ["a\ntouch PWNED", "a\tb", "a\rb", "a\x1bb", "a\x7fb", "a\x01b", "a\x85b", "\x0b"]
HOSTILE = SHELL + CONTROL
# Path escapes cannot be file names or survive target normalization: they arrive as needed inputs.
ESCAPES = ["../../escape", "a/../../escape", "/flowmake-escape/x", "a/../b", ".."]
ESCAPING_TARGETS = ["../escape.txt", "shell_wc/../../escape.txt", "/flowmake-escape.txt"]
BENIGN = ["a b", "a#b", "a=b", "é", "Straße", "日本", "a+b", "a%b", "a@b", "a,b", "a:b"]

DRIVER = textwrap.dedent('''
    import contextlib, io, json, os, shutil, sys
    from flowmake.cli import main

    spec = json.load(sys.stdin)
    results = []
    for n, trial in enumerate(spec["trials"]):
        home = os.path.join(spec["root"], str(n))
        work = os.path.join(home, "w")
        shutil.copytree(spec["template"], work)
        for name, text in trial.get("files", {}).items():
            path = os.path.join(work, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
        before = set()
        for d, _, files in os.walk(home):
            before.update(os.path.relpath(os.path.join(d, f), home) for f in files)
        err, out = io.StringIO(), io.StringIO()
        os.chdir(work)
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            rc = main(trial["argv"])
        os.chdir(spec["root"])
        new = []
        for d, dirs, files in os.walk(home):
            dirs[:] = [x for x in dirs if x != ".flowmake"]
            new += [p for p in (os.path.relpath(os.path.join(d, f), home) for f in files + dirs)
                    if p not in before and not os.path.isdir(os.path.join(home, p))]
        results.append({"rc": rc, "stderr": err.getvalue(), "stdout": out.getvalue(),
                        "new": sorted(new)})
    with open(spec["results"], "w", encoding="utf-8") as f:  # jobs may write to stdout
        json.dump(results, f)
''')


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("template")
    (root / "Flowfile").write_text(FLOWFILE.lstrip(), encoding="utf-8")
    (root / "probe_script.py").write_text(SCRIPT.lstrip(), encoding="utf-8")
    (root / "src.txt").write_text("src\n", encoding="utf-8")
    return root


def run_trials(template: Path, root: Path, trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWMAKE_")}
    results = root / "results.json"
    spec = {"template": str(template), "root": str(root), "trials": trials, "results": str(results)}
    done = subprocess.run([sys.executable, "-c", DRIVER], input=json.dumps(spec), capture_output=True,
                          text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(results.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def shown(text: str) -> str:
    """How an error line shows a path: as is, or as a Python literal if it has control characters."""
    return text if text.isprintable() else repr(text)


def assert_refused(trial: dict[str, Any], result: dict[str, Any], names: list[str],
                   allowed_new: tuple[str, ...] = ()) -> None:
    context = f"{trial['argv']!r} {trial.get('files', {}).get('values.json', '')}\n{result['stderr']}"
    assert result["rc"] == 2, context
    err = result["stderr"]
    assert "Traceback" not in err and "internal error" not in err, context
    for name in names:
        assert name in err, f"{name!r} not in the message\n{context}"
    stray = [p for p in result["new"] if not p.startswith(allowed_new)]
    assert stray == [], f"files appeared: {stray}\n{context}"  # PWNED, outputs, seen/ markers


@pytest.mark.slow
@pytest.mark.parametrize("directive", DIRECTIVES)
def test_hostile_targets_are_refused(template: Path, tmp_path: Path, directive: str) -> None:
    trials = [{"argv": ["-c", "1", f"{directive}/{v}.txt"]} for v in HOSTILE]
    for trial, result in zip(trials, run_trials(template, tmp_path, trials)):
        target = trial["argv"][-1]
        assert_refused(trial, result, ["unsafe wildcard value: wildcard 'x' would be",
                                       f"  rule: {directive}\n", f"  target: {shown(target)}\n"])


def _has_field(value: str) -> bool:
    return re.search(r"\{\w+\}", value) is not None


def _field(value: str) -> str:
    m = re.search(r"\{(\w+)\}", value)
    assert m is not None
    return m.group(1)


@pytest.mark.slow
@pytest.mark.parametrize("directive", DIRECTIVES)
def test_hostile_values_needed_as_inputs_are_refused(template: Path, tmp_path: Path,
                                                     directive: str) -> None:
    trials = [{"argv": ["-c", "1", "agg.txt", "--config", f"agg={directive}"],
               "files": {"values.json": json.dumps([v])}} for v in HOSTILE + ESCAPES]
    values = HOSTILE + ESCAPES
    for v, trial, result in zip(values, trials, run_trials(template, tmp_path, trials)):
        if _has_field(v):
            # Like Snakemake, a {name} in a path an input function returns is a wildcard to fill
            # in: one the rule does not have is refused there, before the value is ever matched.
            assert_refused(trial, result, [f"{{{_field(v)}}} is not a wildcard of rule 'agg'", "  rule: agg\n"])
            continue
        assert_refused(trial, result, ["unsafe wildcard value: wildcard 'x' would be", "  target: agg.txt\n",
                                       f"  path: {shown(directive + '/' + v + '.txt')}\n"])


@pytest.mark.slow
def test_hostile_file_names_found_by_glob_wildcards_are_refused(template: Path, tmp_path: Path) -> None:
    trials = [{"argv": ["-c", "1", "shell_wc/ok.txt", "--config", "glob_at_load=1"],
               "files": {"data/ok.txt": "", f"data/{v}.txt": ""}} for v in HOSTILE]
    for v, trial, result in zip(HOSTILE, trials, run_trials(template, tmp_path, trials)):
        found = f"file {'data/' + v + '.txt'!r} found by glob_wildcards('data/{{x}}.txt')"
        assert_refused(trial, result, [f"{found}: wildcard 'x' would be", f"Flowfile:{GLOB_LINE}: "])


@pytest.mark.slow
@pytest.mark.parametrize("route", ["after_glob", "after_list"])
def test_hostile_names_a_checkpoint_discovers_are_refused(template: Path, tmp_path: Path,
                                                          route: str) -> None:
    trials = [{"argv": ["-c", "1", f"{route}.txt"], "files": {"seed/ok.txt": "", f"seed/{v}.txt": ""}}
              for v in HOSTILE]
    for v, trial, result in zip(HOSTILE, trials, run_trials(template, tmp_path, trials)):
        # The checkpoint ran and wrote the names (copied from seed/); nothing after it did.
        names = ([f"file {'found/' + v + '.txt'!r} found by glob_wildcards(", f"  rule: {route}\n"]
                 if route == "after_glob" else [f"  path: {shown('shell_wc/' + v + '.txt')}\n"])
        if route == "after_list" and _has_field(v):  # see test_hostile_values_needed_as_inputs_are_refused
            assert_refused(trial, result, [f"{{{_field(v)}}} is not a wildcard of rule '{route}'", f"  rule: {route}\n"],
                           allowed_new=("w/found/",))
            continue
        assert_refused(trial, result, ["unsafe wildcard value", "wildcard 'x' would be",
                                       f"  target: {route}.txt\n", *names],
                       allowed_new=("w/found/",))


@pytest.mark.slow
def test_targets_outside_the_workdir_are_refused(template: Path, tmp_path: Path) -> None:
    trials = [{"argv": ["-c", "1", t]} for t in ESCAPING_TARGETS]
    for t, trial, result in zip(ESCAPING_TARGETS, trials, run_trials(template, tmp_path, trials)):
        assert_refused(trial, result, [f"unsafe path: {t!r} is outside the working directory",
                                       f"  target: {t}\n"])
    assert not os.path.lexists("/flowmake-escape.txt")


@pytest.mark.slow
def test_benign_odd_values_still_build(template: Path, tmp_path: Path) -> None:
    work = tmp_path / "w"
    subprocess.run(["cp", "-r", str(template), str(work)], check=True)
    targets = [f"{d}/{v}.txt" for d in DIRECTIVES for v in BENIGN]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWMAKE_")}
    done = subprocess.run([sys.executable, "-m", "flowmake", "-c", "2", *targets], cwd=work, text=True,
                          capture_output=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    for d in DIRECTIVES:
        for v in BENIGN:
            want = f"v-{v}\n" if d == "params_fn" else f"{v}\n"
            assert (work / d / f"{v}.txt").read_text(encoding="utf-8") == want, (d, v)
    assert all((work / "logs" / f"{v}.log").read_text() == "logged\n" for v in BENIGN)
    assert all((work / "bench" / f"{v}.tsv").is_file() for v in BENIGN)
    assert all((work / "by_output" / f"{v}.extra").is_file() for v in BENIGN)
    for where in ["params", "input", "resources", "threads", "run", "script"]:
        seen = set((work / "seen" / where).read_text(encoding="utf-8").splitlines())
        assert seen == set(BENIGN), where
    assert not any("PWNED" in p.name for p in work.rglob("*"))
    for v in BENIGN:
        assert f"making {v}" in done.stdout + done.stderr


def test_a_rule_that_names_the_character_makes_the_path(flow: Flow) -> None:
    flow.write(r"""
        rule generic:
            output: "out/{x}.txt"
            shell: "echo generic {wildcards.x} > {output}"

        rule semicolons:
            output: "out/{x,[\w;]+}.txt"
            shell: "echo semi {wildcards.x} > {output}"

        ruleorder: generic > semicolons
    """)
    flow.ok("-c", "1", "out/a;b.txt", "out/ab.txt")
    assert flow.read("out/a;b.txt") == "semi a;b\n", "generic refuses the value, semicolons takes it"
    assert flow.read("out/ab.txt") == "generic ab\n"


def test_an_existing_file_with_a_refused_name_is_a_source_unless_requested(flow: Flow) -> None:
    flow.write("""
        rule all:
            input: "a;b.dat"
            output: "all.txt"
            shell: "cat {input} > {output}"

        rule copy:
            input: "{x}.in"
            output: "{x}.dat"
            shell: "cp {input} {output}"
    """)
    flow.file("a;b.dat", "kept\n")
    flow.ok("-c", "1", "all.txt")
    assert flow.read("all.txt") == "kept\n"
    rc, _, err = flow.run("-c", "1", "a;b.dat")
    assert (rc, err) == (2, "Flowfile:6: unsafe wildcard value: wildcard 'x' would be 'a;b', which "
                            "contains ';' (shell syntax)\n  rule: copy\n  target: a;b.dat\n  hint: "
                            "choose another name, or let the wildcard take ';' by naming it in its "
                            "regex, e.g. {x,[\\w.;]+}\n")
