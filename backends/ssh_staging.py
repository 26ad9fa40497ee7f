"""Moving files to and from ssh hosts that do not share the filesystem (used by ``ssh.py``).

Inputs go into a per-host content-addressed area (``cas/<digest>``, sent once, read-only) and are
hard-linked into the job's directory. Outputs come back under a temporary name beside their final
place, are checked against a digest computed on the host, and only then renamed into place: a
half-transferred or corrupted output never appears under its real name.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shlex
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import blake3
import paramiko

CHUNK = 1 << 20

# Runs on the host: digests of the outputs (files, and every file under output directories).
MANIFEST_PY = r"""
import hashlib, json, os, sys
try:
    import blake3
    algo, new = "blake3", blake3.blake3
except ImportError:
    algo, new = "sha256", hashlib.sha256
def digest(path):
    h = new()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
files, dirs, missing = [], [], []
for out in sys.argv[1:]:
    if os.path.isdir(out):
        dirs.append(out)
        for root, subdirs, names in os.walk(out):
            dirs.extend(os.path.join(root, d) for d in subdirs)
            for n in names:
                p = os.path.join(root, n)
                files.append([p, os.stat(p).st_mode & 0o777, digest(p)])
    elif os.path.isfile(out):
        files.append([out, os.stat(out).st_mode & 0o777, digest(out)])
    else:
        missing.append(out)
