"""Snakemake 9's Snakefile helpers and namespace, as a rule file sees them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from flowmake.errors import ConfigError, FlowfileError
from flowmake.flowfile import load_workflow
from flowmake.flowfile.helpers import expand
from flowmake.namedlist import Flag, NamedList, ReportSpec, flag_data
from flowmake.rules import AllDone, Instance, Workflow


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # errors show paths relative to the current directory


@pytest.fixture(scope="module")
def python_without_snakemake(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An interpreter that has everything this one has except Snakemake: a venv whose site
    holds links to this site's packages, Snakemake's left out. Its subprocesses (a step's
    ``python -m flowmake.jobrun``) use it too, so no process of the run can import Snakemake."""
    import shutil
    import sysconfig
    import venv
    root = tmp_path_factory.mktemp("nosnakemake")
    venv.create(root / "venv", with_pip=False)
    farm = root / "site"
    farm.mkdir()
    site = Path(sysconfig.get_paths()["purelib"])
    for entry in site.iterdir():
        if not entry.name.lower().startswith("snakemake") and not entry.name.endswith(".pth"):
            (farm / entry.name).symlink_to(entry)
    py = root / "venv" / "bin" / "python"
    target = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                 capture_output=True, text=True, check=True).stdout.strip())
    (target / "0farm.pth").write_text(f"{farm}\n")  # before the editable install's .pth
    for pth in site.glob("__editable__*.pth"):
        shutil.copy(pth, target / pth.name)
    probe = subprocess.run([str(py), "-c", "import flowmake.backends.local, yaml, jsonschema; import snakemake"],
                           capture_output=True, text=True)
    assert "No module named 'snakemake'" in probe.stderr, probe.stderr
    return str(py)


def write(tmp_path: Path, text: str, name: str = "Snakefile") -> str:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return str(path)


def load(tmp_path: Path, text: str, **kw: Any) -> Workflow:
    kw.setdefault("workdir", str(tmp_path))
    return load_workflow(write(tmp_path, text), **kw)


def step(wf: Workflow, rule: str, **wildcards: str) -> Instance:
    r = wf.rule(rule)
    return r.instantiate(r.bindings_from_raw(wildcards), AllDone())


# -- flags ---------------------------------------------------------------------------------------


def test_report_keeps_its_arguments_and_is_an_ordinary_output(tmp_path: Path) -> None:
    write(tmp_path, """
        rule plot:
            output: report("plots/a.svg", caption="report/a.rst", category="Plots", labels={"k": "v"})
            shell: "touch {output}"
    """, "rules/plot.smk")
    wf = load(tmp_path, 'include: "rules/plot.smk"\n')
    inst = step(wf, "plot")
    assert list(inst.output) == ["plots/a.svg"] and inst.flags["plots/a.svg"] == {Flag.REPORT}
    declared = wf.rule("plot")._output[0].texts[0]
    # The caption is relative to the file that calls report(), as in Snakemake.
    assert flag_data(declared, Flag.REPORT) == ReportSpec(
        str(tmp_path / "rules" / "report" / "a.rst"), "Plots", None, {"k": "v"}, (), None)


def test_temporary_is_temp_and_temp_with_protected_is_refused(tmp_path: Path) -> None:
    wf = load(tmp_path, """
        rule a:
            output: temporary("a.txt")
            shell: "touch {output}"
    """)
    assert step(wf, "a").flags["a.txt"] == {Flag.TEMP}
    with pytest.raises(FlowfileError) as e:
        load(tmp_path, 'x = temp(protected("b"))\n')
    assert str(e.value).startswith("Snakefile:1: Flowfile error: temp() and protected()")


