"""Rules and instances: matching, instantiation, functions, checkpoints, commands, run blocks."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from flowmake.errors import FlowfileError, UnsafeWildcardError
from flowmake.flowfile import load_workflow
from flowmake.namedlist import Flag, NamedList
from flowmake.rules import AllDone, IncompleteCheckpoint, Instance, RuleKind, Workflow


def load(tmp_path: Path, text: str) -> Workflow:
    path = tmp_path / "Flowfile"
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return load_workflow(str(path), workdir=str(path.parent))


def inst(wf: Workflow, rule: str, target: str, view: object = None) -> Instance:
    r = wf.rule(rule)
    b = r.match_output(target)
    assert b is not None, f"{rule} does not match {target}"
    return r.instantiate(b, view or AllDone())


def jobrun(wf: Workflow, rule: str, wildcards: dict[str, str],
           config: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a run:/script: step as the engine does: ``python -m flowmake.jobrun JSON`` (jobs.py)."""
    payload = {"flowfile": wf.flowfile, "workdir": wf.workdir, "config": config or {},
               "rule": rule, "wildcards": wildcards, "attempt": 1}
    return subprocess.run([sys.executable, "-m", "flowmake.jobrun", json.dumps(payload)],
                          capture_output=True, text=True, timeout=60)


class Done:
    def __init__(self, done: bool) -> None:
        self.done = done
        self.asked: list[tuple[str, ...]] = []

    def is_done(self, paths: tuple[str, ...]) -> bool:
        self.asked.append(paths)
        return self.done


def test_namedlist() -> None:
    nl = NamedList(["a", "b", "c"], {"one": (0, 1), "rest": (1, 3), "index": (2, 3)})
    assert nl.one == "a" and nl["one"] == "a"
    assert list(nl.rest) == ["b", "c"] and str(nl.rest) == "b c"
    assert nl.index == "c"  # a declared name shadows the list method
    assert str(nl) == "a b c" and nl[0] == "a"
    assert nl.keys() == ["one", "rest", "index"]
    with pytest.raises(AttributeError):
        nl.nope


def test_rule_properties(tmp_path: Path) -> None:
    wf = load(tmp_path, """
        rule a:
            output: "{s}.txt", log="{s}.log2"
            priority: 5
            retries: 2
            cache: True
            shell: "touch {output}"
        checkpoint c:
            output: directory("d")
            run:
                pass
        rule s:
            output: "s.out"
            script: "scripts/x.py"
        rule n:
            input: "x"
    """)
    a = wf.rule("a")
    assert (a.priority, a.retries, a.cache, a.kind, a.has_wildcards) == (5, 2, True, RuleKind.SHELL, True)
    assert [p.text for p in a.output_patterns] == ["{s}.txt", "{s}.log2"]
    assert a.location.line == 1
    c = wf.rule("c")
    assert c.is_checkpoint and c.kind is RuleKind.RUN and not c.has_wildcards
    assert wf.rule("s").kind is RuleKind.SCRIPT and wf.rule("n").kind is RuleKind.NONE
    assert a.priority == 5 and wf.rule("n").priority == 0 and wf.rule("n").retries is None


def test_instantiate_plain(tmp_path: Path) -> None:
    wf = load(tmp_path, """
        rule a:
            input: "data/{s}.fq", ref="ref.fa"
            output: bam=temp("out/{s}.bam"), bai=protected("out/{s}.bai")
            log: "logs/{s}.log"
            benchmark: "bench/{s}.tsv"
            params: prefix="out/{s}", n=3
            threads: 4
            resources: mem_mb=2000, runtime=10
            message: "aligning {wildcards.s} with {threads} threads"
            shell: "bwa {input} > {output.bam} 2> {log}"
    """)
    i = inst(wf, "a", "out/x.bam")
    assert list(i.input) == ["data/x.fq", "ref.fa"] and i.input.ref == "ref.fa"
    assert i.output.bam == "out/x.bam" and list(i.output) == ["out/x.bam", "out/x.bai"]
    assert list(i.log) == ["logs/x.log"] and i.benchmark == "bench/x.tsv"
    assert i.params.prefix == "out/x" and i.params.n == 3
    assert i.threads == 4 and i.resources.mem_mb == 2000 and dict(i.resources.items()) == {
        "mem_mb": 2000, "mem_mib": 1908, "mem": "2 GB", "runtime": 10}  # mem three ways, as Snakemake 9
    assert i.flags["out/x.bam"] == {Flag.TEMP} and i.flags["out/x.bai"] == {Flag.PROTECTED}
    assert i.flags["data/x.fq"] == frozenset()
    assert i.message() == "aligning x with 4 threads"
    assert i.command() == "bwa data/x.fq ref.fa > out/x.bam 2> logs/x.log"
    assert i.action_source() == i.command()
    assert i.consulted == frozenset()


