"""sshd "hosts" for the ssh backend tests: one on 127.0.0.1, or several in network namespaces.

Several hosts: a bridge in the root namespace (10.213.0.1/26) and, per host, a network namespace
with a veth into the bridge at 10.213.0.(10+i), its own hostname (``unshare -u``) and its own sshd
on port 22. The namespaces get no default route: nothing they run can leave the machine.

A *private* host also gets its own mount namespace in which ``fs`` (where the tests keep their
workdirs and where ``remote_root`` lives) is covered by an empty tmpfs: it sees none of the test's
files, so everything a job needs must be staged to it. Its sshd config, keys and authorized_keys
live in ``etc``, outside ``fs``, so it still reads them.

Every host gets a generated ed25519 host key; ``known_hosts`` lists exactly those keys, so clients
can verify instead of auto-accepting. ``kill(name)`` kills every process of a host (sshd, sessions,
jobs) as a dying machine would.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import os
import re
import shlex
import signal
import subprocess
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from . import (ServiceUnavailable, free_port, log_tail, require_binaries, require_root, run,
               stop_process, wait_until)

SUBNET = "10.213.0"


@dataclass
class SshHost:
    name: str  # the hostname the host reports (`hostname`)
    address: str
    port: int
    user: str
    private: bool
    netns: str | None
    veth: str | None = None  # root-namespace end of the host's link
    proc: subprocess.Popen | None = field(default=None, repr=False)
    log: Path | None = None

    @property
    def spec(self) -> str:
        """The ``user@host:port`` string the ssh backend's ``hosts`` setting takes."""
        return f"{self.user}@{self.address}:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        return self.address if self.port == 22 else f"[{self.address}]:{self.port}"


@dataclass
class SshHosts:
    base: Path
    hosts: list[SshHost]
    identity_file: Path
    known_hosts: Path
    host_keys: dict[str, Path]  # host name -> its private host key (the .pub is beside it)
    bridge: str | None = None

    @property
    def fs(self) -> Path:
        """Where tests put workdirs: shared with every host except the private ones."""
        return self.base / "fs"

    @property
    def remote_root(self) -> Path:
        return self.fs / "remote"

    def host(self, name: str) -> SshHost:
        return next(h for h in self.hosts if h.name == name)

    def settings(self, *names: str, **extra: object) -> dict:
        """``[backends.ssh]`` settings for the named hosts (all when none are named)."""
        chosen = [self.host(n) for n in names] if names else self.hosts
        return {
            "hosts": [h.spec for h in chosen],
            "identity_file": str(self.identity_file),
            "known_hosts": str(self.known_hosts),
            "remote_root": str(self.remote_root),
            **extra,
        }

    def kill(self, name: str) -> None:
        """Kill everything running on the host, as if it lost power; its connections drop."""
        host = self.host(name)
        if host.netns:
            pids = subprocess.run(["ip", "netns", "pids", host.netns], capture_output=True,
                                  text=True).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if host.proc is not None:
            try:
                os.killpg(host.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            host.proc.wait()

    def stop(self) -> None:
        for h in self.hosts:
            if h.netns:
                self.kill(h.name)
                # Deleting our end removes the pair now; left alone it would outlive the netns
                # for as long as the kernel keeps closing sockets (TIME_WAIT) in there.
                if h.veth:
                    subprocess.run(["ip", "link", "del", h.veth], capture_output=True)
                subprocess.run(["ip", "netns", "del", h.netns], capture_output=True)
            else:
                stop_process(h.proc)
        if self.bridge:
            subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)


def start_sshd_local(base: Path) -> SshHosts:
    """One sshd on 127.0.0.1 at a free high port, sharing this machine's filesystem."""
    require_root("sshd")
    bins = require_binaries("sshd", ["sshd", "ssh-keygen"])
    hosts = _prepare(base, bins)
    host = SshHost(name=os.uname().nodename, address="127.0.0.1", port=free_port(),
                   user=getpass.getuser(), private=False, netns=None)
    hosts.hosts.append(host)
    try:
        _start_sshd(hosts, host, bins["sshd"], listen="127.0.0.1")
    except BaseException:
        hosts.stop()
        raise
    return hosts


