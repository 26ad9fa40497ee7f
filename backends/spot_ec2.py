"""What the spot backend asks EC2 (used by ``spot.py``), and ``flowmake spot list|cleanup``.

One ``Ec2`` per run: the boto3 client (credentials from boto3's standard chain only; the region
and ``endpoint_url`` from ``[backends.spot]``), the instance types with their prices, the
``run_instances`` arguments, the tags that find a workflow's instances again. Every failure is a
``BackendError`` carrying EC2's code and message, never a credential.

Settings (``[backends.spot]``), with defaults: ``region``, ``endpoint_url`` (boto3's); ``image_id``
or ``launch_template`` (an ``lt-`` id or a name; one is required); ``subnet_id``,
``security_group_ids``, ``key_name``, ``instance_profile`` (a name or an ARN); ``instance_types``
(the allow-list; default every type, slow to list); ``prices`` and ``on_demand_prices`` ({type: $/h};
spot prices not given come from the price history); ``max_price`` (none; also the spot bid);
``max_instances`` (8), ``max_pending`` (4, booting at once), ``max_hourly_cost`` (none);
``idle_timeout`` (10 min), ``poll_interval`` (5 s), ``boot_timeout`` (10 min),
``capacity_backoff`` (5 min; durations in seconds or "90s", "10m", "1h"); ``on_demand_fallback``
(false), ``keep_warm`` (false); ``ssh_user`` ("ec2-user"), ``identity_file``, ``known_hosts`` (unset:
the keys the instance prints on its console), ``use_public_ip`` (false), ``remote_root``,
``shared_fs`` (false; true when instances mount the workdir, e.g. EFS), and the ssh backend's
``connect_timeout``, ``keepalive``, ``python``, ``keep_remote_jobs``.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from flowmake.errors import BackendError

SETTINGS = ("region", "endpoint_url", "image_id", "launch_template", "subnet_id",
            "security_group_ids", "key_name", "instance_profile", "instance_types", "max_price",
            "max_instances", "max_hourly_cost", "max_pending", "idle_timeout",
            "on_demand_fallback", "keep_warm", "ssh_user", "identity_file", "known_hosts",
            "use_public_ip", "remote_root")
# Beyond the names: price tables, timers, the ssh backend's own knobs, what flags add.
EXTRA = ("prices", "on_demand_prices", "poll_interval", "boot_timeout", "capacity_backoff",
         "shared_fs", "connect_timeout", "keepalive", "python", "keep_remote_jobs",
         "latency_wait", "max_jobs_per_timespan", "verbose")
# Refusals that say "not this type (or market) now", not "your request is wrong".
CAPACITY_CODES = {"InsufficientInstanceCapacity", "InsufficientCapacity", "SpotMaxPriceTooLow",
                  "MaxSpotInstanceCountExceeded", "InsufficientSpotCapacity",
                  "capacity-not-available", "UnfulfillableCapacity", "InstanceLimitExceeded"}
TAG_WORKFLOW, TAG_RUN, TAG_WARM = "flowmake:workflow", "flowmake:run", "flowmake:warm"
ALIVE = ("pending", "running")
KEYS_BEGIN, KEYS_END = "-----BEGIN SSH HOST KEY KEYS-----", "-----END SSH HOST KEY KEYS-----"


@dataclass(frozen=True)
class Kind:
    """An instance type with what it holds and what it costs per hour (None: unknown)."""

    name: str
    vcpus: int
    mem_mb: int
    price: float | None
    on_demand: float | None

    def cost(self, market: str) -> float:
        return (self.price if market == "spot" else self.on_demand or self.price) or 0.0


def seconds(value: Any, what: str) -> float:
    """A duration setting: a number of seconds or "90s", "10m", "1h"."""
    text = str(value).strip().lower()
    scale = {"s": 1, "m": 60, "h": 3600}.get(text[-1:], 0)
    try:
        return float(text[:-1] if scale else text) * (scale or 1)
    except ValueError:
        raise BackendError(f"[backends.spot] {what} = {value!r} is not a duration",
                           hint='give seconds or "90s", "10m", "1h"') from None


def number(value: Any) -> float | None:
    return float(value) if value not in (None, "", 0) else None


def workflow_tag(workdir: str) -> str:
    """The value of a workflow's ``flowmake:workflow`` tag: this machine and the workdir."""
    from flowmake.journal import hostname

    text = f"{hostname()}:{os.path.abspath(workdir)}"
    return text if len(text) <= 255 else text[:100] + "..." + text[-150:]