def test_input_functions(tmp_path: Path) -> None:
    wf = load(tmp_path, """
        def gen(wildcards):
            for k in range(2):
                yield f"g/{wildcards.s}.{k}"
        rule a:
            input:
                lambda wildcards: f"in/{wildcards.s}",
                paths=lambda w: [Path("p1"), "p2"],
                gen=gen,
                one=ancient(lambda w: "old"),
            output: "{s}.out"
            shell: "x"
        rule b:
            input: unpack(lambda w: {"r1": "a_1", "r2": ["a_2", "a_3"]})
            output: "{s}.b"
            shell: "cat {input.r1} {input.r2}"
        rule bad:
            input: lambda w: {"r1": "x"}
            output: "{s}.bad"
            shell: "x"
    """)
    i = inst(wf, "a", "q.out")
    assert list(i.input) == ["in/q", "p1", "p2", "g/q.0", "g/q.1", "old"]
    assert list(i.input.paths) == ["p1", "p2"] and i.input.one == "old"
    assert i.flags["old"] == {Flag.ANCIENT}
    j = inst(wf, "b", "q.b")
    assert j.input.r1 == "a_1" and list(j.input.r2) == ["a_2", "a_3"]
    assert j.command() == "cat a_1 a_2 a_3"
    with pytest.raises(FlowfileError) as e:
        inst(wf, "bad", "q.bad")
    assert e.value.message == "input function returned a dict; wrap the function with unpack()"


def test_typed_wildcards_reach_functions(tmp_path: Path) -> None:
    wf = load(tmp_path, """
        rule a:
            input: lambda wildcards: f"lanes/{wildcards.lane}.{wildcards.lane + 1}.fq"
            output: "out/{lane:int}/{day:date}.txt"
            params: wd=lambda wildcards: wildcards.day.isoweekday()
            shell: "echo {wildcards.lane} {wildcards.day} > {output}"
    """)
    i = inst(wf, "a", "out/007/2024-01-01.txt")
    assert list(i.input) == ["lanes/007.8.fq"]
    assert i.params.wd == 1 and i.wildcards.lane == 7 and i.wildcards["lane"] == 7
    assert i.command() == "echo 007 2024-01-01 > out/007/2024-01-01.txt"
    assert wf.rule("a").match_output("out/7/2024-02-30.txt") is None


def test_params_threads_resources_functions(tmp_path: Path) -> None:
    wf = load(tmp_path, """
        rule a:
            input: "{s}.in"
            output: "{s}.out"
            threads: lambda wildcards: 2 if wildcards.s == "big" else 1
            resources:
                mem_mb=lambda wildcards, input, threads, attempt: 1000 * threads * attempt
            params:
                a=lambda wildcards, input, output, threads, resources: f"{input[0]}:{output}:{threads}:{resources.mem_mb}",
                b=lambda w: w.s.upper(),
            shell: "x"
    """)
    i = inst(wf, "a", "big.out")
    assert i.threads == 2 and i.resources.mem_mb == 2000
    assert i.params.a == "big.in:big.out:2:2000" and i.params.b == "BIG"
    r = wf.rule("a")
    assert r.instantiate(r.match_output("big.out"), AllDone(), attempt=2).resources.mem_mb == 4000


