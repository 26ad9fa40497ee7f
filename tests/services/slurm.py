"""A single-node SLURM (munged + slurmctld + slurmd) for the slurm backend tests.

Everything lives under a temp dir: munge key and socket, slurm.conf, state, spool, logs, pids.
Ports are free ones picked at start, so the cluster does not collide with a system SLURM. Client
commands find it through ``SLURM_CONF`` (``cluster.env()``; the fixture also exports it).

``start_slurm``: no slurmdbd, ``sacct`` is unavailable, and the controller remembers finished
jobs for ``MinJobAge`` (600 s), which is where ``squeue --states=all`` finds them.
``jobcomp/filetxt`` keeps a plain record of finished jobs in ``jobcomp.log`` for debugging.

``start_slurm_accounting``: the same cluster plus a private MariaDB (own datadir, 127.0.0.1 on a
free port) and slurmdbd, so ``sacct`` works; ``MinJobAge`` is short, so squeue forgets finished
jobs soon (the controller purges old jobs about once a minute).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import (ServiceUnavailable, free_port, log_tail, require_binaries, require_root, run,
               stop_process, wait_until)


@dataclass
class SlurmCluster:
    base: Path
    conf: Path
    node: str
    cpus: int
    procs: list[subprocess.Popen] = field(default_factory=list, repr=False)
    db_procs: list[subprocess.Popen] = field(default_factory=list, repr=False)

    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def settings(self, **extra: object) -> dict:
        """``[backends.slurm]`` settings for this cluster."""
        return {"slurm_conf": str(self.conf), "poll_interval": 0.2, **extra}

    def cmd(self, *args: str) -> str:
        proc = subprocess.run(list(args), capture_output=True, text=True, env=self.env())
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    def stop(self) -> None:
        if len(self.procs) == 3:
            # Drain first: a job step still running when slurmd stops is orphaned for good.
            subprocess.run(["scancel", "--user", str(os.getuid())], env=self.env(),
                           capture_output=True)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                left = subprocess.run(["squeue", "-h", "-o", "%i"], env=self.env(),
                                      capture_output=True, text=True)
                if left.returncode != 0 or not left.stdout.strip():
                    break
                time.sleep(0.2)
        for proc in reversed(self.procs):  # slurmd, slurmctld, then munged
            stop_process(proc, grace=10)
        for proc in reversed(self.db_procs):  # slurmdbd, then mariadbd
            stop_process(proc, grace=20)


def start_slurm(base: Path) -> SlurmCluster:
    return _start_slurm(base, accounting=False)


def start_slurm_accounting(base: Path) -> SlurmCluster:
    """A cluster whose finished jobs are recorded by slurmdbd (``sacct`` works)."""
    return _start_slurm(base, accounting=True)


def _start_slurm(base: Path, accounting: bool) -> SlurmCluster:
    require_root("slurmd")
    names = ["munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "sinfo",
             "scancel"]
    if accounting:
        names += ["mariadbd", "mariadb-install-db", "mariadb", "slurmdbd", "sacctmgr", "sacct"]
    bins = require_binaries("slurm accounting" if accounting else "slurm", names)
    base.mkdir(parents=True, exist_ok=True)
    for d in ("munge", "state", "spool", "log", "run", "db"):
        (base / d).mkdir(exist_ok=True)
    (base / "munge").chmod(0o755)  # munged refuses a socket dir others can write to
    node = socket.gethostname().split(".")[0]
    cpus = os.cpu_count() or 1
    with open("/proc/meminfo") as f:
        total_mib = int(f.readline().split()[1]) // 1024
    conf = base / "slurm.conf"
    munge_sock = base / "munge" / "munge.socket"
    cluster = SlurmCluster(base=base, conf=conf, node=node, cpus=cpus)
    try:
        _start_munge(cluster, bins, munge_sock)
        accounting_conf = ""
        if accounting:
            dbd_port = _start_accounting(cluster, bins, munge_sock)
            accounting_conf = (f"AccountingStorageType=accounting_storage/slurmdbd\n"
                               f"AccountingStorageHost=127.0.0.1\n"
                               f"AccountingStoragePort={dbd_port}\n"
                               f"AccountingStoragePass={munge_sock}\n")
        conf.write_text(_slurm_conf(base, node, cpus, total_mib, munge_sock, accounting_conf))
        env = cluster.env()
        for daemon in ("slurmctld", "slurmd"):
            log = base / "log" / f"{daemon}.out"
            with open(log, "wb") as out:
                # -i: a fresh controller ignores any state a crashed earlier one left behind.
                args = [bins[daemon], "-D", "-f", str(conf)]
                args += ["-i"] if daemon == "slurmctld" else []
                cluster.procs.append(subprocess.Popen(
                    args, env=env, stdout=out, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, start_new_session=True))
            if daemon == "slurmctld":
                wait_until(lambda: _alive(cluster) and cluster.cmd("scontrol", "ping").count("UP"),
                           20, "slurmctld", base / "log" / "slurmctld.log")

        def node_idle() -> bool:
            _alive(cluster)
            state = cluster.cmd("sinfo", "-h", "-n", node, "-o", "%t").strip()
            if state.startswith(("down", "drain")):
                cluster.cmd("scontrol", "update", f"nodename={node}", "state=resume")
            return state.startswith(("idle", "mix", "alloc"))

        wait_until(node_idle, 30, "slurmd", base / "log" / "slurmd.log")
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _alive(cluster: SlurmCluster) -> bool:
    for proc in cluster.db_procs + cluster.procs:
        if proc.poll() is not None:
            name = Path(proc.args[0]).name
            raise ServiceUnavailable(
                f"{name} exited with {proc.returncode}"
                f"{log_tail(cluster.base / 'log' / (name + '.log'))}"
                f"{log_tail(cluster.base / 'log' / (name + '.out'))}")
    return True


def _start_munge(cluster: SlurmCluster, bins: dict[str, str], sock: Path) -> None:
    key = cluster.base / "munge" / "munge.key"
    if not key.exists():
        run([bins["mungekey"], "-c", "-k", str(key)])
    key.chmod(0o400)
    log = cluster.base / "log" / "munged.log"
    cluster.procs.append(subprocess.Popen(
        [bins["munged"], "-F", "--force", f"--socket={sock}", f"--key-file={key}",
         f"--pid-file={cluster.base / 'run' / 'munged.pid'}", f"--log-file={log}",
         f"--seed-file={cluster.base / 'munge' / 'munged.seed'}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True))
    wait_until(lambda: _alive(cluster) and sock.exists(), 10, "munged", log)


def _high_port(*taken: int) -> int:
    port = free_port()
    while port < 16817 or port in taken:
        port = free_port()
    return port


def _start_accounting(cluster: SlurmCluster, bins: dict[str, str], munge_sock: Path) -> int:
    """Start a private mariadbd and slurmdbd; register the cluster. Returns slurmdbd's port."""
    base = cluster.base
    datadir, sock = base / "db" / "data", base / "db" / "mysqld.sock"
    if not datadir.exists():
        run([bins["mariadb-install-db"], f"--datadir={datadir}", "--user=root",
             "--auth-root-authentication-method=socket", "--skip-test-db"])
    db_port = _high_port()
    log = base / "log" / "mariadbd.log"
    with open(base / "log" / "mariadbd.out", "wb") as out:
        cluster.db_procs.append(subprocess.Popen(
            [bins["mariadbd"], "--no-defaults", f"--datadir={datadir}", "--user=root",
             f"--socket={sock}", "--bind-address=127.0.0.1", f"--port={db_port}",
             f"--pid-file={base / 'run' / 'mariadbd.pid'}", f"--log-error={log}",
             "--skip-name-resolve", "--innodb-buffer-pool-size=64M",
             "--innodb-log-file-size=16M", "--innodb-lock-wait-timeout=900"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True))
    client = [bins["mariadb"], "--no-defaults", "-uroot", f"--socket={sock}"]

    def db_up() -> bool:
        _alive(cluster)
        return subprocess.run(client + ["-e", "SELECT 1"], capture_output=True).returncode == 0

    wait_until(db_up, 30, "mariadbd", log)
    password = "flowmake-test"
    user = "'slurm'@'127.0.0.1'"
    run(client + ["-e", "CREATE DATABASE IF NOT EXISTS slurm_acct_db; "
                        f"CREATE USER IF NOT EXISTS {user} IDENTIFIED BY '{password}'; "
                        f"GRANT ALL ON slurm_acct_db.* TO {user};"])

    dbd_port = _high_port(db_port)
    dbd_conf = base / "slurmdbd.conf"
    dbd_conf.touch(mode=0o600)
    dbd_conf.chmod(0o600)  # slurmdbd refuses a config others can read (it holds a password)
    dbd_conf.write_text(f"""\
AuthType=auth/munge
AuthInfo=socket={munge_sock}
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort={dbd_port}
SlurmUser=root
PidFile={base / 'run' / 'slurmdbd.pid'}
LogFile={base / 'log' / 'slurmdbd.log'}
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={db_port}
StorageUser=slurm
StoragePass={password}
StorageLoc=slurm_acct_db
""")
    # slurmdbd reads slurmdbd.conf from beside slurm.conf; sacctmgr needs slurm.conf too, so a
    # minimal one pointing at slurmdbd is written first and replaced by the full one later.
    cluster.conf.write_text(f"ClusterName=flowmake-test\nSlurmctldHost={cluster.node}(127.0.0.1)\n"
                            f"AuthType=auth/munge\n"
                            f"AuthInfo=socket={munge_sock}\n"
                            f"AccountingStorageType=accounting_storage/slurmdbd\n"
                            f"AccountingStorageHost=127.0.0.1\nAccountingStoragePort={dbd_port}\n"
                            f"AccountingStoragePass={munge_sock}\n")
    with open(base / "log" / "slurmdbd.out", "wb") as out:
        cluster.db_procs.append(subprocess.Popen(
            [bins["slurmdbd"], "-D"], env=cluster.env(), stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True))

    def dbd_up() -> bool:
        _alive(cluster)
        proc = subprocess.run([bins["sacctmgr"], "-n", "-P", "list", "cluster"],
                              capture_output=True, text=True, env=cluster.env())
        return proc.returncode == 0

    wait_until(dbd_up, 30, "slurmdbd", base / "log" / "slurmdbd.log")
    listed = cluster.cmd("sacctmgr", "-n", "-P", "list", "cluster", "format=cluster")
    if "flowmake-test" not in listed.split():
        cluster.cmd("sacctmgr", "-i", "add", "cluster", "flowmake-test")
    return dbd_port


def _slurm_conf(base: Path, node: str, cpus: int, total_mib: int, munge_sock: Path,
                accounting_conf: str = "") -> str:
    ctld_port = _high_port()
    slurmd_port = _high_port(ctld_port)
    if accounting_conf:
        accounting_conf += "MinJobAge=5\n"  # squeue forgets finished jobs soon; sacct keeps them
    else:
        accounting_conf = "AccountingStorageType=accounting_storage/none\nMinJobAge=600\n"
    mem = max(1024, total_mib - 2048)  # headroom for the OS and the tests themselves
    return f"""\
ClusterName=flowmake-test
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_sock}
StateSaveLocation={base / 'state'}
SlurmdSpoolDir={base / 'spool'}
SlurmctldPidFile={base / 'run' / 'slurmctld.pid'}
SlurmdPidFile={base / 'run' / 'slurmd.pid'}
SlurmctldLogFile={base / 'log' / 'slurmctld.log'}
SlurmdLogFile={base / 'log' / 'slurmd.log'}
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
ReturnToService=2
SchedulerType=sched/builtin
SchedulerParameters=batch_sched_delay=0
MpiDefault=none
JobCompType=jobcomp/filetxt
JobCompLoc={base / 'log' / 'jobcomp.log'}
JobAcctGatherType=jobacct_gather/none
{accounting_conf.rstrip()}
InactiveLimit=0
KillWait=2
Waittime=0
MessageTimeout=10
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem} State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
"""


__all__ = ["SlurmCluster", "start_slurm", "start_slurm_accounting"]