def start_ssh_hosts(base: Path, n: int = 3, private: tuple[int, ...] = (),
                    block: int | None = None) -> SshHosts:
    """``n`` hosts in network namespaces, named fmhost0..; indexes in ``private`` get a private fs.

    Each set of hosts takes one /26 of 10.213.0.0/24 (``block`` 0-3, by default the first one no
    other set on this machine uses): its bridge at .(64b+1), its hosts at .(64b+10+i). So several
    sets, from one test session or from concurrent ones, coexist.
    """
    if n > 50 or (block is not None and not 0 <= block <= 3):
        raise ValueError("block must be 0-3 and n at most 50")
    require_root("network namespaces")
    bins = require_binaries("ssh hosts", ["sshd", "ssh-keygen", "ip", "unshare", "mount"])
    hosts = _prepare(base, bins)
    tag = uuid.uuid4().hex[:6]
    hosts.bridge = f"fmbr{tag}"
    try:
        with _block_lock():  # choosing a block and taking its address must not interleave
            if block is None:
                block = _free_block()
            first = 64 * block
            run(["ip", "link", "add", hosts.bridge, "type", "bridge"])
            run(["ip", "addr", "add", f"{SUBNET}.{first + 1}/26", "dev", hosts.bridge])
        run(["ip", "link", "set", hosts.bridge, "up"])
        for i in range(n):
            ns = f"fm{tag}h{i}"
            veth = f"fmv{tag}{i}"
            run(["ip", "netns", "add", ns])
            run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns])
            run(["ip", "link", "set", veth, "master", hosts.bridge, "up"])
            run(["ip", "-n", ns, "addr", "add", f"{SUBNET}.{first + 10 + i}/26", "dev", "eth0"])
            run(["ip", "-n", ns, "link", "set", "eth0", "up"])
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
            host = SshHost(name=f"fmhost{i}", address=f"{SUBNET}.{first + 10 + i}", port=22,
                           user=getpass.getuser(), private=i in private, netns=ns, veth=veth)
            hosts.hosts.append(host)
            _start_sshd(hosts, host, bins["sshd"], listen=host.address)
    except ServiceUnavailable as exc:
        hosts.stop()
        if "ip link add" in exc.reason or "netns" in exc.reason:
            raise ServiceUnavailable(f"cannot create network namespaces: {exc.reason}") from None
        raise
    except BaseException:
        hosts.stop()
        raise
    return hosts


@contextlib.contextmanager
def _block_lock() -> Iterator[None]:
    with open(Path(tempfile.gettempdir()) / "flowmake-test-ssh-blocks.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _free_block() -> int:
    text = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True,
                          text=True).stdout
    used = {int(m) // 64 for m in re.findall(rf"inet {re.escape(SUBNET)}\.(\d+)/", text)}
    free = [b for b in range(4) if b not in used]
    if not free:
        raise ServiceUnavailable(f"all four /26 blocks of {SUBNET}.0/24 are in use here")
    return free[0]


def _prepare(base: Path, bins: dict[str, str]) -> SshHosts:
    etc = base / "etc"
    etc.mkdir(parents=True, exist_ok=True)
    (base / "fs" / "remote").mkdir(parents=True, exist_ok=True)
    identity = etc / "id_ed25519"
    if not identity.exists():
        run([bins["ssh-keygen"], "-q", "-t", "ed25519", "-N", "", "-C", "flowmake-test",
             "-f", str(identity)])
    (etc / "authorized_keys").write_text((etc / "id_ed25519.pub").read_text())
    return SshHosts(base=base, hosts=[], identity_file=identity, known_hosts=etc / "known_hosts",
                    host_keys={})


def _start_sshd(hosts: SshHosts, host: SshHost, sshd: str, listen: str,
                fresh_login: bool = False) -> None:
    """``fresh_login``: the host's logins read none of this machine's shell start-up files (as on
    a new machine), so a host killed mid-login cannot leave them a lock that stalls other logins."""
    etc = hosts.base / "etc"
    key = etc / f"host_{host.name}_ed25519"
    if not key.exists():
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)])
    hosts.host_keys[host.name] = key
    pub = " ".join(Path(f"{key}.pub").read_text().split()[:2])
    with open(hosts.known_hosts, "a") as f:
        f.write(f"{host.known_hosts_name} {pub}\n")
    conf = etc / f"sshd_{host.name}.conf"
    conf.write_text(
        f"ListenAddress {listen}\nPort {host.port}\nHostKey {key}\n"
        f"AuthorizedKeysFile {etc / 'authorized_keys'}\n"
        f"PidFile {etc / f'sshd_{host.name}.pid'}\n"
        "StrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\nSubsystem sftp internal-sftp\n"
        "MaxSessions 100\nMaxStartups 100:30:200\nLogLevel ERROR\n"
    )
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    cmd = [sshd, "-D", "-e", "-f", str(conf)]
    if host.netns:
        setup = [f"hostname {host.name}"]
        if host.private:
            # Cover the shared test tree: the host keeps only what is staged to it.
            fs = shlex.quote(str(hosts.fs))
            setup.append(f"mount -t tmpfs -o mode=0755 flowmake-private {fs}")
            setup.append(f"mkdir -p {shlex.quote(str(hosts.remote_root))}")
        home = os.path.expanduser(f"~{host.user}")
        for rc in (".bashrc", ".bash_profile", ".bash_login", ".profile") if fresh_login else ():
            if os.path.exists(os.path.join(home, rc)):
                setup.append(f"mount --bind /dev/null {shlex.quote(os.path.join(home, rc))}")
        script = " && ".join(setup) + " && exec " + shlex.join(cmd)
        private_mounts = host.private or fresh_login
        unshare = ["unshare", "-u"] + (["-m", "--propagation", "private"] if private_mounts else [])
        cmd = ["ip", "netns", "exec", host.netns, *unshare, "sh", "-c", script]
    host.log = etc / f"sshd_{host.name}.log"
    with open(host.log, "wb") as out:
        host.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)

    def listening() -> bool:
        if host.proc.poll() is not None:
            raise ServiceUnavailable(f"sshd for {host.name} exited{log_tail(host.log)}")
        import socket

        with socket.create_connection((host.address, host.port), timeout=0.5) as s:
            return s.recv(4).startswith(b"SSH-")

    wait_until(listening, 10, f"sshd {host.name}", host.log)