def test_user_function_errors(tmp_path: Path) -> None:
    wf = load(tmp_path, """
        rule a:
            input: lambda w: 1 / 0
            output: "{s}.a"
            shell: "x"
        rule b:
            output: "{s}.b"
            params: p=lambda wildcards, bogus: 1
            shell: "x"
        rule c:
            output: "{s}.c"
            threads: lambda w: "many"
            shell: "x"
    """)
    with pytest.raises(FlowfileError) as e:
        inst(wf, "a", "x.a")
    assert str(e.value) == (f"{tmp_path / 'Flowfile'}:1: Flowfile error: input function raised "
                            "ZeroDivisionError: division by zero\n  rule: a")
    with pytest.raises(FlowfileError) as e:
        inst(wf, "b", "x.b")
    assert e.value.message == "params 'p' function takes unknown argument(s): bogus"
    with pytest.raises(FlowfileError) as e:
        inst(wf, "c", "x.c")
    assert e.value.message == "threads must be an integer, got 'many'"


def test_command_quoting(tmp_path: Path) -> None:
    wf = load(tmp_path, """
        shell.prefix("set -x; ")
        shell.suffix(" # end")
        rule a:
            input: "in/{s}.txt"
            output: "out/{s}.txt"
            params: p={"k": "v w"}, extra="", pipe="| sort", opts=["-a", "b c"], tag=lambda wc: "id-" + wc.s
            shell: "cmd {input:q} {params.p[k]} {params.extra} {params.pipe} {params.opts} {{lit}} {params.tag} {output}"
    """)
    # Paths and wildcard values are quoted when unsafe; the author's own params go in verbatim, as
    # in Snakemake, unless a wildcard value hides inside one.
    i = inst(wf, "a", "out/a b.txt")
    assert i.command() == ("set -x; cmd 'in/a b.txt' v w  | sort -a b c {lit} 'id-a b' "
                           "'out/a b.txt' # end")
    odd = inst(wf, "a", "out/x *#~y.txt")
    assert odd.command() == ("set -x; cmd 'in/x *#~y.txt' v w  | sort -a b c {lit} "
                             "'id-x *#~y' 'out/x *#~y.txt' # end")
    # Shell syntax never gets this far: the value is refused when it is bound (see patterns).
    with pytest.raises(UnsafeWildcardError):
        wf.rule("a").match_output("out/x;touch pwned.txt")
    with pytest.raises(UnsafeWildcardError):
        wf.rule("a").instantiate({"s": "x;touch pwned"}, AllDone())


def test_command_unknown_name(tmp_path: Path) -> None:
    wf = load(tmp_path, """
        config["x"] = "cfg"
        REF = "ref.fa"
        rule a:
            output: "o"
            shell: "echo {config[x]} {REF} {nope}"
    """)
    # The rule file's globals (config included) are there, as in Snakemake; unknown names are errors.
    with pytest.raises(FlowfileError) as e:
        inst(wf, "a", "o").command()
    assert e.value.message == "cannot format shell command: KeyError: 'nope'"
    wf.rules[0].shell = "echo {config[x]} {REF}"
    assert inst(wf, "a", "o").command() == "echo cfg ref.fa"


def test_rules_reference_and_checkpoints(tmp_path: Path) -> None:
    wf = load(tmp_path, """
        checkpoint split:
            input: "{s}.in"
            output: directory("parts/{s}")
            shell: "mkdir {output}"
        def parts(wildcards):
            out = checkpoints.split.get(s=wildcards.s).output[0]
            return [out + "/1.txt", out + "/2.txt"]
        rule merge:
            input: parts
            output: "{s}.merged"
            shell: "cat {input} > {output}"
        rule copy:
            input: rules.split.input[0]
            output: "{s}.copy"
            shell: "x"
    """)
    with pytest.raises(IncompleteCheckpoint) as e:
        inst(wf, "merge", "a.merged", Done(False))
    assert (e.value.rule, e.value.outputs) == ("split", ("parts/a",))
    assert not isinstance(e.value, FlowfileError)
    view = Done(True)
    i = inst(wf, "merge", "a.merged", view)
    assert list(i.input) == ["parts/a/1.txt", "parts/a/2.txt"]
    assert i.consulted == frozenset({"parts/a"}) and view.asked == [("parts/a",)]
    assert list(inst(wf, "copy", "z.copy").input) == ["z.in"]
    assert inst(wf, "split", "parts/q").flags["parts/q"] == {Flag.DIRECTORY}