def lock_path(workdir: str, run: str) -> Path:
    return Path(workdir, ".flowmake", "spot", f"{run}.lock")


def run_is_live(workdir: str, run: str) -> bool:
    """Whether the run's lock is held: a run that was killed holds none."""
    try:
        fd = os.open(lock_path(workdir, run), os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def stale_locks(workdir: str) -> list[Path]:
    """Lock files of runs on this workdir that ended without closing: killed, with instances up."""
    folder = Path(workdir, ".flowmake", "spot")
    found = sorted(folder.glob("*.lock")) if folder.is_dir() else []
    return [p for p in found if not run_is_live(workdir, p.name[:-len(".lock")])]


def hold_lock(workdir: str, run: str) -> int:
    """Take the run's lock for as long as the returned descriptor is open.

    Locked under a temporary name and then renamed, so a file under the final name is always
    locked already: another run never sees a starting run's file free and takes it for dead."""
    path = lock_path(workdir, run)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".new")
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.replace(tmp, path)
    return fd


def tags(inst: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in inst.get("Tags", [])}


class Ec2:
    def __init__(self, settings: dict[str, Any]) -> None:
        import boto3
        import botocore.config

        self.settings = settings
        session = boto3.session.Session(region_name=settings.get("region"))
        config = botocore.config.Config(retries={"max_attempts": 3, "mode": "standard"},
                                        connect_timeout=10, read_timeout=60)
        self.client = session.client("ec2", endpoint_url=settings.get("endpoint_url"),
                                     config=config)

    def call(self, op: str, **kw: Any) -> Any:
        """One EC2 call; its failure as a BackendError (the ClientError is its ``__cause__``)."""
        import botocore.exceptions as bx

        try:
            return getattr(self.client, op)(**kw)
        except bx.NoCredentialsError:
            raise BackendError("no AWS credentials for the spot backend",
                               hint="boto3's standard chain: AWS_ACCESS_KEY_ID/AWS_SECRET_"
                                    "ACCESS_KEY, ~/.aws/credentials, AWS_PROFILE or an "
                                    "instance role") from None
        except bx.ClientError as exc:
            err = exc.response.get("Error", {})
            raise BackendError(f"EC2 {op}: {err.get('Code', '?')}: {err.get('Message', '')}",
                               hint="check [backends.spot]") from exc
        except (bx.BotoCoreError, OSError) as exc:
            raise BackendError(f"EC2 {op} failed: {exc}",
                               hint="check region and endpoint_url in [backends.spot]") from None

    @staticmethod
    def code(exc: BackendError) -> str | None:
        """EC2's error code behind ``exc``; None when EC2 was not reached."""
        response = getattr(exc.__cause__, "response", None)
        return response.get("Error", {}).get("Code", "") if isinstance(response, dict) else None

    def kinds(self) -> list[Kind]:
        """The allowed types (all, without an allow-list), cheapest first."""
        allow = list(self.settings.get("instance_types") or [])
        kw: dict[str, Any] = {"InstanceTypes": allow} if allow else {}
        found: list[dict[str, Any]] = []
        while True:
            page = self.call("describe_instance_types", **kw)
            found += page.get("InstanceTypes", [])
            if not page.get("NextToken"):
                break
            kw["NextToken"] = page["NextToken"]
        table = dict(self.settings.get("prices") or {})
        od = dict(self.settings.get("on_demand_prices") or {})
        missing = [t["InstanceType"] for t in found if t["InstanceType"] not in table]
        if missing and len(missing) <= 100:  # else: one history call per type is not worth it
            history = self.call("describe_spot_price_history", InstanceTypes=missing,
                                ProductDescriptions=["Linux/UNIX", "Linux/UNIX (Amazon VPC)"],
                                StartTime=time.time() - 3600)
            for h in history.get("SpotPriceHistory", []):
                price = float(h["SpotPrice"])
                table[h["InstanceType"]] = min(price, table.get(h["InstanceType"], price))
        kinds = [Kind(t["InstanceType"], int(t["VCpuInfo"]["DefaultVCpus"]),
                      int(t["MemoryInfo"]["SizeInMiB"]), number(table.get(t["InstanceType"])),
                      number(od.get(t["InstanceType"]))) for t in found]
        if not kinds:
            raise BackendError("no instance types to choose from",
                               hint="check instance_types in [backends.spot]")
        return sorted(kinds, key=lambda k: (k.price is None, k.price or 0.0, k.vcpus))

    def launch_args(self, kind: Kind, market: str, workflow: str, run: str,
                    name: str) -> dict[str, Any]:
        get = self.settings.get
        tagged = [{"Key": TAG_WORKFLOW, "Value": workflow}, {"Key": TAG_RUN, "Value": run},
                  {"Key": "Name", "Value": f"flowmake {name}"[:255]}]
        kw: dict[str, Any] = {"MinCount": 1, "MaxCount": 1, "InstanceType": kind.name,
                              "TagSpecifications": [{"ResourceType": "instance", "Tags": tagged}]}
        if get("image_id"):
            kw["ImageId"] = get("image_id")
        if get("launch_template"):
            lt = str(get("launch_template"))
            kw["LaunchTemplate"] = {"LaunchTemplateId" if lt.startswith("lt-") else
                                    "LaunchTemplateName": lt}
        for key, arg in (("subnet_id", "SubnetId"), ("key_name", "KeyName")):
            if get(key):
                kw[arg] = get(key)
        if get("security_group_ids"):
            kw["SecurityGroupIds"] = list(get("security_group_ids") or [])
        profile = str(get("instance_profile") or "")
        if profile:
            kw["IamInstanceProfile"] = {"Arn" if profile.startswith("arn:") else "Name": profile}
        if market == "spot":
            options: dict[str, Any] = {"SpotInstanceType": "one-time",
                                       "InstanceInterruptionBehavior": "terminate"}
            if number(get("max_price")) is not None:
                options["MaxPrice"] = str(get("max_price"))
            kw["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": options}
        return kw

    def tagged(self, workflow: str | None = None, run: str | None = None) -> list[dict[str, Any]]:
        """Instances of ``workflow`` or ``run`` (every flowmake instance when neither), any state."""
        f = [{"Name": f"tag:{TAG_RUN}", "Values": [run]} if run is not None else
             {"Name": "tag-key", "Values": [TAG_WORKFLOW]} if workflow is None else
             {"Name": f"tag:{TAG_WORKFLOW}", "Values": [workflow]}]
        out: list[dict[str, Any]] = []
        kw: dict[str, Any] = {"Filters": f}
        while True:
            page = self.call("describe_instances", **kw)
            out += [i for r in page.get("Reservations", []) for i in r["Instances"]]
            if not page.get("NextToken"):
                return out
            kw["NextToken"] = page["NextToken"]

    def console_keys(self, iid: str, address: str) -> list[str]:
        """The host keys cloud-init printed to the console, as known_hosts lines."""
        text = self.call("get_console_output", InstanceId=iid).get("Output") or ""
        inside, lines = False, []
        for line in text.splitlines():
            inside = (inside or line.strip() == KEYS_BEGIN) and line.strip() != KEYS_END
            parts = line.split()
            if inside and len(parts) >= 2 and parts[0].startswith(("ssh-", "ecdsa-")):
                lines.append(f"{address} {parts[0]} {parts[1]}")
        return lines

    def address(self, iid: str, public: bool) -> str | None:
        """The instance's address once it runs (its public one when ``public``)."""
        found = self.call("describe_instances", InstanceIds=[iid])["Reservations"]
        desc = found[0]["Instances"][0] if found else {}
        if desc.get("State", {}).get("Name") != "running":
            return None
        return desc.get("PublicIpAddress" if public else "PrivateIpAddress") or None

    def terminate(self, ids: Sequence[str]) -> None:
        if ids:
            self.call("terminate_instances", InstanceIds=list(ids))


