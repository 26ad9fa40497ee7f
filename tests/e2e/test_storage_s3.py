"""S3 objects as rule inputs and outputs, against a real S3 server (moto, on 127.0.0.1).

What a user relies on: a build downloads each remote input once and uploads each remote output
after its step succeeded; a no-op asks the server one HEAD per object and downloads nothing; an
object changed on the server reruns exactly the steps downstream of it; a failed step uploads
nothing; ``--default-storage-provider`` puts plain relative paths under the prefix. Credentials
reach flowmake through the standard chain's environment variables only, and never its output.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from tests.conftest import Flow
from tests.services.s3 import SECRET_KEY, S3Server, s3_server  # noqa: F401  # s3_server: the fixture

pytestmark = pytest.mark.s3


@pytest.fixture
def s3(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:  # noqa: F811
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)  # what Flow's subprocesses inherit: the standard chain
    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(k, raising=False)
    return s3_server


def put(s3: S3Server, bucket: str, key: str, body: str) -> None:
    s3.client().put_object(Bucket=bucket, Key=key, Body=body.encode())


def get(s3: S3Server, bucket: str, key: str) -> str:
    return s3.client().get_object(Bucket=bucket, Key=key)["Body"].read().decode()  # type: ignore[no-any-return]


def ran(err: str) -> list[str]:
    """Rule names of the steps a run started, in order."""
    return [line.split("] ", 1)[1].split(":", 1)[0] for line in err.splitlines() if line.startswith("[")]


def since(s3: S3Server, mark: int, method: str, bucket: str) -> list[str]:
    return [r.key for r in s3.requests[mark:] if r.method == method and r.bucket == bucket]


def two_chains(flow: Flow, s3: S3Server, bucket: str) -> None:
    """s3 a.txt -> upper -> shout -> (all); s3 b.txt -> count -> (all); a tagged provider for one."""
    flow.file("flowmake.toml", f'[storage.s3]\nendpoint_url = "{s3.endpoint}"\n')
    flow.write(f"""
        storage:
            provider="s3",
            retries=3

        storage mine:
            provider="s3",
            endpoint_url=config["endpoint"]

        rule all:
            input: storage.s3("s3://{bucket}/out/shout.txt"), storage("s3://{bucket}/out/count.txt")

        rule upper:
            input: storage.s3("s3://{bucket}/in/a.txt")
            output: storage.s3("s3://{bucket}/out/upper.txt")
            shell: "tr a-z A-Z < {{input}} > {{output}}"

        rule shout:
            input: rules.upper.output[0]
            output: storage.s3("s3://{bucket}/out/shout.txt")
            shell: "sed 's/$/!/' {{input}} > {{output}}"

        rule count:
            input: storage.mine("s3://{bucket}/in/b.txt")
            output: storage("s3://{bucket}/out/count.txt")
            shell: "wc -l < {{input}} | tr -d ' ' > {{output}}"
    """)


def test_build_noop_and_a_changed_object_rerun_exactly_its_chain(flow: Flow, s3: S3Server) -> None:
    bucket = s3.bucket()
    put(s3, bucket, "in/a.txt", "hello\n")
    put(s3, bucket, "in/b.txt", "1\n2\n3\n")
    two_chains(flow, s3, bucket)
    args = ("-c", "1", "--config", f"endpoint={s3.endpoint}")

    mark = len(s3.requests)
    err = flow.ok(*args)
    assert sorted(ran(err)) == ["count", "shout", "upper"]
    # Each input object downloaded once; the job's copy is where the rule said.
    assert sorted(since(s3, mark, "GET", bucket)) == ["in/a.txt", "in/b.txt"]
    assert sorted(since(s3, mark, "PUT", bucket)) == ["out/count.txt", "out/shout.txt", "out/upper.txt"]
    assert get(s3, bucket, "out/shout.txt") == "HELLO!\n"
    assert get(s3, bucket, "out/count.txt") == "3\n"
    assert flow.read(f".flowmake/storage/s3/{bucket}/in/a.txt") == "hello\n"
    assert flow.read(f".flowmake/storage/mine/{bucket}/in/b.txt") == "1\n2\n3\n"

    mark = len(s3.requests)
    err = flow.ok(*args)
    assert ran(err) == []
    assert "0 steps ran" in err or "Nothing to do" in err
    assert since(s3, mark, "GET", bucket) == []  # nothing downloaded again
    heads = since(s3, mark, "HEAD", bucket)
    assert sorted(heads) == sorted(set(heads))  # at most one HEAD per object
    assert len(heads) == 5
    assert [r for r in s3.requests[mark:] if r.method not in ("HEAD",)] == []

    put(s3, bucket, "in/a.txt", "world\n")
    mark = len(s3.requests)
    err = flow.ok(*args)
    assert ran(err) == ["upper", "shout"]  # not count: in/b.txt did not change
    assert since(s3, mark, "GET", bucket) == ["in/a.txt"]
    assert sorted(since(s3, mark, "PUT", bucket)) == ["out/shout.txt", "out/upper.txt"]
    assert get(s3, bucket, "out/shout.txt") == "WORLD!\n"
    assert SECRET_KEY not in err


def test_an_object_rewritten_with_the_same_content_is_read_once_and_reruns_nothing(
        flow: Flow, s3: S3Server) -> None:
    bucket = s3.bucket()
    put(s3, bucket, "in/a.txt", "hello\n")
    put(s3, bucket, "in/b.txt", "x\n")
    two_chains(flow, s3, bucket)
    args = ("-c", "1", "--config", f"endpoint={s3.endpoint}")
    flow.ok(*args)
    time.sleep(1.1)  # Last-Modified has whole seconds: make sure the rewrite gets a new one
    put(s3, bucket, "in/a.txt", "hello\n")  # a new Last-Modified, the same bytes
    mark = len(s3.requests)
    err = flow.ok(*args)
    assert ran(err) == []
    assert since(s3, mark, "GET", bucket) == ["in/a.txt"]  # hashed once to know
    mark = len(s3.requests)
    flow.ok(*args)
    assert since(s3, mark, "GET", bucket) == []  # and remembered


def test_a_dry_run_downloads_nothing(flow: Flow, s3: S3Server) -> None:
    bucket = s3.bucket()
    put(s3, bucket, "in/a.txt", "hello\n")
    put(s3, bucket, "in/b.txt", "x\n")
    two_chains(flow, s3, bucket)
    mark = len(s3.requests)
    assert flow.planned("--config", f"endpoint={s3.endpoint}") == sorted(
        [f".flowmake/storage/s3/{bucket}/out/{n}.txt" for n in ("count", "shout", "upper")] + ["all"])
    assert since(s3, mark, "GET", bucket) == []
    assert not flow.exists(f".flowmake/storage/s3/{bucket}/in/a.txt")


def test_a_failed_step_uploads_nothing(flow: Flow, s3: S3Server) -> None:
    bucket = s3.bucket()
    put(s3, bucket, "in/a.txt", "hello\n")
    flow.write(f"""
        storage:
            provider="s3",
            endpoint_url="{s3.endpoint}"

        rule fails:
            input: storage.s3("s3://{bucket}/in/a.txt")
            output: storage.s3("s3://{bucket}/out/x.txt"), storage.s3("s3://{bucket}/out/y.txt")
            shell: "cp {{input}} {{output[0]}}; cp {{input}} {{output[1]}}; exit 3"
    """)
    mark = len(s3.requests)
    rc, _, err = flow.run("-c", "1")
    assert rc == 1, err
    assert "Traceback" not in err
    assert since(s3, mark, "PUT", bucket) == []
    assert s3.client().list_objects_v2(Bucket=bucket, Prefix="out/").get("KeyCount") == 0
    # An output missing after the job: nothing of the step is uploaded either.
    flow.write(f"""
        storage:
            provider="s3",
            endpoint_url="{s3.endpoint}"

        rule half:
            input: storage.s3("s3://{bucket}/in/a.txt")
            output: storage.s3("s3://{bucket}/out/x.txt"), storage.s3("s3://{bucket}/out/y.txt")
            shell: "cp {{input}} {{output[0]}}"
    """)
    mark = len(s3.requests)
    rc, _, err = flow.run("-c", "1")
    assert rc == 1 and "declared outputs missing" in err, err
    assert since(s3, mark, "PUT", bucket) == []


def test_default_storage_provider_puts_relative_paths_under_the_prefix(flow: Flow, s3: S3Server) -> None:
    bucket = s3.bucket()
    put(s3, bucket, "runs/one/data/in.txt", "abc\n")
    flow.file("flowmake.toml", f'[storage.s3]\nendpoint_url = "{s3.endpoint}"\n')
    flow.file("local.txt", "local\n")
    flow.write("""
        rule all:
            input: "results/both.txt"

        rule copy:
            input: "data/in.txt"
            output: "results/copy.txt"
            shell: "cp {input} {output}"

        rule both:
            input: copy="results/copy.txt", here=local("local.txt")
            output: "results/both.txt"
            run:
                with open(output[0], "w") as out:
                    for p in (input.copy, input.here):
                        out.write(open(p).read())
    """)
    args = ("-c", "1", "--default-storage-provider", "s3", "--default-storage-prefix", f"s3://{bucket}/runs/one")
    err = flow.ok(*args)
    assert sorted(ran(err)) == ["both", "copy"]
    assert get(s3, bucket, "runs/one/results/both.txt") == "abc\nlocal\n"
    assert get(s3, bucket, "runs/one/results/copy.txt") == "abc\n"
    assert not flow.exists("results") and not flow.exists("data")  # nothing beside the rule file
    mark = len(s3.requests)
    err = flow.ok(*args)
    assert ran(err) == []
    assert since(s3, mark, "GET", bucket) == []
    assert ran(flow.ok("results/copy.txt", *args, "-f")) == ["copy"]  # a target names the object
    flow.file("local.txt", "changed\n")  # a local() input is a local file
    assert ran(flow.ok(*args)) == ["both"]
    assert get(s3, bucket, "runs/one/results/both.txt") == "abc\nchanged\n"


def test_other_providers_and_bad_urls_are_flowfile_errors_with_the_line(flow: Flow, s3: S3Server) -> None:
    flow.write("""
        rule a:
            input: storage("gs://bucket/x.txt")
            output: "a.txt"
            shell: "cp {input} {output}"
    """)
    rc, _, err = flow.run("-n")
    assert rc == 2
    assert err.startswith("Flowfile:2: Flowfile error: storage provider 'gcs' is not supported"), err
    flow.write("""
        storage:
            provider="s3"

        rule a:
            input: storage.s3("s3://Bad_Bucket/x.txt")
            output: "a.txt"
            shell: "cp {input} {output}"
    """)
    rc, _, err = flow.run("-n")
    assert rc == 2
    assert err.startswith("Flowfile:5: Flowfile error: storage.s3: 's3://Bad_Bucket/x.txt': 'Bad_Bucket' "
                          "is not a valid bucket name"), err


def test_missing_credentials_are_a_storage_error_without_a_traceback(
        flow: Flow, s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    bucket = s3.bucket()
    flow.write(f"""
        storage:
            provider="s3",
            endpoint_url="{s3.endpoint}"

        rule a:
            input: storage.s3("s3://{bucket}/in.txt")
            output: "a.txt"
            shell: "cp {{input}} {{output}}"
    """)
    rc, _, err = flow.run("-c", "1")
    assert rc == 2, err
    assert f"storage error: cannot read s3://{bucket}/in.txt: Unable to locate credentials" in err
    assert "hint: credentials come from the standard AWS chain" in err
    assert "Traceback" not in err


def test_a_missing_object_is_named_by_its_url(flow: Flow, s3: S3Server) -> None:
    bucket = s3.bucket()
    flow.write(f"""
        storage:
            provider="s3",
            endpoint_url="{s3.endpoint}"

        rule a:
            input: storage.s3("s3://{bucket}/nothing/here.txt")
            output: "a.txt"
            shell: "cp {{input}} {{output}}"
    """)
    rc, _, err = flow.run("-c", "1")
    assert rc == 2, err
    assert f"missing input: '.flowmake/storage/s3/{bucket}/nothing/here.txt' does not exist" in err
    assert f"  .flowmake/storage/s3/{bucket}/nothing/here.txt is s3://{bucket}/nothing/here.txt\n" in err


def test_an_untraced_object_is_adopted_only_when_it_is_newer_than_its_inputs(flow: Flow, s3: S3Server) -> None:
    bucket = s3.bucket()
    flow.write(f"""
        storage:
            provider="s3",
            endpoint_url="{s3.endpoint}"

        rule a:
            input: "in.txt"
            output: storage.s3("s3://{bucket}/out.txt")
            shell: "cp {{input}} {{output}}"
    """)
    put(s3, bucket, "out.txt", "made elsewhere, before its input\n")
    time.sleep(1.1)  # S3 keeps Last-Modified in whole seconds
    flow.file("in.txt", "new\n")
    assert ran(flow.ok("-c", "1")) == ["a"]  # not adopted because its local copy was just downloaded
    assert get(s3, bucket, "out.txt") == "new\n"
    time.sleep(1.1)
    flow.file("in.txt", "newer\n")
    time.sleep(1.1)
    put(s3, bucket, "out.txt", "made elsewhere, after its input\n")
    shutil.rmtree(flow.root / ".flowmake")  # no trace any more
    mark = len(s3.requests)
    assert ran(flow.ok("-c", "1")) == []  # adopted, as a local output newer than its inputs is
    assert since(s3, mark, "PUT", bucket) == []


def test_an_object_replaced_after_planning_is_not_downloaded_as_the_planned_version(
        tmp_path: Path, s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    from flowmake.digest import Digester, StatCache
    from flowmake.storage import Provider, Remote
    from flowmake.storage_s3 import S3Objects

    monkeypatch.chdir(tmp_path)
    bucket = s3.bucket()
    put(s3, bucket, "k.txt", "planned\n")
    objects = S3Objects(str(tmp_path))
    r = Remote(Provider("s3", settings={"endpoint_url": s3.endpoint}), bucket, "k.txt",
               f".flowmake/storage/s3/{bucket}/k.txt")
    assert objects.head(r) is not None  # what planning saw
    put(s3, bucket, "k.txt", "replaced\n")
    why = objects.fetch([r], Digester(StatCache()))
    assert why == f"s3://{bucket}/k.txt changed on the server while this run used it"
    assert not (tmp_path / r.local).exists()  # nothing half-written left either
    objects.close(save=False)


def test_an_input_object_deleted_before_its_step_starts_fails_that_step(flow: Flow, s3: S3Server) -> None:
    bucket = s3.bucket()
    put(s3, bucket, "in.txt", "x\n")
    flow.file("rm.py", f"import boto3\nboto3.client('s3', endpoint_url='{s3.endpoint}')"
                       f".delete_object(Bucket='{bucket}', Key='in.txt')\n")
    flow.write(f"""
        import sys
        storage:
            provider="s3",
            endpoint_url="{s3.endpoint}"

        rule all:
            input: "b.txt"

        rule first:  # the object is there when the run plans; this deletes it
            output: "a.txt"
            shell: "{{sys.executable}} rm.py && touch {{output}}"

        rule second:
            input: "a.txt", storage.s3("s3://{bucket}/in.txt")
            output: "b.txt"
            shell: "cat {{input}} > {{output}}"
    """)
    rc, _, err = flow.run("-c", "1")
    assert rc == 1, err
    assert f"FAILED second:b.txt: cannot fetch its inputs (cannot download s3://{bucket}/in.txt: NoSuchKey" in err, err
    assert f"s3://{bucket}/in.txt" in err and "Traceback" not in err
    assert flow.exists("a.txt") and not flow.exists("b.txt")


def test_a_temp_object_is_deleted_once_its_consumers_are_done(flow: Flow, s3: S3Server) -> None:
    bucket = s3.bucket()
    put(s3, bucket, "p/in.txt", "a\n")
    flow.file("flowmake.toml", f'[storage.s3]\nendpoint_url = "{s3.endpoint}"\n')
    flow.write("""
        rule all:
            input: "final.txt"

        rule mid:
            input: "in.txt"
            output: temp("mid.txt")
            shell: "cat {input} {input} > {output}"

        rule final:
            input: "mid.txt"
            output: "final.txt"
            shell: "wc -l < {input} > {output}"
    """)
    args = ("-c", "1", "--default-storage-provider", "s3", "--default-storage-prefix", f"s3://{bucket}/p")
    assert ran(flow.ok(*args)) == ["mid", "final"]
    keys = [o["Key"] for o in s3.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert sorted(keys) == ["p/final.txt", "p/in.txt"]  # p/mid.txt was uploaded, then deleted
    assert ran(flow.ok(*args)) == []  # a temp() output gone after use is not a reason to rerun


def test_touch_records_storage_outputs_as_they_are_on_the_server(flow: Flow, s3: S3Server) -> None:
    bucket = s3.bucket()
    put(s3, bucket, "in.txt", "a\n")
    text = """
        storage:
            provider="s3",
            endpoint_url="{endpoint}"

        rule a:
            input: storage.s3("s3://{bucket}/in.txt")
            output: storage.s3("s3://{bucket}/out.txt")
            shell: "cp {{input}} {{output}}{extra}"
    """
    flow.write(text.format(endpoint=s3.endpoint, bucket=bucket, extra=""))
    flow.ok("-c", "1")
    shutil.rmtree(flow.root / ".flowmake" / "storage")  # local copies gone: the objects stay
    flow.write(text.format(endpoint=s3.endpoint, bucket=bucket, extra=" && true"))
    assert "touched" in flow.ok("--touch")
    mark = len(s3.requests)
    assert ran(flow.ok("-c", "1")) == []
    assert since(s3, mark, "PUT", bucket) == []