print(json.dumps({"algo": algo, "files": files, "dirs": dirs, "missing": missing}))
"""


class TransferError(Exception):
    """An output did not arrive intact."""


def q(text: str) -> str:
    """Quote a remote path for the shell, leaving a leading ``~/`` for the shell to expand."""
    if text.startswith("~/"):
        return "~/" + shlex.quote(text[2:])
    return shlex.quote(text)


def sftp_path(text: str) -> str:
    # SFTP paths are relative to the login's home already; SFTP does not expand "~".
    return text[2:] if text.startswith("~/") else text


def run(client: paramiko.SSHClient, cmd: str, timeout: float, check: bool = False
        ) -> tuple[int, str, str]:
    """Run a short command on the host; (exit status, stdout, stderr)."""
    _, out, err = client.exec_command(cmd, timeout=max(timeout, 60))
    stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    code = out.channel.recv_exit_status()
    if check and code != 0:
        raise RuntimeError(f"remote command failed ({code}): {stderr.strip() or stdout.strip()}")
    return code, stdout, stderr


def file_digest(path: Path, new: Callable[[], Any] = blake3.blake3) -> str:
    h = new()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def expand_inputs(workdir: Path, inputs: tuple[tuple[str, str], ...]
                  ) -> list[tuple[str, str, Path]]:
    """(relative path, digest, local path) for every input file, directories walked.

    The scheduler's digest names a file in the CAS when it is a plain hex digest; directories
    (whose digest is a Merkle digest) and unknown digests are hashed here, file by file.
    """
    files: list[tuple[str, str, Path]] = []
    for rel, digest in inputs:
        local = workdir / rel
        if local.is_dir():
            for root, _dirs, names in os.walk(local):
                for n in sorted(names):
                    p = Path(root) / n
                    files.append((str(p.relative_to(workdir)), file_digest(p), p))
        else:
            d = digest.rpartition(":")[2].lower()
            if not re.fullmatch(r"[0-9a-f]{16,128}", d):
                d = file_digest(local)
            files.append((rel, d, local))
    return files


def ensure_cas(sftp: paramiko.SFTPClient, casdir: str, digest: str, local: Path) -> bool:
    """Make sure the host has ``casdir/digest``; True when it had to be sent."""
    target = f"{sftp_path(casdir)}/{digest}"
    try:
        sftp.stat(target)
        return False
    except FileNotFoundError:
        pass
    tmp = f"{target}.tmp-{uuid.uuid4().hex[:8]}"
    sftp.put(str(local), tmp, confirm=True)
    # Read-only: the CAS copy is hard-linked into job dirs and must not be edited through them.
    sftp.chmod(tmp, 0o444 | (0o111 if os.access(local, os.X_OK) else 0))
    sftp.posix_rename(tmp, target)
    return True


def link_commands(casdir: str, rundir: str, files: list[tuple[str, str, Path]],
                  outputs: list[str]) -> list[str]:
    """Commands that build the job dir: inputs linked from the CAS, output parents made."""
    parents = sorted(({os.path.dirname(rel) for rel, _, _ in files}
                      | {os.path.dirname(o) for o in outputs}) - {""})
    cmds = [f"mkdir -p {q(rundir)}", f"cd {q(rundir)}"]
    if parents:
        cmds.append("mkdir -p " + " ".join(shlex.quote(p) for p in parents))
    cas = q(casdir) if casdir.startswith(("/", "~/")) else '"$HOME"/' + shlex.quote(casdir)
    for rel, digest, _ in files:
        # A hard link is free; a copy only where links cannot be made (another filesystem).
        src, dst = f"{cas}/{digest}", shlex.quote(rel)
        cmds.append(f"{{ ln -f {src} {dst} 2>/dev/null || cp {src} {dst}; }}")
    return cmds


def manifest_command(python: str, outputs: list[str]) -> str:
    return (f"{shlex.quote(python)} -c {shlex.quote(MANIFEST_PY)} "
            + " ".join(shlex.quote(o) for o in outputs))


@dataclass
class Launch:
    """What one remote command does: clean up, build the job dir, run, digest the outputs."""

    rundir: str
    log: str
    stale: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    manifest: str = ""


@dataclass
class Result:
    code: int | None = None
    runtime: float | None = None
    timed_out: bool = False
    launched: bool = False
    manifest: dict[str, Any] | None = None
    message: str = ""


MARK = b"@@flowmake-manifest@@"
SETUP_FAILED = 254


# sshd runs the command as one argument of the login shell, and the job script is one argument of
# bash inside it: past 128 KiB (MAX_ARG_STRLEN) the host refuses them. A longer launch (a command
# over thousands of inputs, or that many inputs to link) is sent on the channel's stdin instead.
_SCRIPT_END = "FLOWMAKE_JOB_SCRIPT_END"  # "_" is not in base64's alphabet: no line of it matches


def launch_command(launch: Launch, script: str) -> str:
    """One bash script for the whole job; the login shell only has to start bash.

    Its stdout is the job's pgid on the first line, then (after MARK) the output manifest. The
    job runs under ``setsid -w``: in its own session (the pgid that cancel kills; this wrapper is
    outside it), and still waited for, so the wrapper sees its exit status. Setup steps are
    chained with && because errexit does not apply inside an ``||`` list.
    """
    inner = 'echo $$; exec bash -c "$1" flowmake-job >> "$2" 2>&1 < /dev/null'
    return "bash -c " + shlex.quote("\n".join(_launch_lines(launch, inner, shlex.quote(script))))


def launch_via_stdin(launch: Launch, script: str) -> tuple[str, bytes]:
    """``launch_command`` for a launch too long to be an argument: a short command, and the bytes
    to send on its stdin (the launch script, carrying the job script to write to a file).

    The host saves stdin to a temporary file and runs it; the script removes that file first (bash
    keeps reading what it opened) and the job's file when it exits.
    """
    encoded = base64.encodebytes(os.fsencode(script)).decode("ascii")
    lines = ['rm -f -- "$0"',
             f'job=$(mktemp "${{TMPDIR:-/tmp}}/flowmake-job.XXXXXX") || exit {SETUP_FAILED}',
             "trap 'rm -f -- \"$job\"' EXIT",
             f"base64 -d > \"$job\" <<'{_SCRIPT_END}' || exit {SETUP_FAILED}\n{encoded}{_SCRIPT_END}"]
    inner = 'echo $$; exec bash "$1" >> "$2" 2>&1 < /dev/null'
    lines += _launch_lines(launch, inner, '"$job"')
    command = (f'f=$(mktemp "${{TMPDIR:-/tmp}}/flowmake-launch.XXXXXX") || exit {SETUP_FAILED}; '
               f'cat > "$f" || {{ rm -f -- "$f"; exit {SETUP_FAILED}; }}; exec bash "$f"')
    return command, os.fsencode("\n".join(lines) + "\n")


def _launch_lines(launch: Launch, inner: str, job: str) -> list[str]:
    """The launch script; ``inner`` runs the job in its session, ``job`` is the word it gets."""
    lines = []
    if launch.stale:
        # Earlier jobs' dirs, removed in the background so this job does not wait for it.
        lines.append("(rm -rf " + " ".join(map(q, launch.stale)) + ") >/dev/null 2>&1 </dev/null &")
    setup = [*launch.links, f"cd {q(launch.rundir)}",
             f"mkdir -p {shlex.quote(os.path.dirname(launch.log) or '.')}"]
    lines.append(" &&\n".join(setup) + f" || exit {SETUP_FAILED}")
    lines.append(f"setsid -w bash -c {shlex.quote(inner)} flowmake {job} {shlex.quote(launch.log)}")
    lines.append("code=$?")
    if launch.manifest:
        lines.append(f'if [ "$code" = 0 ]; then echo {MARK.decode()}; {launch.manifest}; fi')
    lines.append('exit "$code"')
    return lines


def parse_pid(out: bytes | bytearray) -> int | None:
    line = bytes(out).split(b"\n", 1)[0].strip()
    return int(line) if line.isdigit() else None


def drain(chan: paramiko.Channel, out: bytearray, err: bytearray, timeout: float) -> None:
    """Read what is left on the channel after the exit status (up to EOF)."""
    chan.settimeout(timeout)
    try:
        while True:
            data = chan.recv(1 << 16)
            if not data:
                break
            out += data
        while chan.recv_stderr_ready():
            err += chan.recv_stderr(1 << 16)
    except OSError:  # socket.timeout included: keep what arrived
        pass


def interpret(result: Result, code: int | None, out: bytes, err: bytes) -> None:
    """Fill ``result`` from the launch command's exit status and output."""
    result.launched = parse_pid(out) is not None
    if not result.launched:
        result.code = code
        result.message = ("could not prepare the job on the host: "
                          + err.decode(errors="replace").strip()[-500:])
        return
    result.code = code
    if MARK in out:
        body = out.split(MARK, 1)[1]
        try:
            result.manifest = json.loads(body)
        except ValueError:
            result.message = ("cannot digest outputs on the host (needs python3): "
                              + err.decode(errors="replace").strip()[-500:])