def test_run_block_executes_with_shell(tmp_path: Path) -> None:
    wf = load(tmp_path, """
        X = "glob"
        rule a:
            input: "{s}.in"
            output: "{s}.out"
            params: n=2
            run:
                text = shell("cat {input}", read=True)
                lines = list(shell("printf 'a\\\\nb\\\\n'", iterable=True))
                local = "loc"
                with open(output[0], "w") as f:
                    f.write(f"{text.strip()} {lines} {wildcards.s} {params.n} {threads} {X} {rule}")
                shell("echo {local} {config[k]} >> {output}")
    """)
    (tmp_path / "q.in").write_text("hello\n")
    i = inst(wf, "a", "q.out")
    assert i.action_source().startswith('text = shell("cat {input}", read=True)\n')
    res = jobrun(wf, "a", {"s": "q"}, config={"k": "cfg"})
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "q.out").read_text() == "hello ['a', 'b'] q 2 1 glob aloc cfg\n"


def test_run_block_shell_failure_raises(tmp_path: Path) -> None:
    wf = load(tmp_path, """
        rule a:
            output: "o"
            run:
                shell("false")
    """)
    res = jobrun(wf, "a", {})
    assert res.returncode != 0 and "exit status 1" in res.stderr


def test_script_rule(tmp_path: Path) -> None:
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "w.py").write_text(
        "open(snakemake.output[0], 'w').write("
        "f'{snakemake.input.a} {snakemake.params.p} {snakemake.wildcards.n + 1} {snakemake.rule}')\n")
    wf = load(tmp_path, """
        rule a:
            input: a="{n}.in"
            output: "{n:int}.out"
            params: p="x"
            script: "scripts/w.py"
    """)
    i = inst(wf, "a", "4.out")
    assert i.action_source().startswith("script scripts/w.py\nopen(snakemake.output[0]")
    # The raw wildcard "4" becomes the int 4 again in the job's process (n + 1 == 5 below).
    res = jobrun(wf, "a", {"n": "4"})
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "4.out").read_text() == "4.in x 5 a"


def test_instantiate_with_raw_dict(tmp_path: Path) -> None:
    wf = load(tmp_path, """
        rule a:
            output: "{n:int}.out"
            shell: "x"
    """)
    i = wf.rule("a").instantiate({"n": "07"}, AllDone())
    assert i.wildcards.n == 7 and list(i.output) == ["07.out"]


def test_rule_timed_by_bench_micro_instantiates(tmp_path: Path) -> None:
    # The rule bench/micro.py times (its per-call figures replace a wall-clock bound here);
    # instantiating it again gives an equal, separate instance.
    wf = load(tmp_path, """
        rule a:
            input: "data/{sample}.fq", ref="ref.fa"
            output: "out/{sample}.bam"
            log: "logs/{sample}.log"
            params: x=1
            threads: 2
            shell: "bwa {input} > {output}"
    """)
    r = wf.rule("a")
    b = r.match_output("out/s123.bam")
    assert b == {"sample": "s123"}
    view = AllDone()
    i, j = r.instantiate(b, view), r.instantiate(b, view)
    assert list(i.input) == ["data/s123.fq", "ref.fa"] and i.input.ref == "ref.fa"
    assert list(i.output) == ["out/s123.bam"] and list(i.log) == ["logs/s123.log"]
    assert i.params.x == 1 and i.threads == 2
    assert i.command() == "bwa data/s123.fq ref.fa > out/s123.bam"
    assert i is not j and i.command() == j.command() and list(i.input) == list(j.input)


