"""A fake cloud for the spot backend tests: moto's EC2 API on 127.0.0.1, real sshd "instances".

``start_ec2_lab(dir)`` starts moto in server mode (``ThreadedMotoServer``, a free port) and puts a
small WSGI layer in front of moto's application that

- refuses ``RunInstances`` on demand, as real EC2 does when it has no capacity: ``refuse(type=...)``
  answers ``InsufficientInstanceCapacity`` for that instance type, ``refuse(spot=True)`` answers
  ``SpotMaxPriceTooLow`` for every spot request; both are real HTTP 400 errors that boto3 raises
  as ``ClientError`` (``allow()`` lifts them);
- boots a real host for every instance moto starts: a network namespace with the instance's private
  address, its own hostname (the instance id) and its own sshd, on a bridge in the root namespace
  (``fsbr<tag>`` at 10.214.0.1/24; moto hands out .4, .5, ... of the subnet ``start_ec2_lab``
  creates). Each host gets a generated host key, added to ``known_hosts`` when the host boots: the
  lab "pins" its instances' keys, and clients verify them instead of accepting them;
- kills an instance's host when it is terminated or stopped (``TerminateInstances``,
  ``StopInstances``): moto never interrupts anything itself, so a test interrupts an instance by
  terminating it (``interrupt(id)``), which is what a spot reclaim looks like from the client;
- counts the instances alive (launched, not yet terminated or stopped) after every request: ``peak``
  is the most that were ever alive at once since ``reset_peak()``, as the server saw it.

Hosts are *private* by default (an empty tmpfs over ``fs``: they see none of the test's files, so
everything a job needs is staged); with ``lab.private = False`` the next instances share the test's
filesystem (for ``shared_fs = true``). ``stop()`` kills every host, deletes every namespace, veth and
the bridge, and stops the server; the fixture calls it also after a failure. A session killed before
its teardown leaves them behind: the bridge's alias names its pid, and the next lab removes a dead
session's bridge, links and namespaces before it starts.

Namespaces and links are ``fs<tag>*``, the subnet 10.214.0.0/24: nothing is shared with the ssh
backend's hosts (``ssh.py``: ``fm*``, 10.213.0.0/24). The namespaces get no default route.
"""

from __future__ import annotations

import getpass
import io
import logging
import os
import re
import signal
import subprocess
import threading
import time
import urllib.parse
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from . import ServiceUnavailable, require_binaries, require_root, run
from .ssh import SshHost, SshHosts, _prepare, _start_sshd

SUBNET = "10.214.0"
REGION = "us-east-1"
ACCESS_KEY = "flowmake-test-key"
SECRET_KEY = "flowmake-test-secret"
ERROR_XML = ('<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{code}</Code>'
             '<Message>{message}</Message></Error></Errors><RequestID>{rid}</RequestID></Response>')


@dataclass
class Call:
    """One EC2 API request the server answered (or refused)."""

    action: str
    params: dict[str, str]
    status: int
    instance_ids: tuple[str, ...] = ()
    time: float = field(default_factory=time.time)


@dataclass
class _Faults:
    types: dict[str, str] = field(default_factory=dict)  # instance type -> error code
    spot: str | None = None  # error code for every spot request


def _strip(tag: str) -> str:
    return tag.rpartition("}")[2]


def _launched(body: bytes) -> list[tuple[str, str]]:
    """(instance id, private address) of each instance in a RunInstances response."""
    out = []
    root = ET.fromstring(body)
    for el in root.iter():
        if _strip(el.tag) != "instancesSet":
            continue
        for item in el:
            fields = {_strip(c.tag): (c.text or "") for c in item}
            if fields.get("instanceId"):
                out.append((fields["instanceId"], fields.get("privateIpAddress", "")))
    return out