def test_multiext_any_suffix_and_named_form(tmp_path: Path) -> None:
    wf = load(tmp_path, """
        rule peaks:
            output: multiext("calls/{s}", "_peaks.xls", ".bam", ".bam.bai")
            shell: "touch {output}"
        rule named:
            output: multiext("idx/{s}", bam=".bam", bai=".bam.bai")
            shell: "touch {output.bam} {output.bai}"
        rule use:
            input: rules.named.output.bai
            output: "u/{s}"
            shell: "cat {input} > {output}"
    """)
    assert list(step(wf, "peaks", s="x").output) == ["calls/x_peaks.xls", "calls/x.bam",
                                                     "calls/x.bam.bai"]
    out = step(wf, "named", s="x").output
    assert (out.bam, out.bai) == ("idx/x.bam", "idx/x.bam.bai")
    assert list(step(wf, "use", s="y").input) == ["idx/y.bam.bai"]
    for bad, message in [('multiext("a", ".b", c=".c")', "all extensions named or all unnamed"),
                         ('multiext("a", "/b")', "may not contain a path separator")]:
        with pytest.raises(FlowfileError, match=message):
            load(tmp_path, f"x = {bad}\n")


def test_unpack_dict_list_and_a_non_function(tmp_path: Path) -> None:
    wf = load(tmp_path, """
        rule d:
            input: unpack(lambda w: {"ref": "r.fa", "reads": ["a.fq", "b.fq"]})
            output: "d"
        rule l:
            input: unpack(lambda w: ["x", "y"])
            output: "l"
    """)
    inp = step(wf, "d").input
    assert inp.ref == "r.fa" and list(inp.reads) == ["a.fq", "b.fq"] and list(inp) == [
        "r.fa", "a.fq", "b.fq"]
    assert list(step(wf, "l").input) == ["x", "y"]
    with pytest.raises(FlowfileError) as e:
        load(tmp_path, """
            rule u:
                input: unpack({"a": "b"})
                output: "u"
        """)
    assert str(e.value).splitlines()[0] == (
        "Snakefile:2: Flowfile error: unpack() takes an input function, not dict")


def test_inputflags_and_outputflags_apply_to_the_rules_after_them(tmp_path: Path) -> None:
    wf = load(tmp_path, """
        rule before:
            output: "b.txt"
        outputflags:
            temp
        inputflags:
            ancient
        rule after:
            input: "b.txt"
            output: "a.txt", keep=protected("k.txt")
        outputflags:
            protected
        rule last:
            output: "l.txt"
    """)
    assert step(wf, "before").flags["b.txt"] == frozenset()
    after = step(wf, "after")
    assert after.flags["a.txt"] == {Flag.TEMP}
    assert after.flags["k.txt"] == {Flag.PROTECTED}  # its own flag beats a contradicting default
    assert after.flags["b.txt"] == {Flag.ANCIENT}
    assert step(wf, "last").flags["l.txt"] == {Flag.PROTECTED}  # each directive replaces the last


def test_localrules_union_of_declarations(tmp_path: Path) -> None:
    wf = load(tmp_path, """
        localrules: a
        localrules: b
        rule a:
            output: "a"
        rule b:
            output: "b"
        rule c:
            output: "c"
    """)
    assert [r.localrule for r in wf.rules] == [True, True, False]


# -- expand and the input-function helpers --------------------------------------------------------


def test_expand_consumes_values_as_snakemake_does() -> None:
    # An iterator is consumed by the first pattern naming its wildcard, as in Snakemake.
    assert expand(["a{x}", "b{x}"], x=iter(["1", "2"])) == ["a1", "a2"]
    assert expand(["a{x}", "b{x}"], x=["1", "2"]) == ["a1", "a2", "b1", "b2"]
    assert expand("{s}", s=(c for c in "pq")) == ["p", "q"]
    # zip over only the wildcards the pattern names.
    assert expand("{a}", zip, a=["1", "2"], b=["x"]) == ["1", "2"]
    assert expand("{a}-{b}", zip, a=["1", "2"], b=["x", "y", "z"]) == ["1-x", "2-y"]
    from collections import namedtuple
    Row = namedtuple("Row", "sample unit")
    assert expand("{r.sample}/{r.unit}", r=Row("s", "u")) == ["s/u"]
    assert expand("{r.sample}", r=[Row("s", "u"), Row("t", "v")]) == ["s", "t"]
    deferred = expand("{s}/{n}.txt", s=lambda wc: [wc["s"]], n=["1", "2"])
    assert deferred({"s": "z"}) == ["z/1.txt", "z/2.txt"]


