"""Spot instances move a step's data to and from an S3 cache themselves (``backends/ssh_dataplane``).

The lab's instances (``tests/services/ec2.py``) and a moto S3 server listening on the lab's bridge
address, so the instances (10.214.0.x) and this machine (10.214.0.1 on the bridge) both reach it.
The server's request log names each request's client: that is how "the instance uploaded it" and
"the instance fetched it" are seen. The hosts run the test's python (it has blake3, which checking a
flowmake digest needs).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from flowmake.digest import hash_bytes
from tests.backends.test_contract import Backend, assert_ok
from tests.backends.test_spot import lab, spot  # noqa: F401  # the fixture
from tests.services.ec2 import SUBNET
from tests.services.s3 import S3Server

pytestmark = [pytest.mark.spot, pytest.mark.slow]

CASE = Path(__file__).resolve().parents[1] / "cases" / "basic_chain"
BRIDGE = f"{SUBNET}.1"
OUTS = ("upper/a.txt", "upper/b.txt", "summary.txt")


@pytest.fixture(scope="module")
def bridge_s3(ec2_lab: Any) -> Iterator[S3Server]:
    server = S3Server(ip_address=BRIDGE)  # after the lab: its bridge holds the address
    try:
        yield server
    finally:
        server.stop()


def clone(be: Backend, s3: S3Server, bucket: str, label: str, summary: str) -> Path:
    wd = be.workdir(label)
    with open(wd / "flowmake.toml", "a") as toml:
        toml.write(f'\n[cache]\nurl = "s3://{bucket}/team"\nendpoint_url = "{s3.endpoint}"\n')
    flow = (CASE / "Snakefile").read_text().replace('"cat {input} > {output}"', repr(summary))
    (wd / "Snakefile").write_text(flow)
    (wd / "data").mkdir()
    for f in (CASE / "data").iterdir():
        (wd / "data" / f.name).write_bytes(f.read_bytes())
    return wd


def from_hosts(s3: S3Server, bucket: str, method: str, start: int = 0) -> list[str]:
    """Keys of blobs ``method``-ed by an instance (not by this machine) since request ``start``."""
    return [r.key for r in s3.requests[start:] if r.bucket == bucket and r.method == method
            and "/cas/" in "/" + r.key and r.addr.startswith(SUBNET + ".") and r.addr != BRIDGE]


def blob_key(data: bytes) -> str:
    d = hash_bytes(data)
    return f"team/cas/{d[:2]}/{d}"


def test_instances_publish_outputs_and_fetch_cached_inputs_from_s3_themselves(
        lab: Any, bridge_s3: S3Server, tmp_path: Path) -> None:  # noqa: F811  # lab: the fixture
    s3 = bridge_s3
    bucket = s3.bucket()
    be = spot(lab, lab.fs / "plane", python=sys.executable)
    # (a) The instances upload the output blobs; this machine writes only the manifests.
    first = clone(be, s3, bucket, "first", "cat {input} > {output}")
    res = be.run(first, "-s", "Snakefile")
    assert_ok(res)
    made = {p: (first / p).read_bytes() for p in OUTS}
    assert sorted(from_hosts(s3, bucket, "PUT")) == sorted(blob_key(b) for b in made.values())
    mine = [r for r in s3.requests if r.bucket == bucket and r.method == "PUT" and r.key]  # not the bucket
    assert sorted(r.key.split("/")[1] for r in mine if r.addr == BRIDGE) == ["ac"] * 3
    assert "3 published to the cache (0 B)" in res.stderr + res.stdout  # none of it sent from here
    assert "uploaded" in res.stderr + res.stdout  # the summary says what the hosts moved
    # (b) Another clone whose summary differs: upper's outputs come from the cache, and the
    # instance running summary fetches them from S3 itself. Its output is a local run's.
    start = len(s3.requests)
    other = "cat {input} > {output}; echo end >> {output}"
    second = clone(be, s3, bucket, "second", other)
    res = be.run(second, "-s", "Snakefile")
    assert_ok(res)
    said = res.stdout + res.stderr
    assert "hosts fetched 11 B from the cache" in said and "0 B sent from here" in said  # ALPHA, BETA
    fetched = from_hosts(s3, bucket, "GET", start)
    assert sorted(fetched) == sorted({blob_key(made["upper/a.txt"]), blob_key(made["upper/b.txt"])})
    local = Backend("local", {}, tmp_path)
    ref = clone(local, s3, s3.bucket(), "local", other)
    assert_ok(local.run(ref, "-s", "Snakefile"))
    assert {p: (second / p).read_bytes() for p in OUTS} == {p: (ref / p).read_bytes() for p in OUTS}
    # (c) A damaged blob: the instance's check fails, it gets the file by SFTP, the run is right.
    start = len(s3.requests)
    damaged = blob_key(made["upper/a.txt"])
    s3.client().put_object(Bucket=bucket, Key=damaged, Body=b"DAMAGED\n")
    third = "cat {input} > {output}; echo third >> {output}"
    flow = first / "Snakefile"
    flow.write_text(flow.read_text().replace(repr("cat {input} > {output}"), repr(third)))
    res = be.run(first, "-s", "Snakefile")
    assert_ok(res)
    assert damaged in from_hosts(s3, bucket, "GET", start)
    said = res.stdout + res.stderr  # BETA from the bucket, ALPHA by SFTP from here
    assert "hosts fetched 5 B from the cache" in said and "6 B sent from here" in said
    # This machine checked the blob the host refused, and removed it: the next publisher puts it back.
    assert s3.count("DELETE", bucket, damaged) == 1
    assert "Contents" not in s3.client().list_objects_v2(Bucket=bucket, Prefix=damaged)
    assert (first / "summary.txt").read_bytes() == made["summary.txt"] + b"third\n"


def test_hosts_that_cannot_check_a_digest_leave_the_data_to_this_machine(
        lab: Any, bridge_s3: S3Server) -> None:  # noqa: F811  # lab: the fixture
    # The system's python3 as a host's (CI puts the venv's, which has blake3, first on PATH).
    plain = next((p for p in ("/usr/bin/python3", "python3") if subprocess.run(
        [p, "-c", "import blake3"], capture_output=True).returncode != 0), None)
    if plain is None:
        pytest.skip("every python3 here has blake3")
    s3 = bridge_s3
    bucket = s3.bucket()
    be = spot(lab, lab.fs / "noblake3", python=plain)
    wd = clone(be, s3, bucket, "first", "cat {input} > {output}")
    res = be.run(wd, "-s", "Snakefile")
    assert_ok(res)
    assert from_hosts(s3, bucket, "PUT") == [] and from_hosts(s3, bucket, "GET") == []
    assert "3 published to the cache (22 B)" in res.stdout + res.stderr  # sent from here, as without a plane
    assert (wd / "summary.txt").read_text() == "ALPHA\nBETA\n"
