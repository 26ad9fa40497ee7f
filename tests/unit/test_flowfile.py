"""Loading rule files: translation, top-level directives, config, includes, helpers, errors."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

from flowmake.errors import ConfigError, FlowfileError, UsageError
from flowmake.flowfile import load_workflow
from flowmake.flowfile.config import parse_overrides
from flowmake.flowfile.helpers import expand, glob_wildcards_in, multiext, temp, unpack
from flowmake.flowfile.translate import translate
from flowmake.namedlist import Flag
from flowmake.rules import AllDone, Workflow


def write(tmp_path: Path, text: str, name: str = "Flowfile") -> str:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return str(path)


def load(tmp_path: Path, text: str, **kw: object) -> Workflow:
    kw.setdefault("workdir", str(tmp_path))  # as if flowmake ran in tmp_path
    return load_workflow(write(tmp_path, text), **kw)  # type: ignore[arg-type]


# -- translation --------------------------------------------------------------------------------


def test_translation_keeps_line_numbers() -> None:
    src = textwrap.dedent("""
        rule a:
            input:
                "x",
                y="z"
            output: "o"
            run:
                print(1)
        include: "other"
    """).lstrip()
    out = translate(src, "F")
    assert out.source.count("\n") == src.count("\n")
    assert out.run_sources == {1: "print(1)\n"}
    assert "__flowmake__.include(8, " in out.source.splitlines()[7]
    compile(out.source, "F", "exec")


def test_rules_in_loops_and_conditions(tmp_path: Path) -> None:
    wf = load(tmp_path, """
        for i in range(3):
            if i != 1:
                rule:
                    name: f"r{i}"
                    output: f"out{i}.txt"
                    shell: "touch {output}"
        rule:
            output: "anon.txt"
            shell: "touch {output}"
    """)
    assert [r.name for r in wf.rules] == ["r0", "r2", "rule3"]
    assert wf.rules[1].location.line == 3


def test_rule_in_function_sees_function_locals(tmp_path: Path) -> None:
    wf = load(tmp_path, """
        def make(tag):
            rule:
                name: "mk_" + tag
                input: lambda wildcards: tag + ".in"
                output: tag + ".out"
                shell: "cp {input} {output}"
        make("a")
        make("b")
    """)
    from flowmake.rules import AllDone
    inst = wf.rule("mk_b").instantiate(wf.rule("mk_b").match_output("b.out"), AllDone())
    assert list(inst.input) == ["b.in"]


def test_top_level_directives(tmp_path: Path) -> None:
    wf = load(tmp_path, """
        localrules: all, b
        ruleorder: b > a
        wildcard_constraints:
            s=r"[a-z]+"
        container: "docker://busybox"
        shell.prefix("set -x; ")
        shell.executable("/bin/bash")
        rule all:
            input: "x.txt"
        rule a:
            output: "{s}.txt"
            shell: "touch {output}"
        rule b:
            output: "{s}.txt"
            localrule: True
            container: "img:2"
            shell: "touch {output}"
        onstart:
            print("start")
        onerror:
            print("err", log)
    """)
    assert wf.localrules == {"all", "b"}
    assert wf.prefers("b", "a") is True and wf.prefers("a", "b") is False
    assert wf.prefers("a", "all") is None
    assert wf.rule("a").match_output("AB.txt") is None
    assert wf.rule("a").container == "docker://busybox"
    assert wf.rule("b").container == "img:2"
    assert wf.rule("all").localrule and not wf.rule("a").localrule
    assert wf.shell_settings.prefix == "set -x; " and wf.shell_settings.executable == "/bin/bash"
    assert wf.onstart is not None and wf.onerror is not None and wf.onsuccess is None
    assert wf.default_rule is wf.rule("all")


def test_default_target(tmp_path: Path) -> None:
    wf = load(tmp_path, """
        rule a:
            output: "a"
            shell: "touch a"
        rule b:
            output: "b"
            default_target: True
            shell: "touch b"
    """)
    assert wf.default_rule.name == "b"


def test_rule_lookup_did_you_mean(tmp_path: Path) -> None:
    wf = load(tmp_path, """
        rule align:
            output: "a"
            shell: "touch a"
    """)
    with pytest.raises(UsageError) as e:
        wf.rule("aling")
    assert str(e.value) == "usage error: no rule named 'aling'\n  hint: did you mean 'align'?"


def test_include_relative_and_locations(tmp_path: Path) -> None:
    write(tmp_path, """
        X = 1
        rule inc:
            output: "inc.txt"
            shell: "touch {output}"
    """, "rules/sub.flow")
    wf = load(tmp_path, """
        include: "rules/sub.flow"
        rule main:
            input: rules.inc.output
            output: "main.txt"
            params: x=X
            shell: "cp {input} {output}"
    """)
    assert [r.name for r in wf.rules] == ["inc", "main"]
    assert wf.rule("inc").location.file.endswith("rules/sub.flow")
    assert wf.rule("inc").location.line == 2
    assert any(f.endswith("sub.flow") for f in wf.files)


def test_include_missing(tmp_path: Path) -> None:
    with pytest.raises(FlowfileError) as e:
        load(tmp_path, """
            x = 1
            include: "nope.flow"
        """)
    assert e.value.location.line == 2
    assert e.value.message == "cannot include 'nope.flow': file not found"


def test_two_workflows_are_independent(tmp_path: Path) -> None:
    p1 = write(tmp_path, 'config["k"] = 1\nrule a:\n    output: "a"\n    shell: "x"\n', "F1")
    p2 = write(tmp_path, 'rule b:\n    output: "b"\n    shell: "x"\n', "F2")
    w1, w2 = load_workflow(p1), load_workflow(p2)
    assert [r.name for r in w1.rules] == ["a"] and [r.name for r in w2.rules] == ["b"]
    assert w1.config == {"k": 1} and w2.config == {}


# -- config ------------------------------------------------------------------------------------


def test_config_precedence(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("a: 1\nb: 1\nc: 1\nnested: {x: 1, y: 1}\n")
    (tmp_path / "cli.json").write_text(json.dumps({"b": 2, "c": 2, "nested": {"y": 2}}))
    wf = load(tmp_path, """
        configfile: "c.yaml"
        rule a:
            output: "a"
            params: v=config["c"]
            shell: "touch a"
    """, configfiles=[str(tmp_path / "cli.json")], config_overrides=parse_overrides(["c=3"]))
    assert wf.config == {"a": 1, "b": 2, "c": 3, "nested": {"x": 1, "y": 2}}
    assert wf.rule("a")._params == [("v", 3)]


def test_parse_overrides_like_snakemake() -> None:
    # Snakemake's parse_config: int, float, True/False, then YAML whose scalars stay strings.
    assert parse_overrides(["n=3", "f=0.5", "t=True", "y=true", "s=abc", "e=", "l=[1, 2]"]) == {
        "n": 3, "f": 0.5, "t": True, "y": "true", "s": "abc", "e": None, "l": ["1", "2"]}
    # A key given twice merges, as config files do.
    assert parse_overrides(["b={x: one}", "b={y: two}"]) == {"b": {"x": "one", "y": "two"}}
    with pytest.raises(ConfigError):
        parse_overrides(["novalue"])


def test_configfile_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load(tmp_path, 'configfile: "missing.yaml"\n')
    assert str(e.value).startswith(f"{tmp_path / 'Flowfile'}:1: config error: cannot read config")
    (tmp_path / "bad.yaml").write_text("a: [1\n")
    with pytest.raises(ConfigError) as e:
        load(tmp_path, 'configfile: "bad.yaml"\n')
    assert "is not valid YAML" in e.value.message


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("text,line,message", [
    ('rule a:\n    inptu: "x"\n', 2, "unknown directive 'inptu' in rule 'a'"),
    ('rule a:\n    shell: "x"\n    output: "y"\n', 3,
     "'output' after the action 'shell:' in rule 'a'; the action (shell, run, script, wrapper or notebook) must come last"),
    ('rule a:\n    output: "y"\n    output: "z"\n', 3, "'output' given twice in rule 'a'"),
    ('rule a:\n    cwl: "tool.cwl"\n', 2, "'cwl' is not supported"),
    ('rule a:\n    output:\n', 2, "'output' has no value"),
    ('x = 1\nrule a:\n    output: "a"\n    shell: "x" +\n', 4, "invalid syntax: invalid syntax"),
    ('x = (1,\n', 1, "invalid syntax: '(' was never closed"),
    ('rule a:\nx = 1\n', 1, "rule 'a' has no directives"),
    ('rule a:\n    print(1)\n', 2, "expected a rule directive such as 'input:' or 'shell:'"),
    ('use rule a as b with:\n    output: "x"\n', 1,
     "use rule: no rule 'a' defined before this statement"),
])
def test_syntax_errors(tmp_path: Path, text: str, line: int, message: str) -> None:
    with pytest.raises(FlowfileError) as e:
        load(tmp_path, text)
    assert e.value.location is not None and e.value.location.line == line
    assert e.value.message == message


def test_unknown_directive_message_text(tmp_path: Path) -> None:
    with pytest.raises(FlowfileError) as e:
        load(tmp_path, 'rule a:\n    inptu: "x"\n')
    assert str(e.value) == (f"{tmp_path / 'Flowfile'}:2: Flowfile error: unknown directive 'inptu' "
                            "in rule 'a'\n  inptu: \"x\"\n  hint: did you mean 'input'?")


def test_runtime_error_in_file_has_line(tmp_path: Path) -> None:
    with pytest.raises(FlowfileError) as e:
        load(tmp_path, 'x = 1\n\ny = {}["nope"]\n')
    assert e.value.location.line == 3
    assert e.value.message == "KeyError: 'nope'"
    assert e.value.details == ['y = {}["nope"]']


def test_runtime_error_in_included_file(tmp_path: Path) -> None:
    write(tmp_path, "a = 1\nb = 1 / 0\n", "inc.flow")
    with pytest.raises(FlowfileError) as e:
        load(tmp_path, 'include: "inc.flow"\n')
    assert e.value.location.file.endswith("inc.flow") and e.value.location.line == 2
    assert e.value.message == "ZeroDivisionError: division by zero"


def test_outputs_with_different_wildcards(tmp_path: Path) -> None:
    with pytest.raises(FlowfileError) as e:
        load(tmp_path, 'rule a:\n    output: "{x}.a", "{y}.b"\n    shell: "x"\n')
    assert e.value.message == "all outputs of a rule must have the same wildcards: {x}.a; {y}.b"
    assert e.value.rule == "a" and e.value.location.line == 1


def test_input_wildcard_not_in_output(tmp_path: Path) -> None:
    with pytest.raises(FlowfileError) as e:
        load(tmp_path, 'rule a:\n    input: "{y}.in"\n    output: "{x}.a"\n    shell: "x"\n')
    assert e.value.message == "wildcards in '{y}.in' cannot be determined from the output files: y"


def test_duplicate_rule_and_unknown_ruleorder(tmp_path: Path) -> None:
    with pytest.raises(FlowfileError) as e:
        load(tmp_path, 'rule a:\n    output: "a"\nrule a:\n    output: "b"\n')
    assert e.value.location.line == 3
    with pytest.raises(FlowfileError) as e:
        load(tmp_path, 'ruleorder: a > bb\nrule a:\n    output: "a"\nrule b:\n    output: "b"\n')
    assert e.value.message == "unknown rule 'bb' in ruleorder/localrules"


def test_wildcard_type_in_rule_file(tmp_path: Path) -> None:
    wf = load(tmp_path, """
        wildcard_type("sample_id", r"S\\d+", lambda s: int(s[1:]))
        rule a:
            output: "out/{id:sample_id}.txt"
            shell: "touch {output}"
    """)
    b = wf.rule("a").match_output("out/S12.txt")
    assert b is not None and b["id"] == 12
    with pytest.raises(FlowfileError) as e:
        load(tmp_path, 'rule a:\n    output: "{x:nope}"\n')
    assert e.value.message == "unknown wildcard type 'nope' in pattern '{x:nope}'"


# -- helpers -----------------------------------------------------------------------------------


def test_expand() -> None:
    assert expand("{a}_{b}.txt", a=["1", "2"], b="x") == ["1_x.txt", "2_x.txt"]
    assert expand("{a}_{b}", zip, a=[1, 2], b=["x", "y"]) == ["1_x", "2_y"]
    assert expand(["{a}.x", "{a}.y"], a=[1]) == ["1.x", "1.y"]
    assert expand("{{keep}}/{a}", a=[1]) == ["{keep}/1"]
    assert expand("{a}/{b}", a=[1], allow_missing=True) == ["1/{b}"]
    assert expand("{a}/{b,\\d+}", a=[1], allow_missing=True) == ["1/{b,\\d+}"]


def test_glob_wildcards(tmp_path: Path) -> None:
    for name in ["a/a.txt", "b/b.txt", "a/c.txt", "x.txt"]:
        (tmp_path / "d" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "d" / name).write_text("")
    found = glob_wildcards_in(str(tmp_path), "d/{s}/{s}.txt")
    assert sorted(found.s) == ["a", "b"]
    found = glob_wildcards_in(str(tmp_path), "{x}.txt", files=["q.txt", "r.csv"])
    assert found.x == ["q"]


def test_multiext_and_flags() -> None:
    assert multiext("a/b", ".bam", ".bai") == ["a/b.bam", "a/b.bai"]
    t = temp(["x", "y"])
    assert [v.flags for v in t] == [frozenset({Flag.TEMP})] * 2
    u = unpack(lambda w: {"a": "b"})
    assert u.unpack


def test_workdir_configfile_and_ignored_directives(tmp_path: Path) -> None:
    (tmp_path / "wd").mkdir()
    (tmp_path / "wd" / "c.json").write_text('{"a": 5}')
    wf = load(tmp_path, """
        workdir: "wd"
        configfile: "c.json"
        rule a:
            output: "a"
            conda: "envs/x.yaml"
            envmodules: "bwa/1"
            singularity: "docker://x"
            shell: "touch a"
    """)
    assert wf.workdir == str(tmp_path / "wd")
    assert wf.config == {"a": 5}
    assert wf.rule("a").container == "docker://x"
    assert str(tmp_path / "wd" / "c.json") in wf.files


def test_error_in_directive_expression_has_line(tmp_path: Path) -> None:
    with pytest.raises(FlowfileError) as e:
        load(tmp_path, 'rule a:\n    output: "a"\n    params:\n        x=undefined_name\n    shell: "x"\n')
    assert e.value.location.line == 4
    assert e.value.message == "NameError: name 'undefined_name' is not defined"


def test_syntax_error_inside_run_block(tmp_path: Path) -> None:
    with pytest.raises(FlowfileError) as e:
        load(tmp_path, 'rule a:\n    output: "a"\n    run:\n        x = 1\n        y = = 2\n')
    assert e.value.location.line == 5
    assert e.value.details == ["y = = 2"]


def test_global_and_rule_wildcard_constraints(tmp_path: Path) -> None:
    wf = load(tmp_path, """
        wildcard_constraints:
            s=r"[a-z]+"
        rule a:
            output: "{s}/{n}.txt"
            wildcard_constraints:
                n=r"\\d+"
            shell: "x"
        rule b:
            output: "b/{s,[A-Z]+}.txt"
            shell: "x"
    """)
    a = wf.rule("a")
    assert a.match_output("ab/12.txt") == {"s": "ab", "n": "12"}
    assert a.match_output("ab/x.txt") is None and a.match_output("A/1.txt") is None
    assert wf.rule("b").match_output("b/AB.txt") == {"s": "AB"}
    assert a.match_output("../1.txt") is None


def test_hooks_are_callables(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    wf = load(tmp_path, """
        onsuccess: print("done")
        onerror:
            print("failed:", log)
    """)
    wf.onsuccess()
    wf.onerror(log="x.log")
    assert capsys.readouterr().out == "done\nfailed: x.log\n"


def test_snakemake_style_file_name(tmp_path: Path) -> None:
    path = tmp_path / "Snakefile"
    path.write_text('rule all:\n    input: "a"\nrule a:\n    output: "a"\n    shell: "touch {output}"\n')
    wf = load_workflow(str(path), workdir=str(path.parent))
    assert wf.flowfile == str(path) and wf.default_rule.name == "all"


def test_glob_wildcards_in_rule_file_uses_the_workflow_directory(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    for s in ["s1", "s2"]:
        (tmp_path / "data" / f"{s}.fq").write_text("")
    cwd = os.getcwd()
    os.chdir("/")
    try:
        wf = load(tmp_path, """
            SAMPLES = sorted(glob_wildcards("data/{sample}.fq").sample)
            rule all:
                input: expand("out/{s}.txt", s=SAMPLES)
                threads: workflow.cores
        """)
    finally:
        os.chdir(cwd)
    from flowmake.rules import AllDone
    assert list(wf.rule("all").instantiate({}, AllDone()).input) == ["out/s1.txt", "out/s2.txt"]


def test_private_names_are_not_mangled_in_rule_bodies(tmp_path: Path) -> None:
    wf = load(tmp_path, """
        __prefix = "p"
        rule a:
            output: __prefix + ".txt"
            run:
                print(__prefix)
    """)
    assert [p.text for p in wf.rule("a").output_patterns] == ["p.txt"]


def test_common_snakefile_headers_load_with_or_without_snakemake(tmp_path: Path) -> None:
    wf = load(tmp_path, """
        from snakemake.utils import min_version
        from snakemake.io import expand as snake_expand
        min_version("7.0")
        rule a:
            output: snake_expand("o{i}.txt", i=[1])
            benchmark: repeat("bench/a.tsv", 3)
            shell: "touch {output}"
    """)
    inst = wf.rule("a").instantiate(wf.rule("a").bindings_from_raw({}), AllDone())
    assert list(inst.output) == ["o1.txt"] and inst.benchmark == "bench/a.tsv"


def test_one_line_rules(tmp_path: Path) -> None:
    wf = load(tmp_path, """
        rule all: input: "b.txt"
        rule b: output: "b.txt"
        checkpoint c: output: directory("d")
    """)
    assert [r.name for r in wf.rules] == ["all", "b", "c"]
    assert wf.rule("b").output_patterns[0].text == "b.txt"
    with pytest.raises(FlowfileError) as e:
        load(tmp_path, 'rule x: "b.txt"\n')
    assert "unexpected text after 'rule' header" in str(e.value)


def test_output_given_twice_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FlowfileError) as e:
        load(tmp_path, """
            rule a:
                output: "{name}.txt", "{name}.txt"
                shell: "touch {output}"
        """)
    assert "output '{name}.txt' is given twice" in str(e.value)


def test_resource_scopes_are_accepted(tmp_path: Path) -> None:
    # Snakemake's resource_scopes: only cluster group jobs use them; a rule file with it loads.
    wf = load(tmp_path, """
        resource_scopes:
            mem_mb="global",
            gpus="local",
        rule a:
            output: "a"
            shell: "touch a"
    """)
    assert [r.name for r in wf.rules] == ["a"]