def test_expand_refuses_a_flagged_pattern(tmp_path: Path) -> None:
    with pytest.raises(FlowfileError, match=r"flags in the pattern 'x\{a\}' given to expand"):
        load(tmp_path, 'x = expand(temp("x{a}"), a=[1])\n')


def test_lookup_branch_evaluate_collect_exists(tmp_path: Path) -> None:
    (tmp_path / "there.txt").write_text("")
    wf = load(tmp_path, """
        SAMPLES = {"a": {"reads": "a.fq", "paired": True}, "b": {"reads": "b.fq", "paired": False}}
        ALL = collect("out/{s}.txt", s=SAMPLES)
        FOUND = [exists("there.txt"), exists("missing.txt")]
        rule x:
            input:
                reads=lookup(dpath="{s}/reads", within=SAMPLES),
                mate=branch(lookup(dpath="{s}/paired", within=SAMPLES), then="{s}_mate.fq"),
                fixed=lookup("a/reads", within=SAMPLES),
                other=lookup(dpath="{s}/other", within=SAMPLES, default=[]),
            output: "out/{s}.txt"
            params:
                big=evaluate("{s} == 'a'"),
                kind=branch(lambda w: w.s, cases={"a": "A"}, otherwise="other"),
    """)
    assert wf.globals["ALL"] == ["out/a.txt", "out/b.txt"] and wf.globals["FOUND"] == [True, False]
    a, b = step(wf, "x", s="a"), step(wf, "x", s="b")
    assert (a.input.reads, a.input.mate, a.input.fixed, list(a.input.other)) == (
        "a.fq", "a_mate.fq", "a.fq", [])  # a returned path's wildcards are filled, as Snakemake
    assert list(b.input) == ["b.fq", "a.fq"]  # no mate: branch gives an empty list
    assert (a.params.big, a.params.kind, b.params.big, b.params.kind) == (True, "A", False, "other")
    with pytest.raises(FlowfileError) as e:
        load(tmp_path, 'x = lookup(dpath="nope/x", within={"a": 1})\n')
    assert str(e.value) == ("Snakefile:1: Flowfile error: LookupError: lookup: dpath 'nope/x' not "
                            "found\n  x = lookup(dpath=\"nope/x\", within={\"a\": 1})")


def test_lookup_query_with_pandas(tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"sample": ["a", "b"], "n": [1, 5]}).set_index("sample", drop=False)
    from flowmake.flowfile.lookup import lookup
    row = lookup(query="n > 2", within=df)
    assert (row.sample, row.n) == ("b", 5)
    assert lookup(query="n > 0", within=df, cols="sample") == ["a", "b"]
    assert lookup(query="n > 0", within=df, is_nrows=2) is True
    func = lookup(query="sample == '{s}'", within=df, cols=["n"])
    assert func({"s": "a"}).n == 1


def test_lookup_query_without_pandas_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pandas", None)  # as if pandas were not installed
    from flowmake.flowfile.lookup import LookupError, lookup
    with pytest.raises(LookupError, match=r"query= needs pandas \(pip install pandas\)"):
        lookup(query="a > 1", within=[1])