def boot_error(iid: str, address: str, timeout: float, no_keys: bool) -> BackendError:
    """Why an instance never became usable: a setting to fix, so the run stops."""
    if no_keys:
        return BackendError(
            f"instance {iid} reported no SSH host keys on its console within {timeout:.0f} s",
            hint="set known_hosts in [backends.spot] to the keys your image pins; flowmake never "
                 "accepts a key it cannot verify")
    return BackendError(
        f"instance {iid} ({address}) did not answer SSH within {timeout:.0f} s",
        hint="check subnet_id, security_group_ids (port 22), use_public_ip and the image's sshd; "
             "raise boot_timeout if it is only slow")


def note(text: str) -> None:
    """What the user should know as it happens (a refusal, a reclaim, an orphan ended)."""
    print(f"spot: {text}", file=sys.stderr, flush=True)


def owner(inst: dict[str, Any], workdir: str, workflow: str) -> str:
    """Who an instance belongs to: "live" (a running run), "warm" (kept for the next run),
    "dead" (a run of this workflow that was killed) or "other" (another workflow's)."""
    t = tags(inst)
    if t.get(TAG_WARM) and not t.get(TAG_RUN):
        return "warm"
    if t.get(TAG_WORKFLOW) != workflow:
        return "other"
    return "live" if run_is_live(workdir, t.get(TAG_RUN, "")) else "dead"


