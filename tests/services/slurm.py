"""A single-node SLURM (munged + slurmctld + slurmd) for the slurm backend tests.

Everything lives under a temp dir: munge key and socket, slurm.conf, state, spool, logs, pids.
Ports are free ones picked at start, so the cluster does not collide with a system SLURM. Client
commands find it through ``SLURM_CONF`` (``cluster.env()``; the fixture also exports it).

No slurmdbd: ``sacct`` is unavailable, and the controller remembers finished jobs for
``MinJobAge`` (600 s), which is where ``squeue --states=all`` finds them. ``jobcomp/filetxt``
keeps a plain record of finished jobs in ``jobcomp.log`` for debugging.
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


def start_slurm(base: Path) -> SlurmCluster:
    require_root("slurmd")
    bins = require_binaries("slurm", ["munged", "mungekey", "slurmctld", "slurmd", "sbatch",
                                      "squeue", "scontrol", "sinfo", "scancel"])
    base.mkdir(parents=True, exist_ok=True)
    for d in ("munge", "state", "spool", "log", "run"):
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
        conf.write_text(_slurm_conf(base, node, cpus, total_mib, munge_sock))
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
    for proc in cluster.procs:
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


def _slurm_conf(base: Path, node: str, cpus: int, total_mib: int, munge_sock: Path) -> str:
    ctld_port, slurmd_port = free_port(), free_port()
    while ctld_port < 16817 or slurmd_port < 16817 or ctld_port == slurmd_port:
        ctld_port, slurmd_port = free_port(), free_port()
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
MinJobAge=600
ReturnToService=2
SchedulerType=sched/builtin
SchedulerParameters=batch_sched_delay=0
MpiDefault=none
JobCompType=jobcomp/filetxt
JobCompLoc={base / 'log' / 'jobcomp.log'}
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
InactiveLimit=0
KillWait=2
Waittime=0
MessageTimeout=10
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem} State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
"""


__all__ = ["SlurmCluster", "start_slurm"]
