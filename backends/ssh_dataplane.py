"""Hosts that move a step's data to and from an S3 cache themselves (used by ``ssh.py``, ``spot.py``).

With an S3 cache configured, the submitting machine need not relay every byte: it hands a host
presigned URLs (``cache_plane.DataPlane``: one object, one method, an hour; credentials stay here).

- Inputs: before a job, each input file the host's CAS lacks and the cache holds is fetched by the
  host from the bucket, into a temporary name in its CAS, and renamed into ``cas/<digest>`` only
  when its BLAKE3 digest matches. Everything else (no such blob, a failed download or check, a
  host whose python3 lacks blake3) is sent by SFTP from here, as without a cache.
- Outputs: after a job whose outputs the cache will take (``JobSpec.cache_outputs``), the host
  uploads each output blob the cache lacks, hashing it as it sends; a blob that did not hash to its
  name is removed again. The outputs still come back by SFTP (the scheduler needs them for traces),
  and the scheduler's publish then finds the blobs present and writes only the manifest: the
  manifest is always written here, after the outputs were checked, never by a host.

One remote command per job and direction; the URLs go on its stdin (no argument length limit).
Any failure of the plane leaves the transfer to the submitter: it can make a run slower, never
wrong.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Any

import paramiko

from flowmake.backend import JobSpec
from flowmake.digest import DIGEST_BYTES

from . import ssh_staging as staging

_HEX = 2 * DIGEST_BYTES

# Runs on the host: stdin is [[digest, url, mode], ...]; fetches each into the CAS, checked.
FETCH_PY = r"""
import json, os, sys, urllib.request
try:
    import blake3
except ImportError:
    print(json.dumps("no blake3")); sys.exit(0)
cas, done = sys.argv[1], {}
for d, url, mode in json.load(sys.stdin):
    target = os.path.join(cas, d)
    if os.path.exists(target):
        done[d] = 0
        continue
    tmp = "%s.tmp-%s" % (target, os.urandom(4).hex())
    try:
        h, n = blake3.blake3(), 0
        with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
            for block in iter(lambda: r.read(1 << 20), b""):
                h.update(block); f.write(block); n += len(block)
        ok = h.hexdigest()[:len(d)] == d
        if ok:
            os.chmod(tmp, mode)
            os.rename(tmp, target)
        done[d] = n if ok else -2
    except Exception:
        done[d] = -1
    if done[d] < 0:
        try:
            os.unlink(tmp)
        except OSError:
            pass
print(json.dumps(done))
"""

# Runs on the host in the job's dir: stdin is [[path, digest, url], ...]; uploads each, hashed.
PUT_PY = r"""
import json, os, sys, urllib.request
import blake3
class Hashing:
    def __init__(self, f):
        self.f, self.h = f, blake3.blake3()
    def read(self, n=-1):
        data = self.f.read(n)
        self.h.update(data)
        return data
done = {}
for path, d, url in json.load(sys.stdin):
    try:
        with open(path, "rb") as f:
            body = Hashing(f)
            size = os.fstat(f.fileno()).st_size
            req = urllib.request.Request(url, data=body, method="PUT", headers={
                "Content-Length": str(size), "Content-Type": "application/octet-stream"})
            urllib.request.urlopen(req, timeout=300).close()
        done[d] = size if body.h.hexdigest()[:len(d)] == d else -2
    except Exception:
        done[d] = -1
