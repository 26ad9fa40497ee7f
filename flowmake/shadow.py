"""``shadow:`` rules: the job runs in a throw-away directory, and only what it declares comes back.

``jobs.job_command`` wraps a shadow step's command into ``python -m flowmake.shadow JSON``, so every
backend runs it the same way. That process makes ``<root>/<unique>`` (``.flowmake/shadow`` or
``--shadow-prefix``'s ``shadow`` folder), fills it as Snakemake does, runs the command there (``bash
-c``; a ``run:``/``script:`` step's ``jobrun`` finds the folder in ``FLOWMAKE_SHADOW_DIR``), moves the
declared outputs and logs back into the workdir when the command succeeded (only the logs when it
failed) and removes the folder in every case. What else the job wrote never reaches the workdir.

- ``minimal``: symlinks to the inputs, and the folders of inputs, outputs and logs;
  ``copy-minimal``: copies of the inputs instead;
- ``shallow``: a symlink to every top-level entry of the workdir;
- ``full``: the workdir's folders recreated, a symlink to each of its files (not ``.flowmake``).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from typing import Any, Sequence

DEPTHS = ("minimal", "copy-minimal", "shallow", "full")
ENV = "FLOWMAKE_SHADOW_DIR"
_STATE = ".flowmake"


def root(prefix: str | None) -> str:
    """Where the shadow folders of a run go (Snakemake: ``.snakemake/shadow`` or PREFIX/shadow)."""
    return os.path.join(prefix, "shadow") if prefix else os.path.join(_STATE, "shadow")


def wrap(command: str, depth: str, *, inputs: Sequence[str], outputs: Sequence[str],
         logs: Sequence[str], prefix: str | None, python: str = sys.executable) -> str:
    payload = {"depth": depth, "root": root(prefix), "inputs": list(inputs), "outputs": list(outputs),
               "logs": list(logs), "command": command}
    return f"{shlex.quote(python)} -m flowmake.shadow {shlex.quote(json.dumps(payload))}"


def _inside(path: str) -> str | None:
    """The workdir-relative form of a path, or None when it is absolute or leaves the workdir."""
    if os.path.isabs(path):
        return None
    rel = os.path.normpath(path)
    return None if rel == ".." or rel.startswith("../") else rel


def populate(shadow: str, depth: str, inputs: Sequence[str], outputs: Sequence[str],
             logs: Sequence[str], keep: str) -> None:
    """Fill the shadow folder (cwd is the workdir); ``keep`` is the shadow root, never linked."""
    cwd = os.getcwd()
    if depth in ("minimal", "copy-minimal"):
        for path in {*inputs, *outputs, *logs}:
            rel = _inside(path)
            if rel is not None and os.path.dirname(rel):
                os.makedirs(os.path.join(shadow, os.path.dirname(rel)), exist_ok=True)
        for rel in {r for r in map(_inside, inputs) if r is not None}:
            target = os.path.join(shadow, rel)
            if os.path.lexists(target) or not os.path.lexists(rel):
                continue
            if depth == "copy-minimal":
                if os.path.isdir(rel):
                    shutil.copytree(rel, target, symlinks=False)
                else:
                    shutil.copy(rel, target)
            else:
                os.symlink(os.path.relpath(rel, os.path.dirname(target) or "."), target)
    elif depth == "shallow":
        for name in os.listdir(cwd):
            os.symlink(os.path.join(cwd, name), os.path.join(shadow, name))
    else:  # full
        skip = {os.path.join(cwd, _STATE), os.path.abspath(keep)}
        for dirpath, dirnames, filenames in os.walk(cwd, followlinks=True):
            dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) not in skip]
            rel_dir = os.path.relpath(dirpath, cwd)
            for d in dirnames:
                os.makedirs(os.path.join(shadow, rel_dir, d), exist_ok=True)
            for f in filenames:
                os.symlink(os.path.join(dirpath, f), os.path.join(shadow, rel_dir, f))


def unshadow(shadow: str, paths: Sequence[str]) -> None:
    """Move what the job made in the shadow folder to its place in the workdir."""
    for path in paths:
        rel = _inside(path)
        if rel is None:  # an absolute path was written where it is, not in the shadow folder
            continue
        made = os.path.join(shadow, rel)
        if not os.path.lexists(made):
            continue
        if os.path.islink(made):
            dest = os.readlink(made)
            if os.path.isabs(dest) and (dest + "/").startswith(shadow + "/"):
                # a link into the shadow folder must point at the same file in the workdir
                os.remove(made)
                os.symlink(os.path.relpath(dest, os.path.dirname(made)), made)
        if os.path.realpath(made) == os.path.realpath(rel):
            continue  # a link to the workdir's own file: shallow/full jobs that wrote through it
        os.makedirs(os.path.dirname(rel) or ".", exist_ok=True)
        if os.path.lexists(rel) and not os.path.isdir(rel):
            os.remove(rel)
        shutil.move(made, rel)


def _terminate(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m flowmake.shadow JSON", file=sys.stderr)
        return 2
    job = json.loads(argv[0])
    os.makedirs(job["root"], exist_ok=True)
    shadow = os.path.abspath(tempfile.mkdtemp(dir=job["root"]))
    signal.signal(signal.SIGTERM, _terminate)  # a cancelled job leaves no shadow folder behind
    rc = 1
    try:
        populate(shadow, job["depth"], job["inputs"], job["outputs"], job["logs"], job["root"])
        proc = subprocess.run(["bash", "-c", job["command"]], cwd=shadow,
                              env={**os.environ, ENV: shadow}, check=False)
        rc = proc.returncode if proc.returncode >= 0 else 128 - proc.returncode
        unshadow(shadow, [*job["outputs"], *job["logs"]] if rc == 0 else job["logs"])
    finally:
        shutil.rmtree(shadow, ignore_errors=True)
    return rc


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
