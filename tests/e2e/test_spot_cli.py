"""The spot backend without hosts: ``flowmake spot list/cleanup`` and refused launches, on moto.

No instance here runs anything (no root needed): the instances are made with the workflow's tags
directly, as a killed run, a live run (its lock held by this test) and another workflow leave them.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

pytestmark = pytest.mark.spot

ENV = {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_DEFAULT_REGION": "us-east-1",
       "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
       "AWS_EC2_METADATA_DISABLED": "true"}


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as e:
        pytest.skip(f"moto[server] is not installed: {e}")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def _ec2(endpoint: str) -> Any:
    import boto3

    return boto3.client("ec2", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="k", aws_secret_access_key="s")


def _launch(ec2: Any, image: str, workflow: str, run: str) -> str:
    tags = [{"Key": "flowmake:workflow", "Value": workflow}, {"Key": "flowmake:run", "Value": run}]
    r = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, InstanceType="t3.micro",
                          TagSpecifications=[{"ResourceType": "instance", "Tags": tags}])
    return str(r["Instances"][0]["InstanceId"])


def _spot(wd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "flowmake", "spot", *args], cwd=wd, text=True,
                          capture_output=True, timeout=60, env={**os.environ, **ENV})


def test_list_shows_whose_instances_and_cleanup_spares_live_runs(endpoint: str, tmp_path: Path) -> None:
    from flowmake.backends.spot_ec2 import lock_path, workflow_tag

    ec2 = _ec2(endpoint)
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    wd = tmp_path / "wd"
    wd.mkdir()
    (wd / "flowmake.toml").write_text(
        f'[backends.spot]\nregion = "us-east-1"\nendpoint_url = "{endpoint}"\nimage_id = "{image}"\n')
    wf = workflow_tag(str(wd))
    dead = _launch(ec2, image, wf, "deadrun")
    live = _launch(ec2, image, wf, "liverun")
    other = _launch(ec2, image, wf + "-elsewhere", "x")
    path = lock_path(str(wd), "liverun")
    path.parent.mkdir(parents=True)
    with open(path, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a running flowmake holds it
        listed = _spot(wd, "list")
        assert listed.returncode == 0, listed.stderr
        rows = {line.split()[0]: line.split() for line in listed.stdout.splitlines()}
        assert set(rows) == {dead, live}
        assert "dead" in rows[dead] and "live" in rows[live] and "t3.micro" in rows[dead]
        assert other in _spot(wd, "list", "--all").stdout
        cleaned = _spot(wd, "cleanup")
        assert cleaned.returncode == 0, cleaned.stderr
        assert cleaned.stdout == f"terminated 1 instance: {dead}\n"
    states = {i["InstanceId"]: i["State"]["Name"]
              for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]}
    assert states[dead] == "terminated" and states[live] == "running" and states[other] == "running"
    assert _spot(wd, "cleanup").stdout == f"terminated 1 instance: {live}\n"  # its run is gone now


def test_spot_command_without_credentials_says_so(tmp_path: Path) -> None:
    (tmp_path / "flowmake.toml").write_text(
        '[backends.spot]\nregion = "us-east-1"\nendpoint_url = "http://127.0.0.1:9"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({"AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
                "AWS_EC2_METADATA_DISABLED": "true"})
    res = subprocess.run([sys.executable, "-m", "flowmake", "spot", "list"], cwd=tmp_path,
                         text=True, capture_output=True, timeout=60, env=env)
    assert res.returncode == 2, res.stderr
    assert "no AWS credentials for the spot backend" in res.stderr
    assert "Traceback" not in res.stderr


def test_a_launch_refused_for_a_wrong_setting_stops_the_run(endpoint: str, tmp_path: Path) -> None:
    ec2 = _ec2(endpoint)
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    (tmp_path / "flowmake.toml").write_text(
        f'backend = "spot"\n[backends.spot]\nregion = "us-east-1"\nendpoint_url = "{endpoint}"\n'
        f'image_id = "{image}"\nsubnet_id = "subnet-nope"\ninstance_types = ["t3.micro"]\n'
        'poll_interval = 0.2\n')
    (tmp_path / "Flowfile").write_text('rule x:\n    output: "x.txt"\n    shell: "touch {output}"\n')
    res = subprocess.run([sys.executable, "-m", "flowmake", "-c", "1"], cwd=tmp_path, text=True,
                         capture_output=True, timeout=60, env={**os.environ, **ENV})
    assert res.returncode == 2, res.stderr
    assert "EC2 run_instances: InvalidSubnetID.NotFound" in res.stderr
    assert "check [backends.spot]" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "x.txt").exists()


def test_a_bad_duration_is_a_settings_error(tmp_path: Path) -> None:
    (tmp_path / "flowmake.toml").write_text(
        'backend = "spot"\n[backends.spot]\nimage_id = "ami-1"\nidle_timeout = "ten minutes"\n')
    (tmp_path / "Flowfile").write_text('rule x:\n    output: "x.txt"\n    shell: "touch {output}"\n')
    res = subprocess.run([sys.executable, "-m", "flowmake"], cwd=tmp_path, text=True,
                         capture_output=True, timeout=60, env={**os.environ, **ENV})
    assert res.returncode == 2, res.stderr
    assert "[backends.spot] idle_timeout = 'ten minutes' is not a duration" in res.stderr
    assert '"10m"' in res.stderr
