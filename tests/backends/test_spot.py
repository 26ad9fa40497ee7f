"""The spot backend against moto's EC2 whose instances are real sshd hosts (``tests/services/ec2.py``).

Each test runs the real CLI in a workdir whose flowmake.toml selects ``spot`` with the lab's
settings. The hosts are private (they see none of the test's files): inputs are staged to them by
digest and outputs come back verified. What the tests assert about instances comes from the
server: ``describe_instances`` and the lab's log of the requests it answered.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from flowmake.store import Store
from tests.backends.test_contract import Backend, assert_ok, write

pytestmark = [pytest.mark.spot, pytest.mark.slow]

TWENTY = """
rule all:
    input: "total.txt"

rule one:
    output: "out/{n}.txt"
    threads: 1
    shell: "sleep 0.5; echo {wildcards.n} > {output}; hostname >> {output}"

rule total:
    input: expand("out/{n}.txt", n=range(20))
    output: "total.txt"
    shell: "sleep 2.5; cat {input} | grep -c '^[0-9]' > {output}"
"""

SLOW_PAIR = """
rule all:
    input: "a.txt", "b.txt"

rule slow:
    input: "in.txt"
    output: "{name,[ab]}.txt"
    params: delay=config.get("delay", 1)
    shell: "sleep {params.delay}; (cat {input}; echo {wildcards.name}; hostname) > {output}"
"""


@pytest.fixture
def lab(ec2_lab: Any) -> Any:
    ec2_lab.allow()
    ec2_lab.private = True
    ec2_lab.reset_peak()
    yield ec2_lab
    ec2_lab.allow()
    # Whatever the test did, nothing of it may stay up (the run's close ends its instances).
    left = ec2_lab.alive_instances()
    if left:
        ec2_lab.client().terminate_instances(InstanceIds=[i["InstanceId"] for i in left])
    assert not left, f"instances left running: {[i['InstanceId'] for i in left]}"


def spot(lab: Any, root: Path, **settings: Any) -> Backend:
    root.mkdir(parents=True, exist_ok=True)
    return Backend("spot", lab.settings(**settings), root, lab.env())


def spot_command(be: Backend, wd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "flowmake", "spot", *args], cwd=wd, text=True,
                          capture_output=True, timeout=60, env={**os.environ, **be.env})


def mine(lab: Any, wd: Path) -> list[dict[str, Any]]:
    """This workdir's instances, any state."""
    from flowmake.backends.spot_ec2 import TAG_WORKFLOW, workflow_tag

    return lab.instances(**{f"tag:{TAG_WORKFLOW}": workflow_tag(str(wd))})


def alive(lab: Any, wd: Path) -> list[dict[str, Any]]:
    return [i for i in mine(lab, wd) if i["State"]["Name"] in ("pending", "running")]


