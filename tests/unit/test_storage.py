"""Storage files in rule files: the `storage` directive and object, the local-path mapping both
ways, default storage, and the errors (provider, URL, settings), without a server."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from flowmake.errors import FlowfileError, UsageError
from flowmake.flowfile import load_workflow
from flowmake.rules import AllDone, Workflow
from flowmake.storage import parse_url


def load(tmp_path: Path, text: str, **kw: object) -> Workflow:
    path = tmp_path / "Flowfile"
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return load_workflow(str(path), workdir=str(tmp_path), **kw)  # type: ignore[arg-type]


def inputs(wf: Workflow, rule: str, **wildcards: str) -> list[str]:
    r = wf.rule(rule)
    return list(r.instantiate(r.bindings_from_raw(wildcards), AllDone()).input)


def test_storage_calls_are_local_paths_that_name_their_objects(tmp_path: Path) -> None:
    wf = load(tmp_path, """
        storage:
            provider="s3",
            retries=2

        storage other: provider="s3", endpoint_url="http://127.0.0.1:9"

        rule a:
            input:
                storage.s3("s3://bucket-one/raw/{s}.txt"),
                storage("s3://bucket-one/ref.txt"),
                storage.other("s3://bucket.two/x/y.txt"),
                temp(storage.s3("s3://bucket-one/t.txt")),
            output: storage.s3("s3://bucket-one/out/{s}.txt")
            shell: "cat {input} > {output}"
    """)
    assert inputs(wf, "a", s="S1") == [".flowmake/storage/s3/bucket-one/raw/S1.txt",
                                       ".flowmake/storage/s3/bucket-one/ref.txt",
                                       ".flowmake/storage/other/bucket.two/x/y.txt",
                                       ".flowmake/storage/s3/bucket-one/t.txt"]
    # The output is a pattern like any other: a target path matches it.
    assert wf.rule("a").match_output(".flowmake/storage/s3/bucket-one/out/S2.txt") is not None
    r = wf.storage.remote(".flowmake/storage/other/bucket.two/x/y.txt")
    assert (r.url, r.provider.name, dict(r.provider.settings)) == (
        "s3://bucket.two/x/y.txt", "other", {"endpoint_url": "http://127.0.0.1:9"})
    assert wf.storage.remote(".flowmake/storage/s3/bucket-one/ref.txt").provider.settings == {"retries": 2}
    assert wf.storage.remote("raw/S1.txt") is None
    assert wf.storage.remote(".flowmake/storage/nobody/b/k") is None  # no such provider: a local path


def test_flowmake_toml_settings_sit_under_the_directives(tmp_path: Path) -> None:
    wf = load(tmp_path, """
        storage: provider="s3", region="eu-west-1"
        storage tagged: provider="s3", endpoint_url="http://127.0.0.1:9"
    """)
    reg = wf.storage.configured({"s3": {"endpoint_url": "http://a", "region": "us-east-1"},
                                 "tagged": {"profile": "lab"}})
    assert dict(reg.remote(".flowmake/storage/s3/bkt/k").provider.settings) == {
        "endpoint_url": "http://a", "region": "eu-west-1"}
    assert dict(reg.remote(".flowmake/storage/tagged/bkt/k").provider.settings) == {
        "endpoint_url": "http://127.0.0.1:9", "region": "us-east-1", "profile": "lab"}


@pytest.mark.parametrize("text, line, message", [
    ('storage:\n    provider="gcs"\n', 1, "storage provider 'gcs' is not supported"),
    ('storage web: provider="http"\n', 1, "storage provider 'http' is not supported"),
    ('x = 1\nstorage: retries=3\n', 2, 'storage: needs the provider (provider="s3")'),
    ('storage:\n    provider="s3",\n    secret_key="abc"\n', 1,
     "storage setting 'secret_key': credentials are not taken from rule files or settings"),
    ('storage: provider="s3", endpoint="http://x"\n', 1, "unknown storage setting 'endpoint'"),
    ('y = storage.gcs("gs://b/k")\n', 1, "storage provider 'gcs' is not supported"),
    ('x = 1\ny = storage("ftp://host/k")\n', 2, "storage provider 'ftp' is not supported"),
    ('y = storage("bucket/k")\n', 1, "storage('bucket/k'): no provider can be inferred without a scheme"),
    ('y = storage.s3("s3://bucket")\n', 1, "storage.s3: 's3://bucket' names a bucket but no object"),
    ('y = storage.s3("s3://b/k")\n', 1, "storage.s3: 's3://b/k': 'b' is not a valid bucket name"),
    ('y = storage.mine("s3://bkt/k")\n', 1, "no storage provider named 'mine'"),
])
def test_storage_mistakes_are_flowfile_errors_at_their_line(tmp_path: Path, text: str, line: int,
                                                            message: str) -> None:
    with pytest.raises(FlowfileError) as e:
        load(tmp_path, text)
    assert e.value.location is not None and e.value.location.line == line
    assert e.value.message.startswith(message), e.value.message
    assert "abc" not in str(e.value)  # a credential given by mistake is not repeated


@pytest.mark.parametrize("url, ok", [
    ("s3://bkt/a/b.txt", ("bkt", "a/b.txt")),
    ("s3://my.bucket-1/{sample}.txt", ("my.bucket-1", "{sample}.txt")),
    ("s3://bkt/a//b", None), ("s3://bkt/./b", None), ("s3://bkt/a/", None), ("s3://BKT/a", None),
    ("s3:/bkt/a", None), ("https://bkt/a", None), ("s3://bkt/a\nb", None), ("s3://bk..t/a", None),
])
def test_s3_urls(url: str, ok: tuple[str, str] | None) -> None:
    if ok is None:
        with pytest.raises(ValueError):
            parse_url(url)
    else:
        assert parse_url(url) == ok


def test_default_storage_maps_relative_paths_and_not_local_ones(tmp_path: Path) -> None:
    wf = load(tmp_path, """
        def reads(wildcards):
            return {"r": f"reads/{wildcards.s}.fq"}

        rule a:
            input: unpack(reads), "ref.fa", here=local("local.txt"), abs="/etc/hostname",
                   other=storage.s3("s3://elsewhere/k")
            output: "out/{s}.txt"
            shell: "cat {input} > {output}"
    """, default_storage=("s3", "s3://bkt/runs/1/"))
    assert inputs(wf, "a", s="x") == [".flowmake/storage/s3/bkt/runs/1/reads/x.fq",
                                      ".flowmake/storage/s3/bkt/runs/1/ref.fa", "local.txt", "/etc/hostname",
                                      ".flowmake/storage/s3/elsewhere/k"]
    assert wf.rule("a").match_output(".flowmake/storage/s3/bkt/runs/1/out/x.txt") is not None
    assert wf.storage.remote(".flowmake/storage/s3/bkt/runs/1/ref.fa").url == "s3://bkt/runs/1/ref.fa"


@pytest.mark.parametrize("default, message", [
    (("gcs", "gs://b/p"), "--default-storage-provider gcs: flowmake supports only s3"),
    (("s3", ""), "--default-storage-provider s3 needs --default-storage-prefix"),
    (("s3", "bkt/p"), "--default-storage-prefix: 'bkt/p' is not an S3 URL"),
])
def test_default_storage_mistakes_are_usage_errors(tmp_path: Path, default: tuple[str, str], message: str) -> None:
    with pytest.raises(UsageError) as e:
        load(tmp_path, 'rule a:\n    output: "x"\n    shell: "touch {output}"\n', default_storage=default)
    assert e.value.message.startswith(message), e.value.message


def test_a_bad_url_from_an_input_function_is_reported_at_its_line(tmp_path: Path) -> None:
    wf = load(tmp_path, """
        storage: provider="s3"

        rule a:
            input:
                lambda wc: storage.s3(f"s3://Bad/{wc.x}")
            output: "{x}.txt"
            shell: "cp {input} {output}"
    """)
    with pytest.raises(FlowfileError) as e:
        inputs(wf, "a", x="q")
    assert (e.value.location.line, e.value.rule) == (5, "a")  # type: ignore[union-attr]
    assert e.value.message.startswith("storage.s3: 's3://Bad/q': 'Bad' is not a valid bucket name")