def test_fields_inside_user_quotes_are_escaped_not_requoted(tmp_path: Path) -> None:
    wf = load(tmp_path, r"""
        rule a:
            output: "{s}.bam"
            params: rg=r"@RG\tID:{s}", q="it's", d='say "$HOME"'
            shell: "bwa -R '{params.rg}' --a '{params.q}' --b \"{params.d}\" > {output}"
    """)
    i = inst(wf, "a", "x.bam")
    assert i.command() == (
        "bwa -R '@RG\\tID:x' --a 'it'\"'\"'s' --b \"say \\\"\\$HOME\\\"\" > x.bam")
    import subprocess
    out = subprocess.run(["bash", "-c", "printf '%s|' " + i.command().split(" ", 1)[1].split(" >")[0]],
                         capture_output=True, text=True).stdout
    assert out == '-R|@RG\\tID:x|--a|it\'s|--b|say "$HOME"|'


def test_workflow_object(tmp_path: Path) -> None:
    wf = load(tmp_path, """
        BASE = workflow.basedir
        rule a:
            output: "o"
            params: b=BASE
            shell: "x"
    """)
    assert wf.rule("a")._params == [("b", str(tmp_path))]


def test_rule_docstring_and_raw_fragment(tmp_path: Path) -> None:
    wf = load(tmp_path, '''
        rule a:
            """Align reads."""
            output: "{s}.bam"
            params: extra="-m 4G", evil="a;b"
            shell: "sort {params.extra:raw} {params.evil} > {output}"
    ''')
    assert inst(wf, "a", "x.bam").command() == "sort -m 4G a;b > x.bam"


def test_params_string_with_unknown_wildcard(tmp_path: Path) -> None:
    with pytest.raises(FlowfileError) as e:
        load(tmp_path, """
            rule a:
                output: "{s}.out"
                params: p="{t}.x", awk="{print $1}"
                shell: "x"
        """)
    assert e.value.message == ("wildcards in params 'p' ('{t}.x') cannot be determined from the "
                               "output files: t")


def test_checkpoint_get_outside_input_function(tmp_path: Path) -> None:
    with pytest.raises(FlowfileError) as e:
        load(tmp_path, """
            checkpoint c:
                output: "c"
                shell: "touch c"
            x = checkpoints.c.get()
        """)
    assert e.value.message == "checkpoints.c.get() can only be called from an input function"
    assert e.value.location.line == 1  # the checkpoint rule's own line
    wf = load(tmp_path, 'rule c:\n    output: "c"\n    shell: "x"\ndef f(w):\n'
                        '    return checkpoints.c.get().output\nrule d:\n    input: f\n    output: "d"\n')
    with pytest.raises(FlowfileError) as e:
        inst(wf, "d", "d")
    assert e.value.message == "no checkpoint named 'c'"


def test_instance_pickles_namedlists(tmp_path: Path) -> None:
    import pickle
    wf = load(tmp_path, """
        rule a:
            input: r="{s}.in"
            output: "{s}.out"
            shell: "x"
    """)
    i = inst(wf, "a", "q.out")
    nl = pickle.loads(pickle.dumps(i.input))
    assert nl.r == "q.in" and str(nl) == "q.in"
    w = pickle.loads(pickle.dumps(i.wildcards))
    assert w.s == "q" and type(w).__name__ == "Wildcards"


def test_instantiate_with_bad_raw_values(tmp_path: Path) -> None:
    from flowmake.errors import WildcardError
    wf = load(tmp_path, """
        rule a:
            output: "{n:int}.out"
            shell: "x"
    """)
    with pytest.raises(WildcardError) as e:
        wf.rule("a").instantiate({"n": "seven"}, AllDone())
    assert e.value.rule == "a" and e.value.location.line == 1
    with pytest.raises(WildcardError) as e:
        wf.rule("a").instantiate({}, AllDone())
    assert e.value.message == "wildcard 'n' of pattern '{n:int}.out' has no value"


def test_directives_a_rule_does_not_use_are_shared_and_read_only(tmp_path: Path) -> None:
    import pickle
    wf = load(tmp_path, """
        rule a:
            input: "{s}.in"
            output: "{s}.out"
            shell: "x"
    """)
    one, two = inst(wf, "a", "p.out"), inst(wf, "a", "q.out")
    assert one.params is two.params and list(one.params) == [] and str(one.log) == ""
    with pytest.raises(TypeError, match="shared"):
        one.params.append("x")
    assert list(two.resources) == [] and list(two.params) == []
    copy = pickle.loads(pickle.dumps(one.params))  # a copy is an ordinary, writable list
    copy.append("x")
    assert copy == ["x"]