def test_paramspace(tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    from flowmake.flowfile.paramspace import Paramspace
    df = pd.DataFrame({"alpha": [1, 2], "beta": [0.5, 0.1], "ok": [True, False]})
    ps = Paramspace(df, filename_params=["beta", "ok"])
    assert ps.wildcard_pattern == "alpha~{alpha}/beta~{beta}_ok~{ok}"
    assert list(ps.instance_patterns) == ["alpha~1/beta~0.5_ok~True", "alpha~2/beta~0.1_ok~False"]
    inst = ps.instance({"alpha": "2", "beta": "0.1", "ok": "False"})
    assert inst == {"alpha": 2, "beta": 0.1, "ok": False}
    single = Paramspace(df, single_wildcard="params")
    assert single.wildcard_pattern == "{params}"
    assert single.instance({"params": "alpha~1/beta~0.5/ok~True"})["beta"] == 0.5


def test_paramspace_without_pandas(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(FlowfileError) as e:
        load(tmp_path, """
            from snakemake.utils import Paramspace
            ps = Paramspace(None)
        """)
    assert str(e.value).splitlines() == [
        "Snakefile:2: Flowfile error: Paramspace needs pandas, which is not installed",
        "  hint: pip install pandas"]


# -- validate -------------------------------------------------------------------------------------

SCHEMA = """
$schema: "https://json-schema.org/draft/2020-12/schema"
type: object
properties:
  threads: {type: integer, default: 2}
  trim:
    type: object
    default: {}
    properties:
      quality: {type: integer, default: 20}
      adapter: {type: string}
required: [samples]
"""


def test_validate_relative_to_the_calling_file_with_nested_defaults(tmp_path: Path) -> None:
    write(tmp_path, SCHEMA, "workflow/schemas/config.schema.yaml")
    write(tmp_path, """
        from snakemake.utils import validate
        validate(config, "schemas/config.schema.yaml")
    """, "workflow/rules/common.smk")
    # The include's schema path is relative to rules/, the main file's to workflow/.
    write(tmp_path, SCHEMA, "workflow/rules/schemas/config.schema.yaml")
    wf = load_workflow(write(tmp_path, """
        include: "rules/common.smk"
        validate(config, "schemas/config.schema.yaml")
    """, "workflow/Snakefile"), workdir=str(tmp_path),
        config_overrides={"samples": ["a"], "trim": {"adapter": "AGT"}})
    assert wf.config == {"samples": ["a"], "threads": 2, "trim": {"adapter": "AGT", "quality": 20}}


def test_validate_json_schema_and_error_names_schema_and_key(tmp_path: Path) -> None:
    write(tmp_path, json.dumps({"type": "object", "properties": {
        "trim": {"type": "object", "properties": {"quality": {"type": "integer"}}}}}), "s.json")
    with pytest.raises(ConfigError) as e:
        load(tmp_path, """
            config["trim"] = {"quality": "high"}
            validate(config, "s.json", set_default=False)
        """.replace("validate(", "__import__('snakemake.utils').utils.validate("))
    assert str(e.value) == ("Snakefile:2: config error: config does not match the schema s.json: "
                            "at 'trim/quality': 'high' is not of type 'integer'")


def test_validate_a_data_frame_row_by_row(tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    from flowmake.flowfile.validate import check
    schema = write(tmp_path, """
        type: object
        properties:
          sample: {type: string}
          unit: {type: string, default: "u1"}
        required: [sample]
    """, "s.yaml")
    df = pd.DataFrame({"sample": ["a", "b"], "unit": [None, "u2"]})
    check(df, schema)
    assert list(df["unit"]) == ["u1", "u2"]
    with pytest.raises(ConfigError) as e:
        check(pd.DataFrame({"sample": ["a", None]}), schema)
    assert e.value.message == ("row 1 of the data frame does not match the schema s.yaml: "
                               "'sample' is a required property")


# -- config, workflow, namespace ---------------------------------------------------------------


def test_missing_configfile_is_no_error_when_configfile_is_given(tmp_path: Path) -> None:
    write(tmp_path, "x: 1\n", "other.yaml")
    wf = load(tmp_path, 'configfile: "config/config.yaml"\n',
              configfiles=[str(tmp_path / "other.yaml")])
    assert wf.config == {"x": 1}
    with pytest.raises(ConfigError, match="cannot read config file"):
        load(tmp_path, 'configfile: "config/config.yaml"\n')


def test_workflow_object(tmp_path: Path) -> None:
    write(tmp_path, """
        INC = (workflow.current_basedir, workflow.source_path("../envs/x.yaml"), workflow.snakefile)
    """, "wf/rules/inc.smk")
    wf = load_workflow(write(tmp_path, """
        include: "rules/inc.smk"
        MAIN = (workflow.basedir, workflow.current_basedir, workflow.main_snakefile,
                workflow.source_path("scripts/a.py"), workflow.cores, workflow.config["k"],
                workflow.global_resources["_cores"], workflow.is_main_process)
    """, "wf/Snakefile"), workdir=str(tmp_path), config_overrides={"k": 1})
    wfdir = str(tmp_path / "wf")
    cores = os.cpu_count() or 1
    main = wf.globals["MAIN"]
    assert main[:4] == (wfdir, wfdir, wfdir + "/Snakefile", wfdir + "/scripts/a.py")
    assert main[4] >= 1 and main[5] == 1 and main[6] == main[4] and main[7] is True
    assert cores >= 1
    assert wf.globals["INC"] == (wfdir + "/rules", wfdir + "/envs/x.yaml", wfdir + "/rules/inc.smk")


def test_input_sizes(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x" * 2048)
    (tmp_path / "b").write_bytes(b"x" * 1024)
    nl = NamedList([str(tmp_path / "a"), str(tmp_path / "b")])
    assert nl.size_files == [2048, 1024] and nl.size == 3072
    assert nl.size_files_kb == [2.0, 1.0] and nl.size_kb == 3.0
    assert nl.size_mb == 3072 / 1024 ** 2 and nl.size_files_gb == [2048 / 1024 ** 3, 1 / 1024 ** 2]
    wf = load(tmp_path, """
        rule r:
            input: "a", "b"
            output: "o"
            resources: mem_mb=lambda wc, input: max(2 * input.size_mb, 1000), kb=lambda wc, input: input.size_kb
    """)
    assert step(wf, "r").resources.kb == 3.0 and step(wf, "r").resources.mem_mb == 1000


def test_names_a_snakefile_assumes(tmp_path: Path) -> None:
    wf = load(tmp_path, """
        X = (os.path.join("a", "b"), sys.version_info[0], re.sub("a", "b", "a"), Path("p").name,
             snakemake.__version__ is not None, callable(logger.info), issubclass(WorkflowError, Exception),
             callable(snakemake.utils.validate))
        rule r:
            input: "i"
            output: "o"
            params: same=input[0]
    """)
    assert wf.globals["X"] == (os.path.join("a", "b"), 3, "b", "p", True, True, True, True)
    assert step(wf, "r").params.same == "i"


STANDIN_SNAKEFILE = """
import snakemake
from snakemake import __version__
from snakemake.utils import validate, min_version, update_config
from snakemake.io import expand, glob_wildcards, temp
from snakemake.shell import shell
from snakemake.logging import logger
from snakemake.common import __version__ as v2
from snakemake.exceptions import WorkflowError
import snakemake.io
min_version("9.0")
validate(config, "schema.yaml")
logger.info(f"version {__version__} {v2} {snakemake.io.expand('{a}', a=[1])} {config}")
rule all:
    input: "p"
rule use:
    input: "o"
    output: "p"
    shell: "touch {output}"
rule make:
    output: temp("o")
    shell: "touch {output}"
"""


@pytest.mark.parametrize("without_snakemake", [True, False])
def test_snakemake_imports_with_and_without_snakemake(tmp_path: Path, without_snakemake: bool,
                                                      python_without_snakemake: str) -> None:
    """Without Snakemake the stand-ins serve every name; with it (CI), they still serve
    flowmake's, so the schema is found beside the Snakefile and temp() is flowmake's."""
    if not without_snakemake:
        pytest.importorskip("snakemake")
    write(tmp_path, "properties: {n: {default: 3}}\n", "wf/schema.yaml")
    write(tmp_path, STANDIN_SNAKEFILE, "wf/Snakefile")
    py = python_without_snakemake if without_snakemake else sys.executable
    done = subprocess.run([py, "-m", "flowmake", "-s", "wf/Snakefile", "-c", "1"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    version = "9.0.0" if without_snakemake else __import__("importlib.metadata").metadata.version("snakemake")
    assert f"version {version} {version} ['1'] {{'n': 3}}" in done.stderr
    # temp(), from the stand-in snakemake.io, was honoured: removed once its reader was done
    assert not (tmp_path / "o").exists() and (tmp_path / "p").exists()


def test_unknown_snakemake_module_without_snakemake(tmp_path: Path,
                                                   python_without_snakemake: str) -> None:
    write(tmp_path, "from snakemake.remote import GS\n", "Snakefile")
    done = subprocess.run([python_without_snakemake, "-m", "flowmake", "-n"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.splitlines()[0] == (
        "Snakefile:1: Flowfile error: ModuleNotFoundError: No module named 'snakemake.remote': "
        "Snakemake is not installed, and flowmake stands in only for snakemake, snakemake.utils, "
        "snakemake.io, snakemake.shell, snakemake.logging, snakemake.common, snakemake.exceptions")


@pytest.mark.parametrize("without_snakemake", [True, False])
def test_modules_beside_the_snakefile_import_snakemake_too(tmp_path: Path, without_snakemake: bool,
                                                           python_without_snakemake: str) -> None:
    """A helper module of the workflow imports snakemake.io itself, while the Snakefile loads
    and from a run: block; afterwards nothing named snakemake is left behind."""
    if not without_snakemake:
        pytest.importorskip("snakemake")
    write(tmp_path, """
        from snakemake.io import expand
        from snakemake.logging import logger

        def targets(names):
            return expand("out/{n}.txt", n=names)

        def note(text):
            from snakemake.utils import update_config  # imported when the run: block calls it
            d = {}
            update_config(d, {"text": text})
            return d["text"]
    """, "wf/common.py")
    write(tmp_path, """
        from common import targets
        rule all:
            input: targets(["a"])
        rule make:
            output: "out/{n}.txt"
            run:
                import common
                open(output[0], "w").write(common.note("made " + wildcards.n) + "\\n")
        onsuccess:
            import sys
            print("left:", sorted(m for m in sys.modules if m.startswith("snakemake")
                                  and not hasattr(sys.modules[m], "__file__")), file=sys.stderr)
    """, "wf/Snakefile")
    py = python_without_snakemake if without_snakemake else sys.executable
    done = subprocess.run([py, "-m", "flowmake", "-s", "wf/Snakefile", "-c", "1"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "a.txt").read_text() == "made a\n"
    assert "left: []" in done.stderr


def test_script_imports_snakemake_without_snakemake(tmp_path: Path,
                                                    python_without_snakemake: str) -> None:
    import shutil
    case = Path(__file__).resolve().parents[1] / "cases" / "script_snakemake_imports"
    shutil.copytree(case / "workflow", tmp_path / "run" / "workflow")
    done = subprocess.run([python_without_snakemake, "-m", "flowmake", "-c", "1"],
                          cwd=tmp_path / "run", capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "run" / "out" / "x.txt").read_text() == "HELLO x\n"


def test_pepfile_without_peppy_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "peppy", None)
    with pytest.raises(FlowfileError) as e:
        load(tmp_path, 'pepfile: "pep/config.yaml"\n')
    assert str(e.value).splitlines() == [
        "Snakefile:1: Flowfile error: pepfile: needs the 'peppy' package, which is not installed",
        "  hint: pip install 'flowmake[pep]'"]


def test_pepfile_and_pepschema(tmp_path: Path) -> None:
    pytest.importorskip("peppy")
    pytest.importorskip("eido")
    write(tmp_path, "sample_name,file\ns1,a.fq\ns2,b.fq\n", "pep/samples.csv")
    write(tmp_path, 'pep_version: "2.1.0"\nsample_table: samples.csv\n', "pep/config.yaml")
    write(tmp_path, """
        description: samples
        properties:
          samples:
            type: array
            items: {type: object, properties: {file: {type: string}}, required: [file]}
        required: [samples]
    """, "wf/schemas/pep.yaml")
    wf = load_workflow(write(tmp_path, """
        pepfile: "pep/config.yaml"
        pepschema: "schemas/pep.yaml"
        SAMPLES = list(pep.sample_table["sample_name"])
    """, "wf/Snakefile"), workdir=str(tmp_path))
    assert wf.globals["SAMPLES"] == ["s1", "s2"]


def test_pepfile_in_a_module_gives_the_module_its_pep(tmp_path: Path) -> None:
    pytest.importorskip("peppy")
    write(tmp_path, "sample_name\nm1\nm2\n", "pep/samples.csv")
    write(tmp_path, 'pep_version: "2.1.0"\nsample_table: samples.csv\n', "pep/config.yaml")
    write(tmp_path, """
        pepfile: config["pep"]
        SAMPLES = list(pep.sample_table["sample_name"])
        rule a:
            output: expand("res/{s}.txt", s=SAMPLES)
            shell: "touch {output}"
    """, "mod/Snakefile")
    wf = load_workflow(write(tmp_path, """
        module m:
            snakefile: "mod/Snakefile"
            config: {"pep": "pep/config.yaml"}
        use rule * from m as m_*
    """, "Snakefile"), workdir=str(tmp_path))
    assert [str(p) for p in wf.rule("m_a")._output[0].texts] == ["res/m1.txt", "res/m2.txt"]
    assert "pep" not in wf.globals  # the module's, not the main file's


def test_subpath(tmp_path: Path) -> None:
    wf = load(tmp_path, """
        rule r:
            output: "res/{s}/x.sorted.bam"
            params:
                prefix=subpath(lambda wildcards, output: output[0], strip_suffix=".bam"),
                folder=subpath(lambda wildcards, output: output[0], parent=True),
                top=subpath("a/b/c.txt", ancestor=2),
                name=subpath("a/b/c.txt", basename=True),
    """)
    p = step(wf, "r", s="q").params
    assert (p.prefix, p.folder, p.top, p.name) == ("res/q/x.sorted", "res/q", "a", "c.txt")


@pytest.mark.parametrize("rule, message", [
    ('input: x=unpack(lambda w: {"a": "b"})', "Snakefile:1: Flowfile error: a named input (x=) cannot be unpack()ed"),
    ('params: unpack(lambda w: {"a": "b"})', "Snakefile:3: Flowfile error: unpack() is only for input functions, not params"),
])
def test_unpack_misuse_is_refused_where_snakemake_refuses_it(tmp_path: Path, rule: str,
                                                             message: str) -> None:
    with pytest.raises(FlowfileError) as e:
        load(tmp_path, f"rule u:\n    output: 'u'\n    {rule}\n")
    assert str(e.value).splitlines()[0] == message


def test_unpack_function_returning_a_path_is_refused(tmp_path: Path) -> None:
    wf = load(tmp_path, """
        rule u:
            input: unpack(lambda w: "a.txt")
            output: "u"
    """)
    with pytest.raises(FlowfileError) as e:
        step(wf, "u")
    assert e.value.message == "an unpack() input function must return a list or a dict, not str"


def test_ancient_input_is_not_rerun_when_its_producer_reruns(tmp_path: Path) -> None:
    """Snakemake: a job whose updated inputs are all ancient (and exist) is not triggered."""
    write(tmp_path, """
        rule final:
            input: ancient("old.txt")
            output: "final.txt"
            shell: "cat {input} > {output}"
        rule producer:
            output: "old.txt"
            params: v=config.get("v", 1)
            shell: "echo {params.v} > {output}"
    """)

    def run(*args: str) -> None:
        done = subprocess.run([sys.executable, "-m", "flowmake", "-c", "1", *args], cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr

    run()
    run("--config", "v=2")  # the producer reruns (its params changed) and writes new bytes
    assert (tmp_path / "old.txt").read_text() == "2\n" and (tmp_path / "final.txt").read_text() == "1\n"