def command(argv: Sequence[str], settings: dict[str, Any], workdir: str) -> int:
    """``flowmake spot list [--all]`` and ``flowmake spot cleanup [--all]``."""
    import argparse

    p = argparse.ArgumentParser(prog="flowmake spot",
                                description="the spot backend's instances: show or end them")
    p.add_argument("action", choices=["list", "cleanup"])
    p.add_argument("--all", action="store_true",
                   help="every flowmake instance in the region, not only this workflow's")
    args = p.parse_args(list(argv))
    ec2, workflow = Ec2(settings), workflow_tag(workdir)
    found = [i for i in ec2.tagged(None if args.all else workflow)
             if i["State"]["Name"] in ALIVE + ("stopping", "stopped")]
    if args.action == "list":
        for i in found:
            age = (time.time() - i["LaunchTime"].timestamp()) / 60 if "LaunchTime" in i else 0
            print(f"{i['InstanceId']}  {i['InstanceType']}  "
                  f"{'spot' if i.get('InstanceLifecycle') == 'spot' else 'on-demand'}  "
                  f"{i['State']['Name']}  {i.get('PrivateIpAddress', '-')}  {age:.0f} min  "
                  f"{owner(i, workdir, workflow)}  {tags(i).get(TAG_WORKFLOW, '')}")
        if not found:
            print("no flowmake instances" + ("" if args.all else " of this workflow"))
        return 0
    # A live run's instances stay: ending them would make its jobs LOST for nothing.
    ends = [i["InstanceId"] for i in found if owner(i, workdir, workflow) != "live"]
    ec2.terminate(ends)
    print(f"terminated {len(ends)} instance{'s' if len(ends) != 1 else ''}"
          + (": " + ", ".join(ends) if ends else ""))
    return 0