print(json.dumps(done))
"""


class DataPlaneUse:
    """What ``SshBackend`` adds for a data plane; without one, staging is exactly as before."""

    data_plane: Any = None
    # Observable counters: bytes the hosts fetched from the cache and uploaded to it.
    host_fetches = 0
    host_fetch_bytes = 0
    host_puts = 0
    host_put_bytes = 0

    def use_data_plane(self, plane: Any) -> None:
        """``plane``: a ``cache_plane.DataPlane``; an execution detail, given by whoever runs the steps."""
        self.data_plane = plane

    def _plane_fetch(self: Any, host: Any, files: list[tuple[str, str, Path]]
                     ) -> list[tuple[str, str, Path]]:
        """Have ``host`` fetch from the cache what of ``files`` its CAS lacks; the files, unchanged
        (those now in its CAS are in ``host.cas_known``, so SFTP skips them)."""
        if self.data_plane is None or host.shared_fs or getattr(host, "no_plane", False):
            return files
        try:
            self._plane_get(host, files)
        except Exception:  # e.g. the bucket's server went away: SFTP sends them instead
            pass
        return files

    def _plane_get(self: Any, host: Any, files: list[tuple[str, str, Path]]) -> None:
        plane = self.data_plane
        jobs, seen = [], set()
        for _rel, digest, local in files:
            if digest in host.cas_known or digest in seen or len(digest) < _HEX:
                continue
            seen.add(digest)
            url = plane.get_url(digest[:_HEX])
            if url is not None:
                jobs.append([digest, url, 0o444 | (0o111 if os.access(local, os.X_OK) else 0)])
        if not jobs:
            return
        casdir = f"{self.remote_root}/cas"
        cas = staging.q(casdir) if casdir.startswith(("/", "~/")) else shlex.quote(casdir)
        done = _run_json(host, f"{shlex.quote(self.python)} -c {shlex.quote(FETCH_PY)} {cas}",
                         jobs, self.timeout)
        if done == "no blake3":  # it cannot check a digest: this host never fetches by itself
            host.no_plane = True
        if not isinstance(done, dict):  # the command failed: SFTP sends them
            return
        for digest, n in done.items():
            if n == -2:  # damaged in the bucket (or sent wrong): checked here, removed when it is
                plane.drop_if_damaged(digest[:_HEX])
        with self._lock:
            for digest, n in done.items():
                if isinstance(n, int) and n >= 0:
                    host.cas_known.add(digest)
                    if n > 0:
                        self.host_fetches += 1
                        self.host_fetch_bytes += n

    def _fetch_outputs(self: Any, host: Any, sftp: paramiko.SFTPClient, spec: JobSpec, rundir: str,
                       outputs: list[str], manifest: dict[str, Any]) -> int:
        """Outputs home by SFTP (``staging.fetch_outputs``), after the host uploaded the blobs the
        cache will want and lacks."""
        plane = self.data_plane
        if (plane is not None and spec.cache_outputs and plane.writable and manifest.get("algo") == "blake3"
                and not getattr(host, "no_plane", False)):
            try:
                self._plane_put(host, rundir, manifest)
            except Exception:  # e.g. the bucket's server went away: the publish sends them instead
                pass
        return staging.fetch_outputs(sftp, rundir, Path(spec.workdir), outputs, manifest)

    def _plane_put(self: Any, host: Any, rundir: str, manifest: dict[str, Any]) -> None:
        plane = self.data_plane
        jobs, seen = [], set()
        for rel, _mode, digest in manifest["files"]:
            d = str(digest)[:_HEX]
            if d in seen or len(d) < _HEX or plane.has_blob(d):
                continue
            seen.add(d)
            jobs.append([rel, d, plane.put_url(d)])
        if not jobs:
            return
        cmd = f"cd {staging.q(rundir)} && {shlex.quote(self.python)} -c {shlex.quote(PUT_PY)}"
        done = _run_json(host, cmd, jobs, self.timeout) or {}
        for d, n in done.items():
            if n == -2:  # the file changed while it was sent: that blob would lie about its name
                plane.remove_blob(d)
            elif isinstance(n, int) and n >= 0:
                with self._lock:
                    self.host_puts += 1
                    self.host_put_bytes += n

    def summary_note(self: Any) -> str:  # the spot backend's says more, and this too
        return self.plane_note()

    def plane_note(self: Any) -> str:
        """What the hosts moved themselves, beside what was sent from here, for the run's summary
        ("" when they moved nothing)."""
        if not (self.host_fetches or self.host_puts):
            return ""
        from flowmake.cache import human_bytes

        return (f"hosts fetched {human_bytes(self.host_fetch_bytes)} from the cache and uploaded "
                f"{human_bytes(self.host_put_bytes)} to it, {human_bytes(self.upload_bytes)} sent from here")


def _run_json(host: Any, cmd: str, stdin: Any, timeout: float) -> Any:
    """Run ``cmd`` on ``host`` with ``stdin`` as JSON; its stdout's JSON, or None when it failed.
    A failure here is never the job's: the submitter moves the data instead."""
    if host.client is None:
        return None
    try:
        chan_in, out, _err = host.client.exec_command(cmd, timeout=max(timeout, 600))
        chan_in.write(json.dumps(stdin).encode())
        chan_in.channel.shutdown_write()
        data = out.read()
        if out.channel.recv_exit_status() != 0:
            return None
        return json.loads(data)
    except (paramiko.SSHException, OSError, EOFError, ValueError):
        return None
