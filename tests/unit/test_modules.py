"""Snakemake's module system: `module NAME:`, `use rule ... from/as/exclude/with`, local `use rule`.

Loaded in-process (the rule file's view: which rules exist, their paths, errors); `run:` blocks
and fetching run `flowmake` for real (see the golden cases for whole runs).
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Any

import pytest

from flowmake.errors import FlowfileError
from flowmake.flowfile import load_workflow
from flowmake.flowfile.sources import HostedFile, cache_root, github
from flowmake.rules import AllDone, Workflow


def write(root: Path, name: str, text: str) -> str:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return str(path)


def load(root: Path, main: str, **files: str) -> Workflow:
    for name, text in files.items():
        write(root, name.replace("__", "/"), text)
    return load_workflow(write(root, "Snakefile", main), workdir=str(root))


def outputs(wf: Workflow, name: str) -> list[str]:
    return list(wf.rule(name).instantiate({}, AllDone()).output)


def inputs(wf: Workflow, name: str, **wildcards: str) -> list[str]:
    return list(wf.rule(name).instantiate(wildcards, AllDone()).input)


MOD = """
rule a:
    output: "a.txt"
    shell: "touch {output}"

rule b:
    input: rules.a.output
    output: "b.txt"
    params: x=1, y=2
    shell: "touch {output}"
