"""The spot backend: jobs run on EC2 (spot) instances it starts, reuses and always ends.

An instance is an ssh host (``ssh.SshBackend`` runs every job: staging by digest, verified host
keys, the digest-checked atomic return of outputs, LOST on a lost connection); this module only
decides which instances exist. For a job that fits no running instance it launches the cheapest
allowed type that fits its ``threads`` and ``mem_mb`` (types from ``describe_instance_types``,
prices from ``prices`` or the spot price history, under ``max_price``), tagged with the workflow
and the run. Jobs are packed onto instances up to their vCPUs and memory, busiest first, so spare
instances fall idle and end after ``idle_timeout``. A manager thread asks EC2 for the run's
instances every ``poll_interval``: one terminated or stopped under a job (a spot reclaim), or one
that stopped answering SSH, makes its jobs LOST (rerun elsewhere, no retry spent; nothing it wrote
is taken back, as outputs return only whole and verified). A capacity refusal benches that type and
market for ``capacity_backoff`` seconds and the next one is tried; ``on_demand_fallback`` lets
on-demand follow when every spot choice is refused.

On close (a finished run, an error, Ctrl-C) every instance is terminated, or with ``keep_warm``
tagged warm for the next run, which adopts it until its idle timeout. Each run holds a lock file
``.flowmake/spot/<run>.lock``; a run that died (SIGKILL) leaves tagged instances whose lock is
free, and the next run (or ``flowmake spot cleanup``) terminates them; a run that needs no
instance asks EC2 only when such a lock file is left.

Credentials come only from boto3's standard chain; none are logged or sent to instances.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import threading
import time
import uuid
from typing import Any

import paramiko

from flowmake.backend import JobEvent, JobHandle, JobSpec, JobState
from flowmake.errors import BackendError, did_you_mean

from . import spot_ec2
from .spot_ec2 import (ALIVE, CAPACITY_CODES, EXTRA, SETTINGS, TAG_RUN, TAG_WARM, Ec2, Kind,
                       boot_error, hold_lock, lock_path, note, number, owner, seconds,
                       stale_locks, tags, workflow_tag)
from .ssh import SshBackend, SshHandle, SshHost


class Instance(SshHost):
    def __init__(self, iid: str, kind: Kind, market: str, user: str, shared_fs: bool) -> None:
        super().__init__(f"{user}@0.0.0.0:22", kind.vcpus, shared_fs)
        self.id, self.kind, self.market = iid, kind, market
        self.label = f"{iid}/{kind.name}"
        self.price = kind.cost(market)
        self.ready = False  # running and reachable over SSH
        self.started = self.idle_since = time.time()
        self.ended: float | None = None
        self.cpu = self.mem = 0  # held by its running jobs
        self.reported: list[str] = []  # host key lines from the console output
        self.adopted = False  # kept warm by an earlier run

    def fits(self, need: tuple[int, int]) -> bool:
        return self.cpu + need[0] <= self.kind.vcpus and self.mem + need[1] <= self.kind.mem_mb


def _need(spec: JobSpec) -> tuple[int, int]:
    return max(1, int(spec.resources.threads)), int(spec.resources.mem_mb or 0)


class SpotBackend(SshBackend):
    name = "spot"
    command = staticmethod(spot_ec2.command)  # flowmake spot list|cleanup

    def __init__(self, *, settings: dict, cores: int) -> None:
        self.settings: dict[str, Any] = dict(settings)
        unknown = [k for k in self.settings if k not in SETTINGS + EXTRA]
        if unknown:
            raise BackendError(f"unknown setting {unknown[0]!r} in [backends.spot]",
                               hint=did_you_mean(unknown[0], SETTINGS + EXTRA))
        if not (self.settings.get("image_id") or self.settings.get("launch_template")):
            raise BackendError("the spot backend needs an image",
                               hint="set image_id or launch_template in [backends.spot]")
        known = self.settings.get("known_hosts")
        self._setup(str(known) if known else None)
        self.hosts: list[SshHost] = []
        get = self.settings.get
        self.idle_timeout = seconds(get("idle_timeout", 600), "idle_timeout")
        self.poll_interval = seconds(get("poll_interval", 5), "poll_interval")
        self.boot_timeout = seconds(get("boot_timeout", 600), "boot_timeout")
        self.backoff = seconds(get("capacity_backoff", 300), "capacity_backoff")
        self.max_instances = int(get("max_instances", 8))
        self.max_pending = int(get("max_pending", 4))
        self.max_cost = number(get("max_hourly_cost"))
        self.max_price = number(get("max_price"))
        self.user = str(get("ssh_user", "ec2-user"))
        self.workdir = os.getcwd()  # the CLI enters the workdir before it loads a backend
        self.workflow = workflow_tag(self.workdir)
        self.run = uuid.uuid4().hex[:12]
        self.kinds: list[Kind] = []
        self.benched: dict[tuple[str, str], tuple[float, str]] = {}
        self._ec2: Ec2 | None = None
        self._lockfd: int | None = None
        self._fatal: BackendError | None = None
        self._stopping = False
        self._wake = threading.Event()
        self._manager: threading.Thread | None = None

    # -- Backend protocol -------------------------------------------------------------------------

    def capacity(self) -> int:
        self._start()
        return self.max_instances * max(k.vcpus for k in self.kinds)

    def submit(self, spec: JobSpec) -> JobHandle:
        if spec.local:
            raise BackendError(f"localrule {spec.rule!r} sent to the spot backend", rule=spec.rule,
                               hint="this is a bug: localrules belong to the local backend")
        self._start()
        if self._fatal is not None:
            raise self._fatal
        need = _need(spec)
        if not any(k.vcpus >= need[0] and k.mem_mb >= need[1] for k in self._eligible()):
            raise BackendError(
                f"no instance type fits rule {spec.rule!r}: {need[0]} threads, {need[1]} MB",
                rule=spec.rule, details=[f"{k.name}: {k.vcpus} vCPUs, {k.mem_mb} MB, "
                                         f"${k.price}/h" for k in self.kinds],
                hint="allow a larger type in instance_types (or raise max_price, max_hourly_cost)")
        handle = SshHandle(spec)
        with self._lock:
            self._seq += 1
            handle.native_id = f"spot-{self._seq}"
            self._pending.append(handle)
            self._dispatch()
        return handle

    def poll(self, timeout: float) -> list[JobEvent]:
        if self._fatal is not None:  # a host key that did not verify, a wrong image: stop
            raise self._fatal
        return super().poll(timeout)

    def close(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._manager is not None:
            self._manager.join(30)
        super().close()  # cancels what is queued or running, closes the connections
        if self._ec2 is None:
            # A run that needed no instance asks EC2 only when a killed run left its lock file.
            if stale_locks(self.workdir):
                try:
                    self._ec2 = Ec2(self.settings)
                    self._sweep(adopt=False)
                except BackendError as exc:
                    note(f"could not look for instances a killed run left: "
                         f"{str(exc).splitlines()[0]}; see `flowmake spot list`")
        else:
            self._end_all()
        if self._lockfd is not None:
            os.close(self._lockfd)
            lock_path(self.workdir, self.run).unlink(missing_ok=True)

    def _end_all(self) -> None:
        """Terminate this run's instances, or with keep_warm tag the usable ones for the next."""
        alive = [i for i in self._instances() if i.ended is None]
        warm = [i for i in alive if i.ready and not i.down] if self.settings.get("keep_warm") else []
        try:
            if warm:
                now = str(int(time.time()))
                self.ec2.call("create_tags", Resources=[i.id for i in warm],
                              Tags=[{"Key": TAG_WARM, "Value": now}, {"Key": TAG_RUN, "Value": ""}])
            self._terminate([i for i in alive if i not in warm], "the run ended")
        except BackendError as exc:  # close runs on the way out of errors too: say it, not raise
            note(f"could not end instances {', '.join(i.id for i in alive)}: "
                 f"{str(exc).splitlines()[0]}; run `flowmake spot cleanup` to end them")

    def summary_note(self) -> str:
        """Instance-hours and estimated cost, for the run's summary line ("" if none ran)."""
        used = self._instances()
        if not used:
            return self.plane_note()
        now = time.time()
        hours = sum(((i.ended or now) - i.started) / 3600 for i in used)
        cost = sum(((i.ended or now) - i.started) / 3600 * i.price for i in used)
        return ", ".join(filter(None, [f"{len(used)} instance{'s' if len(used) != 1 else ''}, "
                                       f"{hours:.3f} instance-hours, about ${cost:.4f}", self.plane_note()]))

    # -- placing jobs -----------------------------------------------------------------------------

    @property
    def ec2(self) -> Ec2:
        if self._ec2 is None:
            raise BackendError("the spot backend used EC2 before it started",
                               hint="this is a bug; please report it")
        return self._ec2

    def _instances(self) -> list[Instance]:
        return [h for h in self.hosts if isinstance(h, Instance)]

    def _dispatch(self) -> None:
        """Start pending jobs on ready instances that fit them, busiest first (lock held)."""
        if self._fatal is not None:
            return  # poll() raises it: the run stops with the error and its hint
        for handle in list(self._pending):
            need = _need(handle.spec)
            fit = [i for i in self._instances()
                   if i.ready and not i.down and i.ended is None and i.fits(need)]
            if fit:
                self._pending.remove(handle)
                self._start_job(handle, min(fit, key=lambda i: i.kind.vcpus - i.cpu))
        self._wake.set()

    def _start_job(self, handle: SshHandle, host: SshHost) -> None:
        if isinstance(host, Instance):
            need = _need(handle.spec)
            host.cpu, host.mem = host.cpu + need[0], host.mem + need[1]
        super()._start_job(handle, host)

    def _job_ended(self, handle: SshHandle, host: SshHost, event: JobEvent) -> JobEvent:
        if not isinstance(host, Instance):
            return event
        need = _need(handle.spec)
        host.cpu, host.mem = host.cpu - need[0], host.mem - need[1]
        if host.running == 0:
            host.idle_since = time.time()
        # The history's host: the instance and the job's share of it (its runtime times this
        # fraction is the instance time it used).
        return dataclasses.replace(event, host=f"{host.label} {need[0]}/{host.kind.vcpus} vCPUs")

    # -- starting ---------------------------------------------------------------------------------

    def _start(self) -> None:
        with self._lock:
            if self._ec2 is not None:
                return
            self._ec2 = Ec2(self.settings)
            try:
                self.kinds = self.ec2.kinds()
                # Held while this run lives: the next run knows a killed one by its free lock.
                self._lockfd = hold_lock(self.workdir, self.run)
                self._sweep()
            except BaseException:
                self._ec2 = None
                raise
            self._manager = threading.Thread(target=self._manage, daemon=True, name="spot-manager")
            self._manager.start()

    def _eligible(self) -> list[Kind]:
        """The types a job may get: under max_price, and alone under max_hourly_cost."""
        return [k for k in self.kinds
                if (self.max_price is None or k.price is None or k.price <= self.max_price)
                and (self.max_cost is None or k.price is None or k.price <= self.max_cost)]

    # -- what a killed run left -------------------------------------------------------------------

    def _sweep(self, adopt: bool = True) -> None:
        """Terminate the instances of runs that died; adopt this workflow's warm ones."""
        ec2, stale = self.ec2, stale_locks(self.workdir)
        found = [i for i in ec2.tagged(workflow=self.workflow) if i["State"]["Name"] in ALIVE]
        dead = [i["InstanceId"] for i in found if owner(i, self.workdir, self.workflow) == "dead"]
        if dead:
            note(f"terminating {len(dead)} instance(s) a killed run left: " + ", ".join(dead))
            ec2.terminate(dead)
        for path in stale:  # those runs' instances are gone now
            path.unlink(missing_ok=True)
        kinds = {k.name: k for k in self.kinds}
        for inst in found:
            if owner(inst, self.workdir, self.workflow) != "warm" or not adopt:
                continue
            kind, since = kinds.get(inst["InstanceType"]), float(tags(inst)[TAG_WARM])
            if kind is None or time.time() - since > self.idle_timeout:
                ec2.terminate([inst["InstanceId"]])
                continue
            ec2.call("create_tags", Resources=[inst["InstanceId"]],
                     Tags=[{"Key": TAG_RUN, "Value": self.run}])
            ec2.call("delete_tags", Resources=[inst["InstanceId"]], Tags=[{"Key": TAG_WARM}])
            market = "spot" if inst.get("InstanceLifecycle") == "spot" else "on-demand"
            adopted = self._add(inst["InstanceId"], kind, market)
            adopted.idle_since, adopted.adopted = since, True
            self._boot_later(adopted)

    # -- the manager: EC2's view, idle instances, launches ----------------------------------------

    def _manage(self) -> None:
        last = 0.0
        while not self._stopping:
            self._wake.wait(self.poll_interval)
            self._wake.clear()
            if self._stopping:
                return
            try:
                if time.monotonic() - last >= self.poll_interval:
                    last = time.monotonic()
                    self._refresh()
                self._end_idle()
                self._launch_for_pending()
            except BackendError as exc:  # EC2 unreachable for a moment: try again next time
                note(f"warning: {str(exc).splitlines()[0]}")
            except Exception as exc:  # a bug here must not leave the run waiting forever
                self._fatal = BackendError(f"spot backend: internal error: {exc!r}",
                                           hint="this is a bug; please report it")

    def _refresh(self) -> None:
        mine = {i.id: i for i in self._instances() if i.ended is None}
        if not mine:
            return
        seen = {i["InstanceId"]: i["State"]["Name"] for i in self.ec2.tagged(run=self.run)}
        for iid, inst in mine.items():
            # Not listed yet right after launch (EC2 is eventually consistent); gone once used.
            state = seen.get(iid, "gone" if inst.ready else "pending")
            if state in ALIVE:
                if inst.down and inst.ready:  # answers EC2 but not SSH: we stop paying for it
                    self._terminate([inst], f"unreachable ({inst.down})")
                continue
            if inst.running:
                note(f"{inst.label} is {state}: its jobs are rerun elsewhere")
            self._mark_down(inst, f"instance {inst.id} is {state}")
            if state in ("stopping", "stopped"):  # of no more use, and its disk costs
                self._terminate([inst], state)
            inst.ended = inst.ended or time.time()

    def _end_idle(self) -> None:
        now = time.time()
        with self._lock:
            idle = [i for i in self._instances() if i.ready and i.ended is None and not i.running
                    and now - i.idle_since >= self.idle_timeout]
        self._terminate(idle, "idle")

    def _terminate(self, insts: list[Instance], why: str) -> None:
        if not insts:
            return
        with self._lock:
            for i in insts:
                i.ended = i.ended or time.time()
                self._mark_down(i, f"{i.label} terminated: {why}")
        self.ec2.terminate([i.id for i in insts])

    def _launch_for_pending(self) -> None:
        if self._fatal is not None:  # the run is stopping with it: nothing new
            return
        with self._lock:
            needs = [_need(h.spec) for h in self._pending]
            alive = [i for i in self._instances() if i.ended is None]
            free = [[i.kind.vcpus - i.cpu, i.kind.mem_mb - i.mem] for i in alive if not i.ready]
        plan: list[tuple[int, int]] = []  # the jobs that get a new instance each
        for need in needs:
            slot = next((f for f in free if f[0] >= need[0] and f[1] >= need[1]), None)
            if slot is None:
                kind = self._choice(need)
                if kind is None:
                    continue
                plan.append(need)
                slot = [kind[0].vcpus, kind[0].mem_mb]
                free.append(slot)
            slot[0] -= need[0]
            slot[1] -= need[1]
        booting = sum(1 for i in alive if not i.ready)
        for need in plan:
            if len(alive) >= self.max_instances or booting >= self.max_pending:
                self._make_room(need, alive)
                return
            inst = self._launch(need, alive)
            if inst is None:
                return
            alive.append(inst)
            booting += 1
        self._fail_unplaceable()

    def _choice(self, need: tuple[int, int]) -> tuple[Kind, str] | None:
        """The cheapest (type, market) that fits ``need`` and is not benched: spot first."""
        now = time.time()
        markets = ["spot"] + (["on-demand"] if self.settings.get("on_demand_fallback") else [])
        for market in markets:
            for k in self._eligible():
                if k.vcpus >= need[0] and k.mem_mb >= need[1] and \
                        self.benched.get((k.name, market), (0.0, ""))[0] <= now:
                    return k, market
        return None

    def _launch(self, need: tuple[int, int], alive: list[Instance]) -> Instance | None:
        while (choice := self._choice(need)) is not None:
            kind, market = choice
            price = kind.cost(market)
            if self.max_cost is not None and sum(i.price for i in alive) + price > self.max_cost:
                return None
            try:
                reply = self.ec2.call("run_instances", **self.ec2.launch_args(
                    kind, market, self.workflow, self.run, os.path.basename(self.workdir)))
            except BackendError as exc:
                code = Ec2.code(exc)
                if code is None:
                    raise  # EC2 unreachable for now: the manager tries again
                if code not in CAPACITY_CODES:  # a wrong image, subnet, permission: poll raises it
                    self._fatal = exc
                    return None
                self.benched[(kind.name, market)] = (time.time() + self.backoff, code)
                note(f"{kind.name} ({market}) refused: {code}; trying the next choice")
                continue
            inst = self._add(reply["Instances"][0]["InstanceId"], kind, market)
            self._boot_later(inst)
            return inst
        return None

    def _add(self, iid: str, kind: Kind, market: str) -> Instance:
        inst = Instance(iid, kind, market, self.user, bool(self.settings.get("shared_fs", False)))
        with self._lock:
            self.hosts.append(inst)
        return inst

    def _make_room(self, need: tuple[int, int], alive: list[Instance]) -> None:
        """At max_instances with a job no instance fits: end the longest-idle one."""
        with self._lock:
            idle = [i for i in alive if i.ready and not i.running and not i.fits(need)]
        if idle and len(alive) >= self.max_instances:
            self._terminate([min(idle, key=lambda i: i.idle_since)], "making room")

    def _fail_unplaceable(self) -> None:
        """Jobs no allowed choice can take now and nothing alive could run: FAILED, with why."""
        with self._lock:
            alive = [i for i in self._instances() if i.ended is None]
            for handle in list(self._pending):
                need = _need(handle.spec)
                if self._choice(need) is None and not any(
                        i.kind.vcpus >= need[0] and i.kind.mem_mb >= need[1] for i in alive):
                    self._pending.remove(handle)
                    why = "; ".join(f"{t} ({m}): {c}" for (t, m), (_, c) in self.benched.items())
                    self._events.put(JobEvent(handle, JobState.FAILED, message=(
                        f"no instance could be launched ({why}); set on_demand_fallback = true "
                        "or allow more instance_types")))

    # -- bringing an instance up ------------------------------------------------------------------

    def _boot_later(self, inst: Instance) -> None:
        t = threading.Thread(target=self._boot, args=(inst,), daemon=True, name=f"boot-{inst.id}")
        t.start()

    def _boot(self, inst: Instance) -> None:
        """Wait until the instance runs and answers SSH with a verified key; then use it."""
        deadline = time.time() + self.boot_timeout
        while not self._stopping and inst.ended is None:
            try:
                if self._reachable(inst):
                    errors: list[BackendError] = []
                    inst.down = None
                    self._connect(inst, errors)
                    if errors:  # a key that does not verify: never used, never retried
                        self._fatal = errors[0]
                        self._terminate([inst], "its host key did not verify")
                        return
                    if inst.client is not None:
                        with self._lock:  # an adopted instance's idle time goes on
                            inst.ready = True
                            inst.idle_since = inst.idle_since if inst.adopted else time.time()
                            self._dispatch()
                        return
            except BackendError:
                pass  # EC2 or the network hiccuped: ask again
            if time.time() > deadline:  # launching more would fail alike, and cost money
                self._fatal = boot_error(inst.id, inst.address, self.boot_timeout,
                                         no_keys=self.known_hosts is None and not inst.reported)
                self._terminate([inst], f"not reachable over SSH after {self.boot_timeout:.0f} s")
                return
            time.sleep(min(1.0, self.poll_interval))

    def _reachable(self, inst: Instance) -> bool:
        if inst.address == "0.0.0.0":  # not running yet when it had no address
            ip = self.ec2.address(inst.id, public=bool(self.settings.get("use_public_ip")))
            if not ip:
                return False
            inst.address, inst.spec = ip, f"{self.user}@{ip}:22"
        if self.known_hosts is None and not inst.reported:
            inst.reported = self.ec2.console_keys(inst.id, inst.address)
            if not inst.reported:
                return False
        try:
            with socket.create_connection((inst.address, inst.port), timeout=2) as s:
                s.settimeout(2)
                return s.recv(4) == b"SSH-"
        except OSError:
            return False

    @property
    def _key_source(self) -> str:
        return (f"known_hosts file {self.known_hosts}" if self.known_hosts
                else "the host keys the instance reported on its console")

    def _load_host_keys(self, client: paramiko.SSHClient, host: SshHost) -> BackendError | None:
        if self.known_hosts is not None or not isinstance(host, Instance):
            return super()._load_host_keys(client, host)
        for line in host.reported:
            entry = paramiko.hostkeys.HostKeyEntry.from_line(line)
            if entry is not None:
                client.get_host_keys().add(host.address, entry.key.get_name(), entry.key)
        return None