def test_candidate_rules_are_picked_by_top_folder_and_extension(tmp_path: Path) -> None:
    from flowmake.graph import Graph

    wf = load(tmp_path, """
        rule gz:
            input: "{name}.tsv"
            output: "out/{name}.tsv.gz"
            shell: "gzip -c {input} > {output}"
        rule tsv:
            output: "{name}.tsv"
            shell: "echo > {output}"
        rule done:
            output: "out/{d}/done"
            shell: "touch {output}"
        rule anything:
            output: "any/{x}"
            shell: "touch {output}"
    """)
    g = Graph(wf, lambda p: False)
    found = g.add_targets(["out/a.b.tsv.gz", "out/x.y/done", "any/q.gz", "any/noext"])
    assert [s.rule.name for s in found] == ["gz", "done", "anything", "anything"]  # type: ignore[union-attr]
    assert [d.rule.name for d in found[0].deps] == ["tsv"]  # type: ignore[union-attr]
    assert found[0].deps[0].outputs == ("a.b.tsv",)  # type: ignore[union-attr]


RULE_FOR_MEMO = """
    X = "1"
    rule a:
        input: "in/{s}.txt", ref="ref.fa"
        output: temp("out/{s}.txt"), log="{s}.log2"
        log: "logs/{s}.log"
        benchmark: "bench/{s}.tsv"
        params: p="x", q=[1, 2.5, None]
        threads: 2
        resources: mem_mb=100
        message: "making {output}"
        priority: 5
        retries: 1
        container: "docker://debian:12"
        wildcard_constraints: s="[a-z]+"
        shell: "tool {input} {params.p} {X} > {output}"
"""


def _plain(value: object) -> bool:
    if value is None or type(value) in (str, int, float, bool):
        return True
    if type(value) in (list, tuple):
        return all(_plain(v) for v in value)  # type: ignore[union-attr]
    if type(value) is dict:
        return all(_plain(k) and _plain(v) for k, v in value.items())  # type: ignore[union-attr]
    return False


def test_as_data_is_what_the_rule_was_declared_with(tmp_path: Path) -> None:
    """The graph memo's fingerprint of a rule: plain data, the same for the same text, different
    for any directive's edit (a new attribute that is neither declared nor derived fails here)."""
    from flowmake.keys import canonical

    first = wf_data = load(tmp_path, RULE_FOR_MEMO).rule("a").as_data()
    assert wf_data is not None and _plain(wf_data), wf_data
    assert canonical(load(tmp_path, RULE_FOR_MEMO).rule("a").as_data()) == canonical(first)
    edits = [('"tool ', '"other '), ('p="x"', 'p="y"'), ("threads: 2", "threads: 3"), ("mem_mb=100", "mem_mb=200"),
             ('ref="ref.fa"', 'ref="ref2.fa"'), ('log="{s}.log2"', 'log="{s}.log3"'), ("logs/{s}", "logs2/{s}"),
             ("bench/", "bench2/"), ("making", "doing"), ("debian:12", "debian:13"), ("[a-z]+", "[a-c]+"),
             ('temp("out/{s}.txt")', '"out/{s}.txt"'), ('X = "1"', 'X = "2"'), ("retries: 1", "retries: 2")]
    for old, new in edits:
        assert old in RULE_FOR_MEMO, old
        edited = load(tmp_path, RULE_FOR_MEMO.replace(old, new)).rule("a").as_data()
        assert canonical(edited) != canonical(first), f"editing {old!r} must change the rule's data"


def test_as_data_refuses_functions_and_checkpoints(tmp_path: Path) -> None:
    wf = load(tmp_path, """
        rule f:
            input: lambda wc: "x"
            output: "f"
            shell: "true"
        rule p:
            output: "p"
            params: v=lambda wc: 1
            shell: "true"
        checkpoint c:
            output: directory("d")
            shell: "mkdir {output}"
    """)
    assert [wf.rule(n).as_data() for n in ("f", "p", "c")] == [None, None, None]