def fetch_outputs(sftp: paramiko.SFTPClient, rundir: str, workdir: Path, outputs: list[str],
                  manifest: dict[str, Any]) -> int:
    """Fetch, verify and rename outputs into place; returns the number of files fetched."""
    new = blake3.blake3 if manifest["algo"] == "blake3" else hashlib.sha256
    tag = uuid.uuid4().hex[:8]
    staged: list[tuple[Path, Path]] = []  # (temporary, final) per top-level output
    count = 0
    try:
        for out in outputs:
            out = out.rstrip("/")
            final = workdir / out
            tmp = final.with_name(f".{final.name}.flowmake-{tag}")
            final.parent.mkdir(parents=True, exist_ok=True)
            staged.append((tmp, final))
            if out in manifest["dirs"]:
                tmp.mkdir()
                for d in manifest["dirs"]:
                    if d.startswith(out + "/"):
                        (tmp / d[len(out) + 1:]).mkdir(parents=True, exist_ok=True)
            for rel, mode, digest in manifest["files"]:
                if rel == out:
                    dest = tmp
                elif rel.startswith(out + "/"):
                    dest = tmp / rel[len(out) + 1:]
                else:
                    continue
                _get_verified(sftp, f"{sftp_path(rundir)}/{rel}", dest, digest, new)
                dest.chmod(mode)
                count += 1
        for tmp, final in staged:
            _replace(tmp, final)
        staged.clear()
    finally:
        for tmp, _ in staged:  # anything not renamed into place is garbage now
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
    return count


def _get_verified(sftp: paramiko.SFTPClient, remote: str, dest: Path, digest: str,
                  new: Callable[[], Any]) -> None:
    h = new()
    with sftp.open(remote, "rb") as src, open(dest, "wb") as dst:
        src.prefetch()
        for block in iter(lambda: src.read(CHUNK), b""):
            h.update(block)
            dst.write(block)
    if h.hexdigest() != digest:
        raise TransferError(f"{remote}: digest mismatch after transfer "
                            f"(host {digest[:16]}, here {h.hexdigest()[:16]})")


def _replace(tmp: Path, final: Path) -> None:
    if final.is_dir() and not final.is_symlink():
        # A directory cannot be replaced atomically: move the old one aside first.
        old = final.with_name(f".{final.name}.flowmake-old-{uuid.uuid4().hex[:8]}")
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def fetch_log(sftp: paramiko.SFTPClient, rundir: str, log: str, workdir: Path) -> None:
    """Bring the job's log home (whatever the outcome); a missing log is not an error."""
    dest = workdir / log
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        src = sftp.open(f"{sftp_path(rundir)}/{log}", "rb")
    except FileNotFoundError:
        return
    # Appended, as the local backend does: a retry's log follows the failed attempt's.
    with src, open(dest, "ab") as dst:
        src.prefetch()
        for block in iter(lambda: src.read(CHUNK), b""):
            dst.write(block)