def wait_for_job(lab: Any, wd: Path, proc: subprocess.Popen[str] | None = None,
                 word: str = "sleep") -> str:
    """The id of an instance of ``wd`` on which a job's ``word`` process runs."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"flowmake ended early: {proc.communicate()}")
        for inst in alive(lab, wd):
            if any(p.startswith(word + " ") for p in lab.processes(inst["InstanceId"])):
                return str(inst["InstanceId"])
        time.sleep(0.2)
    pytest.fail("no job started on an instance")


def test_chain_on_spot_matches_local_and_a_noop_starts_nothing(lab: Any, tmp_path: Path) -> None:
    case = Path(__file__).resolve().parents[1] / "cases" / "basic_chain"
    local = Backend("local", {}, tmp_path)
    be = spot(lab, lab.fs / "chain")
    trees = []
    for b in (local, be):
        wd = b.workdir("chain")
        (wd / "Snakefile").write_text((case / "Snakefile").read_text())
        (wd / "data").mkdir()
        for f in (case / "data").iterdir():
            (wd / "data" / f.name).write_bytes(f.read_bytes())
        res = b.run(wd, "-s", "Snakefile")
        assert_ok(res)
        trees.append({p: (wd / p).read_bytes() for p in ("upper/a.txt", "upper/b.txt", "summary.txt")})
    assert trees[0] == trees[1]
    assert "instance-hours" in res.stderr + res.stdout
    launched = len(lab.launches())
    again = be.run(wd, "-s", "Snakefile")
    assert_ok(again)
    assert "0 steps ran" in again.stdout + again.stderr
    assert len(lab.launches()) == launched, "a no-op run started an instance"
    assert alive(lab, wd) == []
    # Credentials come from the environment only and go nowhere: not printed, not recorded.
    from tests.services.ec2 import SECRET_KEY

    assert SECRET_KEY not in res.stdout + res.stderr + again.stdout + again.stderr
    assert not [p for p in wd.rglob("*") if p.is_file() and SECRET_KEY.encode() in p.read_bytes()]


def test_twenty_small_jobs_share_instances_and_idle_ones_end(lab: Any) -> None:
    be = spot(lab, lab.fs / "twenty", instance_types=["t3.xlarge", "m5.xlarge"], max_instances=8,
              idle_timeout=1)
    wd = be.workdir("twenty")
    write(wd, TWENTY)
    assert_ok(be.run(wd, "-j", "20"))
    assert (wd / "total.txt").read_text() == "20\n"
    started = mine(lab, wd)
    assert {i["InstanceType"] for i in started} <= {"t3.xlarge"}  # the cheapest 4-vCPU type
    assert len(started) <= math.ceil(20 / 4), [i["InstanceId"] for i in started]
    ids = {i["InstanceId"] for i in started}
    hosts = {(wd / "out" / f"{n}.txt").read_text().split()[1] for n in range(20)}
    assert hosts <= ids  # the jobs ran on those few instances
    # While `total` ran (2.5 s), the instances without a job were ended for being idle (1 s):
    # terminations came before the one at the run's end.
    ends = [c for c in lab.calls if c.action == "TerminateInstances" and set(c.instance_ids) & ids]
    assert len(ends) >= 2, ends
    assert alive(lab, wd) == []


@pytest.mark.parametrize("limit", [{"max_instances": 2},
                                   {"max_instances": 8, "max_hourly_cost": 0.12}],  # 2 x $0.05/h
                         ids=["max_instances", "max_hourly_cost"])
def test_never_more_than_max_instances_alive(lab: Any, limit: dict[str, Any]) -> None:
    be = spot(lab, lab.fs / "limit", instance_types=["t3.xlarge"], **limit)
    wd = be.workdir("limit")
    write(wd, TWENTY.replace("range(20)", "range(12)").replace("sleep 2.5; ", ""))
    assert_ok(be.run(wd, "-j", "20"))
    assert (wd / "total.txt").read_text() == "12\n"
    assert lab.peak <= 2, f"{lab.peak} instances were alive at once"
    assert len(mine(lab, wd)) == 2  # the second wave reused them


def test_max_pending_instances_boot_one_at_a_time(lab: Any) -> None:
    be = spot(lab, lab.fs / "pending", instance_types=["t3.xlarge"], max_instances=3,
              max_pending=1)
    wd = be.workdir("pending")
    write(wd, TWENTY.replace("range(20)", "range(12)").replace("sleep 2.5; ", ""))
    assert_ok(be.run(wd, "-j", "20"))
    ids = {i["InstanceId"] for i in mine(lab, wd)}
    launches = sorted((c for c in lab.launches() if set(c.instance_ids) & ids), key=lambda c: c.time)
    assert len(launches) >= 2  # (a third only if the jobs outlast two boots)
    for before, after in zip(launches, launches[1:]):  # the next asked for once the last answered
        assert after.time > lab.booted[before.instance_ids[0]]


@pytest.mark.parametrize("how", ["terminated", "stopped", "unreachable"])
def test_interrupted_instance_jobs_finish_elsewhere_without_a_retry(lab: Any, how: str) -> None:
    be = spot(lab, lab.fs / "interrupt")
    wd = be.workdir("interrupt")
    write(wd, SLOW_PAIR)
    (wd / "in.txt").write_text("input\n")
    proc = be.popen(wd, "--config", "delay=4")
    victim = wait_for_job(lab, wd, proc)
    lab.interrupt(victim, how)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "lost with its host" in err and "resubmitting" in err
    assert "retry" not in err
    for name in ("a", "b"):
        lines = (wd / f"{name}.txt").read_text().split()
        assert lines[:2] == ["input", name]
        assert lines[2] != victim  # finished on another instance
        # The history names each attempt's instance and the job's share of it.
        hosts = [h.host for h in Store.open(str(wd), readonly=True).history(f"{name}.txt")]
        assert hosts[-1] == f"{lines[2]}/t3.xlarge 1/4 vCPUs"
        assert any(h.startswith(victim) for h in hosts[:-1]), hosts
    assert alive(lab, wd) == []
    # A stopped or unreachable instance is of no more use: the backend terminated it.
    assert {i["InstanceId"]: i["State"]["Name"] for i in mine(lab, wd)}[victim] == "terminated"


def test_refused_type_uses_the_next_and_refused_spot_falls_back(lab: Any) -> None:
    be = spot(lab, lab.fs / "refuse")
    wd = be.workdir("refuse")
    write(wd, 'rule x:\n    output: "x.txt"\n    shell: "hostname > {output}"\n')
    lab.refuse("t3.xlarge")
    res = be.run(wd)
    assert_ok(res)
    assert "t3.xlarge (spot) refused: InsufficientInstanceCapacity" in res.stderr
    assert [i["InstanceType"] for i in mine(lab, wd)] == ["m5.xlarge"]

    lab.allow()
    lab.refuse(spot=True)
    be = spot(lab, lab.fs / "refuse", on_demand_fallback=True)
    wd = be.workdir("fallback")
    write(wd, 'rule x:\n    output: "x.txt"\n    shell: "hostname > {output}"\n')
    res = be.run(wd)
    assert_ok(res)
    (inst,) = mine(lab, wd)
    assert inst.get("InstanceLifecycle") != "spot" and inst["InstanceType"] == "t3.xlarge"

    be = spot(lab, lab.fs / "refuse")  # no fallback: the run says why nothing could start
    wd = be.workdir("nofallback")
    write(wd, 'rule x:\n    output: "x.txt"\n    shell: "hostname > {output}"\n')
    res = be.run(wd)
    assert res.returncode == 1, res.stderr
    assert "no instance could be launched" in res.stderr and "on_demand_fallback" in res.stderr
    assert mine(lab, wd) == []


def test_killed_run_leaves_tagged_instances_and_the_next_run_ends_them(lab: Any) -> None:
    be = spot(lab, lab.fs / "killed")
    wd = be.workdir("killed")
    write(wd, SLOW_PAIR)
    (wd / "in.txt").write_text("input\n")
    proc = be.popen(wd, "--config", "delay=60")
    orphan = wait_for_job(lab, wd, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert [i["InstanceId"] for i in alive(lab, wd)] == [orphan]
    listed = spot_command(be, wd, "list")
    assert_ok(listed)
    assert orphan in listed.stdout and "dead" in listed.stdout
    launched = len(lab.launches())
    res = be.run(wd, "in.txt")  # nothing to run: only the killed run's lock file makes it look
    assert_ok(res)
    assert f"a killed run left: {orphan}" in res.stderr
    assert alive(lab, wd) == [] and len(lab.launches()) == launched
    res = be.run(wd)  # delay 1 now: the steps rerun
    assert_ok(res)
    assert "killed run" not in res.stderr  # ended once, and its lock file with it
    assert orphan not in (wd / "a.txt").read_text()
    assert alive(lab, wd) == []


def test_keep_warm_instances_are_reused_by_the_next_run_then_cleaned_up(lab: Any) -> None:
    be = spot(lab, lab.fs / "warm", keep_warm=True, idle_timeout=60)
    wd = be.workdir("warm")
    write(wd, 'rule x:\n    output: "{n}.txt"\n    shell: "hostname > {output}"\n')
    assert_ok(be.run(wd, "1.txt"))
    (warm,) = alive(lab, wd)
    launched = len(lab.launches())
    assert_ok(be.run(wd, "2.txt"))
    assert len(lab.launches()) == launched, "the kept-warm instance was not reused"
    assert (wd / "2.txt").read_text().strip() == warm["InstanceId"]
    listed = spot_command(be, wd, "list")
    assert warm["InstanceId"] in listed.stdout and "warm" in listed.stdout
    cleaned = spot_command(be, wd, "cleanup")
    assert_ok(cleaned)
    assert f"terminated 1 instance: {warm['InstanceId']}" in cleaned.stdout
    assert alive(lab, wd) == []


def test_a_launch_template_instead_of_an_image(lab: Any) -> None:
    name = f"flowmake-test-{time.monotonic_ns()}"
    lab.client().create_launch_template(LaunchTemplateName=name,
                                        LaunchTemplateData={"ImageId": lab.image_id})
    settings = lab.settings(launch_template=name)
    del settings["image_id"]
    be = Backend("spot", settings, lab.fs / "template", lab.env())
    (lab.fs / "template").mkdir(exist_ok=True)
    wd = be.workdir("template")
    write(wd, 'rule x:\n    output: "x.txt"\n    shell: "hostname > {output}"\n')
    assert_ok(be.run(wd))
    (inst,) = mine(lab, wd)
    assert (wd / "x.txt").read_text().strip() == inst["InstanceId"]
    (launch,) = [c for c in lab.launches() if inst["InstanceId"] in c.instance_ids]
    assert launch.params.get("LaunchTemplate.LaunchTemplateName") == name
    assert "ImageId" not in launch.params


def test_unknown_host_key_is_refused(lab: Any, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    be = spot(lab, lab.fs / "hostkey", known_hosts=str(empty))
    wd = be.workdir("hostkey")
    write(wd, 'rule x:\n    output: "x.txt"\n    shell: "hostname > {output}"\n')
    res = be.run(wd)
    assert res.returncode == 2, res.stderr
    assert f"is not in known_hosts file {empty}" in res.stderr and "never accepts" in res.stderr
    assert not (wd / "x.txt").exists()
    assert alive(lab, wd) == []


def test_without_pinned_keys_an_instance_that_reports_none_is_never_used(lab: Any) -> None:
    be = spot(lab, lab.fs / "nokeys", known_hosts="", boot_timeout=2)
    wd = be.workdir("nokeys")
    write(wd, 'rule x:\n    output: "x.txt"\n    shell: "hostname > {output}"\n')
    res = be.run(wd)
    assert res.returncode == 2, res.stderr
    assert "reported no SSH host keys on its console" in res.stderr
    assert "never accepts a key it cannot verify" in res.stderr
    assert len(mine(lab, wd)) == 1 and alive(lab, wd) == []


def test_settings_are_checked(lab: Any) -> None:
    be = spot(lab, lab.fs / "settings", max_instancs=3)
    wd = be.workdir("settings")
    write(wd, 'rule x:\n    output: "x.txt"\n    shell: "hostname > {output}"\n')
    res = be.run(wd)
    assert res.returncode == 2
    assert "unknown setting 'max_instancs' in [backends.spot]" in res.stderr
    assert "max_instances" in res.stderr
    assert json.loads(be.run(wd, "-n", "--json").stdout)["steps"]  # a dry run needs no EC2