"""


def test_only_used_rules_join_the_workflow(tmp_path: Path) -> None:
    wf = load(tmp_path, """
        module m:
            snakefile: "m.smk"
        use rule b from m as m_b
        """, **{"m.smk": MOD})
    assert [r.name for r in wf.rules] == ["m_b"]
    assert inputs(wf, "m_b") == ["a.txt"]
    assert str(tmp_path / "m.smk") in wf.files  # fingerprinted by the graph memo


def test_use_rule_list_with_pattern_and_without_as(tmp_path: Path) -> None:
    wf = load(tmp_path, """
        module m:
            snakefile: "m.smk"
        use rule a, b from m as x_*
        use rule a from m
        """, **{"m.smk": MOD})
    assert [r.name for r in wf.rules] == ["x_a", "x_b", "a"]


def test_rules_name_refers_to_imported_rule_and_location_is_the_modules(tmp_path: Path) -> None:
    wf = load(tmp_path, """
        module m:
            snakefile: "m.smk"
            prefix: "p"
        use rule * from m as m_*
        rule all:
            input: rules.m_b.output
        """, **{"m.smk": MOD})
    assert inputs(wf, "all") == ["p/b.txt"]
    assert str(wf.rule("m_b").location).endswith("m.smk:5")


def test_prefix_leaves_absolute_parent_and_local_paths(tmp_path: Path) -> None:
    wf = load(tmp_path, """
        module m:
            snakefile: "m.smk"
            prefix: "p"
        use rule * from m
        """, **{"m.smk": """
        rule a:
            input: "/abs/in.txt", "../up.txt", local("here.txt"), "rel.txt"
            output: "out.txt"
            log: "a.log"
            benchmark: "a.tsv"
            shell: "touch {output}"
        """})
    inst = wf.rule("a").instantiate({}, AllDone())
    assert list(inst.input) == ["/abs/in.txt", "../up.txt", "here.txt", "p/rel.txt"]
    assert list(inst.output) == ["p/out.txt"] and list(inst.log) == ["p/a.log"]
    assert inst.benchmark == "p/a.tsv"


def test_replace_prefix_and_flags_survive(tmp_path: Path) -> None:
    wf = load(tmp_path, """
        module m:
            snakefile: "m.smk"
            replace_prefix: {"results/": "results/m/"}
        use rule * from m
        """, **{"m.smk": """
        rule a:
            output: temp("results/a.txt"), "other/b.txt"
            shell: "touch {output}"
        """})
    inst = wf.rule("a").instantiate({}, AllDone())
    assert list(inst.output) == ["results/m/a.txt", "other/b.txt"]
    assert [f.value for f in inst.flags["results/m/a.txt"]] == ["temp"]


def test_ambiguous_replace_prefix_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FlowfileError, match="several prefixes of replace_prefix"):
        load(tmp_path, """
            module m:
                snakefile: "m.smk"
                replace_prefix: {"res": "x/", "results/": "y/"}
            use rule * from m
            """, **{"m.smk": 'rule a:\n    output: "results/a.txt"\n    shell: "touch {output}"\n'})


def test_with_paths_are_not_prefixed_and_params_merge(tmp_path: Path) -> None:
    wf = load(tmp_path, """
        module m:
            snakefile: "m.smk"
            prefix: "p"
        use rule b from m as m_b with:
            output: "mine.txt"
            params: y=3
        """, **{"m.smk": MOD})
    inst = wf.rule("m_b").instantiate({}, AllDone())
    assert list(inst.output) == ["mine.txt"] and list(inst.input) == ["p/a.txt"]
    assert dict(inst.params.items()) == {"x": 1, "y": 3}


def test_module_namespace_and_config(tmp_path: Path) -> None:
    wf = load(tmp_path, """
        config["main"] = True
        module given:
            snakefile: "m.smk"
            config: {"k": "v"}
        module bare:
            snakefile: "m.smk"
        use rule a from given as g_a
        use rule a from bare as b_a
        RESULT = (given.seen, bare.seen, given.base, given.here)
        """, **{"m.smk": """
        seen = dict(config)
        base, here = workflow.basedir, workflow.current_basedir
        rule a:
            output: "a.txt"
            shell: "touch {output}"
        """})
    seen_given, seen_bare, base, here = wf.globals["RESULT"]
    # Snakemake 9: a module without config: starts from an empty config, not the main one;
    # workflow.basedir stays the main file's folder, current_basedir is the module's.
    assert seen_given == {"k": "v"} and seen_bare == {}
    assert base == here == str(tmp_path)
    assert wf.config == {"main": True}


def test_module_include_is_relative_to_the_module(tmp_path: Path) -> None:
    wf = load(tmp_path, """
        module m:
            snakefile: "mods/m.smk"
        use rule * from m as m_*
        """, **{"mods__m.smk": 'include: "rules/extra.smk"\n',
                "mods__rules__extra.smk": 'rule x:\n    output: "x.txt"\n    shell: "touch {output}"\n'})
    assert [r.name for r in wf.rules] == ["m_x"]
    assert str(tmp_path / "mods" / "rules" / "extra.smk") in wf.files


def test_star_import_may_be_modified_once(tmp_path: Path) -> None:
    text = textwrap.dedent("""
        module m:
            snakefile: "m.smk"
        use rule * from m as m_*
        use rule a from m as m_a with:
            output: "new.txt"
        """)
    wf = load(tmp_path, text, **{"m.smk": MOD})
    assert [r.name for r in wf.rules] == ["m_a", "m_b"]
    assert outputs(wf, "m_a") == ["new.txt"]
    with pytest.raises(FlowfileError, match="rule 'm_a' is defined twice"):
        load(tmp_path, text + 'use rule a from m as m_a with:\n    threads: 2\n')


def test_a_star_import_cannot_overwrite_an_existing_rule(tmp_path: Path) -> None:
    with pytest.raises(FlowfileError, match="rule 'm_a' is defined twice"):
        load(tmp_path, """
            module m:
                snakefile: "m.smk"
            use rule a from m as m_a with:
                output: "new.txt"
            use rule * from m as m_*
            """, **{"m.smk": MOD})


def test_module_checkpoints_and_hasattr_rules(tmp_path: Path) -> None:
    wf = load(tmp_path, """
        module m:
            snakefile: "m.smk"
        use rule * from m as m_*
        """, **{"m.smk": """
        checkpoint c:
            output: "c.txt"
            shell: "touch {output}"
        HAS = (hasattr(rules, "c"), hasattr(rules, "nope"), checkpoints.c.rule.name)
        """})
    assert wf.rule("m_c").is_checkpoint
    assert wf.globals["m"].HAS == (True, False, "m_c")


@pytest.mark.parametrize("line, message", [
    ("use rule * from m as m_* with:\n    threads: 2\n", "'with:' cannot be combined with 'use rule *'"),
    ("use rule a, b from m as one\n", "several rules cannot all be named 'one'"),
    ("use rule a from m as m_a with:\n    shell: 'x'\n", "'shell' cannot be changed by 'use rule ... with:'"),
    ("use rule * as x_*\n", "'use rule *' needs 'from MODULE'"),
    ("use rule a from m banana\n", "unexpected 'banana' in 'use rule'; expected 'as', 'with' or the end of the line"),
    ("use rule a\n", "'use rule' without 'from MODULE' needs 'as NEW_NAME'"),
    ("module q:\n    snakefil: 'm.smk'\n", "unknown key 'snakefil' in module 'q'"),
    ("module workflow:\n    snakefile: 'm.smk'\n", "a module cannot be named 'workflow'"),
    ("module:\n    snakefile: 'm.smk'\n", "a module needs a name: 'module NAME:' or a 'name:' key"),
])
def test_statement_errors(tmp_path: Path, line: str, message: str) -> None:
    main = "module m:\n    snakefile: 'm.smk'\n" + line
    write(tmp_path, "m.smk", MOD)
    with pytest.raises(FlowfileError) as e:
        load_workflow(write(tmp_path, "Snakefile", main), workdir=str(tmp_path))
    assert e.value.message == message
    assert e.value.location is not None and e.value.location.line is not None
    assert e.value.location.line >= 3


def test_dynamic_module_names(tmp_path: Path) -> None:
    wf = load(tmp_path, """
        for name in ["one", "two"]:
            module:
                name: name
                snakefile: f"{name}.smk"
            use rule * from name as name*
        """, **{"one.smk": 'rule a:\n    output: "1.txt"\n    shell: "touch {output}"\n',
                "two.smk": 'rule a:\n    output: "2.txt"\n    shell: "touch {output}"\n'})
    assert [r.name for r in wf.rules] == ["onea", "twoa"]


# -- hosted modules -----------------------------------------------------------------------------


def test_github_module_is_read_from_the_cache_offline(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    hosted = github("owner/repo", path="workflow/Snakefile", tag="v1.0")
    cached = Path(hosted.cache_path(cache_root()))
    cached.parent.mkdir(parents=True)
    cached.write_text('include: "rules/r.smk"\n')
    (cached.parent / "rules").mkdir()
    (cached.parent / "rules" / "r.smk").write_text('rule r:\n    output: "r.txt"\n    shell: "touch {output}"\n')
    wf = load(tmp_path, """
        module remote:
            snakefile: github("owner/repo", path="workflow/Snakefile", tag="v1.0")
        use rule * from remote as remote_*
        """)
    assert [r.name for r in wf.rules] == ["remote_r"]


def test_unreachable_host_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(FlowfileError) as e:
        load(tmp_path, """
            module remote:
                snakefile: gitlab("owner/repo", path="Snakefile", tag="v1", host="gitlab.invalid")
            use rule * from remote
            """)
    assert e.value.message.startswith("cannot fetch module 'remote' from https://gitlab.invalid/")
    assert e.value.location is not None and e.value.location.line == 1


def test_hosted_file_urls() -> None:
    gh = github("o/r", "workflow/Snakefile", tag="v2")
    assert gh.url() == "https://raw.githubusercontent.com/o/r/v2/workflow/Snakefile"
    gl = HostedFile("gitlab", "g/p", "a/S", "main", False, "gitlab.com")
    assert gl.url() == "https://gitlab.com/api/v4/projects/g%2Fp/repository/files/a%2FS/raw?ref=main"


# -- run blocks in a module (a real run: the job reloads the workflow) --------------------------


def test_run_block_sees_the_modules_config(flow: Any, tmp_path: Path) -> None:
    flow.file("m/Snakefile", textwrap.dedent("""
        rule a:
            output: "a.txt"
            run:
                with open(output[0], "w") as f:
                    f.write(config["word"] + "\\n")
        """))
    flow.write("""
        module m:
            snakefile: "m/Snakefile"
            config: {"word": "module"}
        use rule a from m as m_a
        """, name="Snakefile")
    flow.ok("-c", "1")
    assert flow.read("a.txt") == "module\n"
    assert os.path.isfile(tmp_path / "a.txt")


def test_editing_a_module_file_reruns_its_rules(flow: Any) -> None:
    # The module's file is one of the workflow's files: the graph memo and step keys see edits.
    flow.file("m.smk", 'rule a:\n    output: "a.txt"\n    shell: "echo one > {output}"\n')
    flow.write("""
        module m:
            snakefile: "m.smk"
        use rule * from m as m_*
        """, name="Snakefile")
    flow.ok("-c", "1")
    assert flow.planned() == []
    flow.file("m.smk", 'rule a:\n    output: "a.txt"\n    shell: "echo two > {output}"\n')
    flow.ok("-c", "1")
    assert flow.read("a.txt") == "two\n"


def test_hosted_shorthand() -> None:
    from flowmake.flowfile.sources import shorthand

    gh = shorthand("gh:owner/repo@v2.0.1")
    assert gh is not None and gh.url() == "https://raw.githubusercontent.com/owner/repo/v2.0.1/workflow/Snakefile"
    assert gh.pinned
    gl = shorthand("gl:gitlab.example.org:group/project@main:wf/Snakefile")
    assert gl is not None and (gl.host, gl.path, gl.pinned) == ("gitlab.example.org", "wf/Snakefile", False)
    assert shorthand("workflow/Snakefile") is None


def test_module_localrules_are_renamed(tmp_path: Path) -> None:
    wf = load(tmp_path, """
        module m:
            snakefile: "m.smk"
        use rule * from m as m_*
        """, **{"m.smk": 'localrules: a\n' + MOD})
    assert wf.rule("m_a").localrule and not wf.rule("m_b").localrule


def test_gitfile_reads_a_local_repository_at_a_tag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    repo = tmp_path / "repo"
    write(repo, "workflow/Snakefile", 'include: "rules/r.smk"\n')
    write(repo, "workflow/rules/r.smk", 'rule r:\n    output: "r.txt"\n    shell: "touch {output}"\n')
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    for args in (["init", "-q"], ["add", "."], ["commit", "-qm", "one"], ["tag", "v1"]):
        subprocess.run([*git, *args], check=True)
    (repo / "workflow" / "rules" / "r.smk").write_text("this is not a rule file any more\n")
    wf = load(tmp_path, f"""
        module m:
            snakefile: gitfile({str(repo)!r}, path="workflow/Snakefile", tag="v1")
        use rule * from m as m_*
        """)
    assert [r.name for r in wf.rules] == ["m_r"]  # the tagged version, not the working tree


def test_script_is_relative_to_the_module_and_sees_its_config(flow: Any) -> None:
    flow.file("m/scripts/write.py", 'open(snakemake.output[0], "w").write(snakemake.config["word"] + "\\n")\n')
    flow.file("m/Snakefile", 'rule a:\n    output: "a.txt"\n    script: "scripts/write.py"\n')
    flow.write("""
        module m:
            snakefile: "m/Snakefile"
            config: {"word": "scripted"}
        use rule a from m as m_a
        """, name="Snakefile")
    flow.ok("-c", "1")
    assert flow.read("a.txt") == "scripted\n"


def test_a_module_defining_a_rule_twice_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FlowfileError) as e:
        load(tmp_path, """
            module m:
                snakefile: "m.smk"
            use rule * from m as m_*
            """, **{"m.smk": MOD + 'rule a:\n    output: "again.txt"\n    shell: "touch {output}"\n'})
    assert e.value.message.startswith("rule 'm_a' is defined twice (first at ")
    assert e.value.location is not None and e.value.location.line == 10


def test_with_may_make_the_used_rule_the_default_target(tmp_path: Path) -> None:
    wf = load(tmp_path, """
        rule first:
            output: "first.txt"
            shell: "touch {output}"
        module m:
            snakefile: "m.smk"
        use rule b from m as m_b with:
            default_target: True
        """, **{"m.smk": MOD})
    assert wf.default_rule is not None and wf.default_rule.name == "m_b"


def test_errors_in_module_keys_and_with_blocks_keep_their_lines(tmp_path: Path) -> None:
    write(tmp_path, "m.smk", MOD)
    for text, line in [
        ("module m:\n    snakefile:\n        'm.smk'\n    config:\n        undefined_config\n", 5),
        ("module m:\n    snakefile: 'm.smk'\nuse rule a from m as x with:\n    output: 'x'\n"
         "    params:\n        p=undefined_param,\n", 6),
    ]:
        with pytest.raises(FlowfileError) as e:
            load_workflow(write(tmp_path, "Snakefile", text), workdir=str(tmp_path))
        assert e.value.message.startswith("NameError: name 'undefined_")
        assert e.value.location is not None and e.value.location.line == line


def test_a_missing_meta_wrapper_names_it_and_the_module_line(tmp_path: Path) -> None:
    from flowmake.envs import Deployment
    from flowmake.errors import FlowmakeError
    (tmp_path / "wrappers").mkdir()
    main = write(tmp_path, "Snakefile", "module q:\n    meta_wrapper: 'v1/meta/bio/none'\n"
                 "use rule * from q\n")
    with pytest.raises(FlowmakeError) as e:
        load_workflow(main, workdir=str(tmp_path),
                      deployment=Deployment(wrapper_prefix=f"file://{tmp_path}/wrappers/"))
    assert "meta-wrapper 'v1/meta/bio/none' not found" in e.value.message
    assert e.value.location is not None and e.value.location.line == 1
