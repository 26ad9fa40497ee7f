"""A private Docker engine for the tests: its own dockerd, socket and data root, no networking.

dockerd runs with bridge none / iptables false / ip-forward false / ip-masq false, so it creates no
bridge, no NAT rules and does not turn on forwarding; every container must use ``--network none``.
No registry is reachable, so images are built locally with ``docker import``:

- ``busybox_image``: /bin/busybox and its applet links plus a static bash (≈4 MB, <1 s).
  Enough for shell rules; ``run:``/``script:`` rules need python inside the container.
- ``python_image()``: Debian minbase + python3 via debootstrap (30-80 s, built once per engine,
  on first use; ``FLOWMAKE_TEST_IMAGE_CACHE=DIR`` keeps its rootfs tarball across sessions).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from . import (ServiceUnavailable, log_tail, require_binaries, require_root, run, stop_process,
               wait_until)

BUSYBOX_IMAGE = "flowmake-test/busybox:1"
PYTHON_IMAGE = "flowmake-test/python:1"


@dataclass
class DockerEngine:
    root: Path
    socket: Path
    proc: subprocess.Popen
    busybox_image: str = BUSYBOX_IMAGE
    _python_image: str | None = field(default=None, repr=False)

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    def env(self) -> dict[str, str]:
        """The environment for docker CLI calls against this engine."""
        return {**os.environ, "DOCKER_HOST": self.host}

    def docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(["docker", *args], capture_output=True, text=True, env=self.env())
        if check and proc.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args)}: {proc.stderr.strip()}")
        return proc

    def inspect(self, name: str) -> dict:
        return json.loads(self.docker("inspect", name).stdout)[0]

    def python_image(self) -> str:
        """A Debian image with python3; built on first call (debootstrap, ≈30 s), then cached."""
        if self._python_image is None:
            self._python_image = _build_python_image(self)
        return self._python_image

    def stop(self) -> None:
        # Containers first so dockerd exits quickly and leaves no shims behind.
        ids = self.docker("ps", "-aq", check=False).stdout.split()
        if ids:
            self.docker("rm", "-f", *ids, check=False)
        stop_process(self.proc, grace=15)
        # Mounts dockerd left (overlay layers, netns files) would make the temp dir undeletable.
        for line in reversed(Path("/proc/mounts").read_text().splitlines()):
            target = line.split()[1]
            if target.startswith(str(self.root)):
                subprocess.run(["umount", "-l", target], capture_output=True)


def start_docker(base: Path) -> DockerEngine:
    """Start dockerd with all state under ``base``; ServiceUnavailable when it cannot run."""
    require_root("dockerd")
    require_binaries("docker", ["dockerd", "docker", "containerd", "runc"])
    base.mkdir(parents=True, exist_ok=True)
    sock = base / "docker.sock"
    if len(str(base / "exec" / "containerd" / "containerd.sock.ttrpc")) > 100:
        raise ServiceUnavailable(f"temp dir {base} too long for unix sockets")
    config = {
        "bridge": "none",
        "iptables": False,
        "ip6tables": False,
        "ip-forward": False,
        "ip-masq": False,
        "data-root": str(base / "data"),
        "exec-root": str(base / "exec"),
        "pidfile": str(base / "docker.pid"),
        "hosts": [f"unix://{sock}"],
        "storage-driver": "overlay2",
    }
    (base / "daemon.json").write_text(json.dumps(config, indent=1))
    log = base / "dockerd.log"
    with open(log, "wb") as out:
        # Own process group: a Ctrl-C in the test run must not kill dockerd before we clean up.
        proc = subprocess.Popen(
            ["dockerd", "--config-file", str(base / "daemon.json")],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    engine = DockerEngine(root=base, socket=sock, proc=proc)

    def ready() -> bool:
        if proc.poll() is not None:
            raise ServiceUnavailable(f"dockerd exited with {proc.returncode}{log_tail(log)}")
        return engine.docker("version", check=False).returncode == 0

    try:
        wait_until(ready, 30, "dockerd", log)
        _build_busybox_image(engine, base / "busybox-rootfs.tar")
    except BaseException:
        engine.stop()
        raise
    return engine


def _build_busybox_image(engine: DockerEngine, tar_path: Path) -> None:
    bins = require_binaries("busybox image", ["busybox"])
    busybox = bins["busybox"]
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True).stdout.split()
    # Built as a tar stream directly: no rootfs tree with root-owned files left behind.
    with tarfile.open(tar_path, "w") as tar:
        for d in ("bin", "tmp", "etc", "proc", "sys", "dev", "work"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755
            tar.addfile(info)
        tar.add(busybox, "bin/busybox")
        bash = shutil.which("bash-static") or "/bin/bash-static"
        if os.path.exists(bash):
            tar.add(bash, "bin/bash")
        for applet in applets:
            if applet in ("busybox", "bash"):
                continue
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type, info.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(info)
        passwd = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n"
        info = tarfile.TarInfo("etc/passwd")
        info.size = len(passwd)
        tar.addfile(info, io.BytesIO(passwd))
    run(["docker", "import", "--change", "ENV PATH=/bin", str(tar_path), engine.busybox_image],
        env=engine.env())


def _build_python_image(engine: DockerEngine) -> str:
    # FLOWMAKE_TEST_IMAGE_CACHE=DIR keeps the rootfs tarball across sessions (a developer's
    # machine); without it the image is built from the Debian mirror once per engine.
    cache_dir = os.environ.get("FLOWMAKE_TEST_IMAGE_CACHE")
    cached = Path(cache_dir) / "python-bookworm-rootfs.tar" if cache_dir else None
    if cached is not None and cached.exists():
        run(["docker", "import", str(cached), PYTHON_IMAGE], env=engine.env())
        return PYTHON_IMAGE
    bins = require_binaries("python image", ["debootstrap"])
    rootfs = engine.root / "python-rootfs"
    if not (rootfs / "usr" / "bin" / "python3").exists():
        shutil.rmtree(rootfs, ignore_errors=True)
        run([bins["debootstrap"], "--variant=minbase", "--include=python3-minimal",
             "bookworm", str(rootfs), _debian_mirror()], timeout=600)
    tar_path = cached or engine.root / "python-rootfs.tar"
    tar_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tar_path.with_name(tar_path.name + ".part")
    run(["tar", "-C", str(rootfs), "-cf", str(tmp), "."])
    tmp.rename(tar_path)
    shutil.rmtree(rootfs, ignore_errors=True)
    run(["docker", "import", str(tar_path), PYTHON_IMAGE], env=engine.env())
    return PYTHON_IMAGE


def _debian_mirror() -> str:
    """The Debian mirror apt uses here (debootstrap should fetch from the same place)."""
    sources = [Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")]
    for path in sources:
        try:
            text = path.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            words = line.split()
            if words[:1] == ["URIs:"] and len(words) > 1:
                return words[1]
            if words[:1] == ["deb"]:
                urls = [w for w in words[1:] if "://" in w]
                if urls:
                    return urls[0]
    return "http://deb.debian.org/debian"
