"""``notebook:``: a Jupyter notebook run as a step, with the ``snakemake`` object defined in it.

As Snakemake does, a first code cell (tagged ``snakemake-job-properties``, replacing one left
from an earlier run) defines ``snakemake`` and moves into the working directory; the notebook
then runs with ``jupyter-nbconvert --execute``, in the kernel the notebook names. The executed
notebook is kept where ``log: notebook="..."`` says, else thrown away. The rule file's notebook
itself is never modified.

The kernel may be another Python than flowmake's, so the cell imports nothing of flowmake: the
step's values arrive as JSON and a few lines rebuild the named lists (values JSON cannot carry,
such as objects in ``params``, arrive as their ``repr``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from typing import Any

from flowmake.envs import NBCONVERT, missing_jupyter
from flowmake.errors import FlowfileError
from flowmake.namedlist import NamedList, Wildcards
from flowmake.rules import Instance

TAG = "snakemake-job-properties"

# Runs in the kernel: no flowmake import. A name covers an item or a range, as in NamedList.
_CELL = '''\
# flowmake: this job's `snakemake` object (this cell is inserted for each run)
import json as _json, os as _os
class _Named(list):
    def __init__(self, data):
        super().__init__(data["items"])
        for _k, (_a, _b, _one) in data["names"].items():
            setattr(self, _k, self[_a] if _one else list(self[_a:_b]))
    def __getitem__(self, key):
        return getattr(self, key) if isinstance(key, str) else super().__getitem__(key)
class _Snakemake:
    def __init__(self, data):
        for _k in ("input", "output", "params", "wildcards", "log", "resources"):
            setattr(self, _k, _Named(data[_k]))
        for _k in ("threads", "config", "rule", "attempt", "scriptdir"):
            setattr(self, _k, data[_k])
snakemake = _Snakemake(_json.loads(%r))
_os.chdir(%r)
'''


def _plain(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)


def _named(nl: NamedList) -> dict[str, Any]:
    names: dict[str, tuple[int, int]] = getattr(nl, "_names", {})
    single: frozenset[str] = getattr(nl, "_single", frozenset())
    return {"items": [_plain(os.fspath(v) if isinstance(v, os.PathLike) else v) for v in nl],
            "names": {k: [a, b, k in single] for k, (a, b) in names.items()}}


def preamble(inst: Instance, workdir: str) -> str:
    """The source of the cell that defines ``snakemake`` for this step."""
    data = {
        "input": _named(inst.input), "output": _named(inst.output), "params": _named(inst.params),
        # Wildcards as spelt in the paths, as commands see them (a date wildcard is no JSON).
        "wildcards": _named(Wildcards.from_mapping(inst.bindings._raw)), "log": _named(inst.log),
        "resources": _named(inst.resources), "threads": inst.threads,
        "config": _plain(inst.rule.workflow.config), "rule": inst.rule.name,
        "attempt": inst.attempt,
        "scriptdir": os.path.dirname(os.path.abspath(inst.rule.script_path())),
    }
    return _CELL % (json.dumps(data), workdir)


def with_preamble(notebook: dict[str, Any], source: str) -> dict[str, Any]:
    cells = [c for c in notebook.get("cells", []) if TAG not in c.get("metadata", {}).get("tags", [])]
    cell: dict[str, Any] = {"cell_type": "code", "execution_count": None,
                            "metadata": {"tags": [TAG]}, "outputs": [], "source": source}
    if (notebook.get("nbformat"), notebook.get("nbformat_minor", 0)) >= (4, 5):
        cell["id"] = "flowmake-preamble"  # nbformat 4.5 wants cell ids
    return {**notebook, "cells": [cell, *cells]}


def run_notebook(inst: Instance) -> None:
    """Execute the rule's notebook for this step (FlowmakeError for the user's mistakes)."""
    rule = inst.rule
    path = rule.script_path()
    if not path.endswith(".ipynb"):
        raise FlowfileError(f"notebook '{rule.notebook}': expected a Jupyter notebook (.ipynb)",
                            location=rule.location, rule=rule.name)
    try:
        with open(path, encoding="utf-8") as f:
            notebook = json.load(f)
    except OSError as e:
        raise FlowfileError(f"cannot read notebook '{path}': {e.strerror}", location=rule.location,
                            rule=rule.name) from None
    except ValueError as e:
        raise FlowfileError(f"notebook '{rule.notebook}' is not valid JSON: {e}",
                            location=rule.location, rule=rule.name) from None
    nbconvert = shutil.which(NBCONVERT)
    if nbconvert is None:
        raise missing_jupyter(rule)
    keep = inst.log.get("notebook") if inst.log.has_name("notebook") else None
    with tempfile.TemporaryDirectory(prefix="flowmake-nb-") as tmp:
        staged = os.path.join(tmp, os.path.basename(path))
        with open(staged, "w", encoding="utf-8") as f:
            json.dump(with_preamble(notebook, preamble(inst, os.getcwd())), f, indent=1)
        out = os.path.abspath(keep) if keep else os.path.join(tmp, "executed.ipynb")
        argv = [nbconvert, "--log-level", "ERROR", "--execute", "--to", "notebook",
                "--ExecutePreprocessor.timeout=-1", "--output", out, staged]
        # IPYTHONDIR in the temporary folder, as Snakemake does: no profile of the user's leaks in.
        env = {**os.environ, "IPYTHONDIR": tmp}
        if subprocess.run(argv, env=env).returncode != 0:
            raise FlowfileError(f"notebook '{rule.notebook}' failed", location=rule.location,
                                rule=rule.name, details=["command: " + " ".join(argv)])