class Ec2Lab:
    def __init__(self, base: Path) -> None:
        require_root("network namespaces")
        self._bins = require_binaries("ec2 lab hosts", ["sshd", "ssh-keygen", "ip", "unshare",
                                                        "mount"])
        try:
            from moto.server import ThreadedMotoServer
        except ImportError as e:  # the test extra installs moto[server]
            raise ServiceUnavailable(f"moto[server] is not installed: {e}") from None
        _reap_stale()
        in_use = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True,
                                text=True).stdout
        if f"inet {SUBNET}." in in_use:
            raise ServiceUnavailable(f"{SUBNET}.0/24 is in use here (another ec2 lab running?)")
        self.base = base
        self.hosts: SshHosts = _prepare(base, self._bins)
        self.hosts.known_hosts.touch()
        self.tag = uuid.uuid4().hex[:6]
        self.private = True
        self.boot_delay = 0.2  # seconds between "running" and sshd starting: clients must wait
        self.calls: list[Call] = []
        self.alive: set[str] = set()
        self.peak = 0
        self.by_instance: dict[str, SshHost] = {}
        self.booted: dict[str, float] = {}  # instance id -> when its sshd began to answer
        self._faults = _Faults()
        self._lock = threading.Lock()
        self._boots: list[threading.Thread] = []
        self._seq = 0
        self._stopped = False
        self._spared: set[str] = set()  # stopped without killing the host (interrupt "stopped")
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        try:
            app = self._server._server.app  # type: ignore[union-attr]
            self._app: Callable[..., Iterable[bytes]] = app
            self._server._server.app = self._wsgi  # type: ignore[union-attr]
            host, port = self._server.get_host_and_port()
            self.endpoint = f"http://{host}:{port}"
            self._make_bridge()
            ec2 = self.client()
            vpc = ec2.create_vpc(CidrBlock=f"{SUBNET}.0/24")["Vpc"]["VpcId"]
            self.subnet_id = ec2.create_subnet(VpcId=vpc, CidrBlock=f"{SUBNET}.0/24")["Subnet"]["SubnetId"]
            self.security_group_id = ec2.create_security_group(
                GroupName=f"flowmake-{self.tag}", Description="flowmake tests", VpcId=vpc)["GroupId"]
            self.image_id = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
        except BaseException:
            self.stop()
            raise

    # -- what tests use ---------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """A flowmake subprocess's environment additions: the standard chain's variables only."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_DEFAULT_REGION": REGION, "AWS_CONFIG_FILE": "/nonexistent",
                "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_EC2_METADATA_DISABLED": "true"}

    def client(self) -> Any:
        import boto3

        return boto3.client("ec2", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name=REGION)

    @property
    def fs(self) -> Path:
        return self.hosts.fs

    def settings(self, **extra: object) -> dict[str, object]:
        """Ready ``[backends.spot]`` settings for this lab (fast timers for tests)."""
        return {
            "region": REGION, "endpoint_url": self.endpoint, "image_id": self.image_id,
            "subnet_id": self.subnet_id, "security_group_ids": [self.security_group_id],
            "ssh_user": getpass.getuser(), "identity_file": str(self.hosts.identity_file),
            "known_hosts": str(self.hosts.known_hosts), "remote_root": str(self.hosts.remote_root),
            "instance_types": ["t3.xlarge", "m5.xlarge", "c5.2xlarge"],
            "prices": {"t3.xlarge": 0.05, "m5.xlarge": 0.07, "c5.2xlarge": 0.12},
            "poll_interval": 0.3, "idle_timeout": 30, "max_instances": 4,
            **extra,
        }

    def refuse(self, instance_type: str | None = None, *, spot: bool = False,
               code: str | None = None) -> None:
        with self._lock:
            if instance_type:
                self._faults.types[instance_type] = code or "InsufficientInstanceCapacity"
            if spot:
                self._faults.spot = code or "SpotMaxPriceTooLow"

    def allow(self) -> None:
        with self._lock:
            self._faults = _Faults()

    def reset_peak(self) -> None:
        with self._lock:
            self.peak = len(self.alive)

    def launches(self) -> list[Call]:
        """The RunInstances calls that started an instance."""
        return [c for c in self.calls if c.action == "RunInstances" and c.status == 200]

    def instances(self, **filters: str) -> list[dict[str, Any]]:
        """``describe_instances`` as a flat list; ``filters`` are tag filters (``tag:K`` = V)."""
        f = [{"Name": k, "Values": [v]} for k, v in filters.items()]
        pages = self.client().get_paginator("describe_instances").paginate(Filters=f)
        return [i for page in pages for r in page["Reservations"] for i in r["Instances"]]

    def alive_instances(self, **filters: str) -> list[dict[str, Any]]:
        return [i for i in self.instances(**filters)
                if i["State"]["Name"] in ("pending", "running")]

    def interrupt(self, instance_id: str, how: str = "terminated") -> None:
        """``terminated``: a spot reclaim, the host dies with everything on it. ``stopped``: EC2
        says so while the host still answers (only EC2's state tells). ``unreachable``: the host
        dies while EC2 still says running (only the lost connection tells)."""
        if how == "terminated":
            self.client().terminate_instances(InstanceIds=[instance_id])
        elif how == "stopped":
            with self._lock:
                self._spared.add(instance_id)
            self.client().stop_instances(InstanceIds=[instance_id])
        elif how == "unreachable":
            self._shutdown(instance_id)
        else:
            raise ValueError(how)

    def processes(self, instance_id: str) -> list[str]:
        """Command lines of the processes running on an instance's host."""
        host = self.by_instance.get(instance_id)
        if host is None or host.netns is None:
            return []
        pids = subprocess.run(["ip", "netns", "pids", host.netns], capture_output=True,
                              text=True).stdout.split()
        out = []
        for pid in pids:
            try:
                out.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
            except OSError:
                pass
        return out

    def stop(self) -> None:
        self._stopped = True  # instances launched from now on never boot
        for t in list(self._boots):
            t.join(15)
        self.hosts.stop()
        _reap(self.tag)  # what a boot still under way when we stopped may have made
        try:
            self._server.stop()
        except Exception:  # never started: nothing to stop
            pass

    # -- the layer in front of moto ---------------------------------------------------------------

    def _wsgi(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        size = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(size) if size else b""
        environ["wsgi.input"] = io.BytesIO(body)
        params = dict(urllib.parse.parse_qsl(body.decode(errors="replace")))
        params.update(urllib.parse.parse_qsl(environ.get("QUERY_STRING", "")))
        action = params.get("Action", "")
        refused = self._refusal(action, params)
        if refused:
            with self._lock:
                self.calls.append(Call(action, params, 400))
            payload = ERROR_XML.format(code=refused, message=f"refused by the test: {refused}",
                                       rid=uuid.uuid4()).encode()
            start_response("400 Bad Request", [("Content-Type", "text/xml"),
                                               ("Content-Length", str(len(payload)))])
            return [payload]
        status: list[str] = []

        def capture(s: str, headers: list[Any], exc_info: Any = None) -> Any:
            status.append(s)
            return start_response(s, headers, exc_info) if exc_info else start_response(s, headers)

        out = b"".join(self._app(environ, capture))
        code = int(status[0].split()[0]) if status else 500
        ids: tuple[str, ...] = ()
        if code == 200 and action == "RunInstances":
            launched = _launched(out)
            ids = tuple(i for i, _ in launched)
            with self._lock:
                self.alive.update(ids)
                self.peak = max(self.peak, len(self.alive))
            for iid, address in launched:
                self._boot(iid, address)
        elif code == 200 and action in ("TerminateInstances", "StopInstances"):
            ids = tuple(v for k, v in params.items() if k.startswith("InstanceId."))
            with self._lock:
                self.alive.difference_update(ids)
                spared = set(self._spared) if action == "StopInstances" else set()
                self._spared.difference_update(ids)
            for iid in ids:
                if iid not in spared:
                    self._shutdown(iid)
        with self._lock:
            self.calls.append(Call(action, params, code, ids))
        return [out]

    def _refusal(self, action: str, params: dict[str, str]) -> str | None:
        if action != "RunInstances":
            return None
        with self._lock:
            by_type = self._faults.types.get(params.get("InstanceType", ""))
            spot = params.get("InstanceMarketOptions.MarketType") == "spot"
            return by_type or (self._faults.spot if spot else None)

    # -- hosts ------------------------------------------------------------------------------------

    def _make_bridge(self) -> None:
        bridge = f"fsbr{self.tag}"
        run(["ip", "link", "add", bridge, "type", "bridge"])
        self.hosts.bridge = bridge
        # Who owns it: a session killed before its teardown is recognised and cleaned up by the next.
        run(["ip", "link", "set", "dev", bridge, "alias", f"flowmake-ec2-lab pid={os.getpid()}"])
        run(["ip", "addr", "add", f"{SUBNET}.1/24", "dev", bridge])
        run(["ip", "link", "set", bridge, "up"])

    def _boot(self, instance_id: str, address: str) -> None:
        with self._lock:
            self._seq += 1
            n = self._seq
        host = SshHost(name=instance_id, address=address, port=22, user=getpass.getuser(),
                       private=self.private, netns=f"fs{self.tag}h{n}", veth=f"fsv{self.tag}{n}")
        self.hosts.hosts.append(host)
        self.by_instance[instance_id] = host

        def boot() -> None:
            time.sleep(self.boot_delay)
            if self._stopped:
                return
            ns, veth = host.netns or "", host.veth or ""
            try:
                run(["ip", "netns", "add", ns])
                run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns])
                run(["ip", "link", "set", veth, "master", self.hosts.bridge or "", "up"])
                run(["ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0"])
                run(["ip", "-n", ns, "link", "set", "eth0", "up"])
                run(["ip", "-n", ns, "link", "set", "lo", "up"])
                if instance_id in self.alive and not self._stopped:  # not ended while it booted
                    _start_sshd(self.hosts, host, self._bins["sshd"], listen=address,
                                fresh_login=True)
                    self.booted[instance_id] = time.time()  # its sshd answers from now on
            except ServiceUnavailable as exc:  # the client sees an instance that never answers
                logging.getLogger(__name__).warning("instance %s did not boot: %s", instance_id,
                                                    exc.reason)

        t = threading.Thread(target=boot, daemon=True, name=f"boot-{instance_id}")
        self._boots = [b for b in self._boots if b.is_alive()] + [t]
        t.start()

    def _shutdown(self, instance_id: str) -> None:
        host = self.by_instance.get(instance_id)
        if host is not None:
            self.hosts.kill(host.name)


def _reap_stale() -> None:
    """Remove the bridge, links and namespaces of a lab whose test session died (SIGKILL)."""
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    for m in re.finditer(r"^\d+: fsbr([0-9a-f]{6})[:@].*?alias flowmake-ec2-lab pid=(\d+)", links,
                         re.M):
        if not Path(f"/proc/{m.group(2)}").exists():
            _reap(m.group(1))


def _reap(tag: str) -> None:
    """Kill every host of lab ``tag`` and delete its namespaces, links and bridge."""
    for ns in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split():
        if ns.startswith(f"fs{tag}h"):
            for p in subprocess.run(["ip", "netns", "pids", ns], capture_output=True,
                                    text=True).stdout.split():
                try:
                    os.kill(int(p), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    for veth in re.findall(rf"^\d+: (fsv{tag}\d+)@", links, re.M):
        subprocess.run(["ip", "link", "del", veth], capture_output=True)
    subprocess.run(["ip", "link", "del", f"fsbr{tag}"], capture_output=True)


def start_ec2_lab(base: Path) -> Ec2Lab:
    return Ec2Lab(base)
