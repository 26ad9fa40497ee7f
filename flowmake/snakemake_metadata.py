"""What Snakemake recorded of the outputs it made (``.snakemake/metadata/``), for the planner's
adoption of a directory Snakemake built (``planner.Provenance``).

Snakemake keeps one JSON record per output, named by the urlsafe base64 of its path (split into
folders of at most NAME_MAX - 1 characters, all but the last prefixed with ``@``), and an empty
marker under ``.snakemake/incomplete/`` while a job writes it. A record holds the rule, its code
(the ``shell:`` text as written, or the ``run:`` source), the params' reprs, the sorted input
paths and the sha256 of every input under its size threshold (``input_checksums``). Fields are
trusted from the record format version where Snakemake itself trusts them: code from 3, inputs
from 4, params from 6. Nothing here writes: flowmake's own traces take over once it has run.
"""

from __future__ import annotations

import hashlib
import json
import os
from base64 import urlsafe_b64encode
from typing import Any

from flowmake.graph import Step
from flowmake.planner import Provenance, Reason, ReasonKind

ROOT = ".snakemake"


def record_path(folder: str, path: str, name_max: int = 255) -> str:
    """Snakemake's ``FilePersistence._record_path``."""
    b64 = urlsafe_b64encode(path.encode()).decode()
    parts = [b64[i:i + name_max - 1] for i in range(0, len(b64), name_max - 1)]
    return os.path.join(folder, *["@" + p for p in parts[:-1]], parts[-1])


class SnakemakeMetadata:
    """Read lazily, per output; absent folders cost one ``stat``."""

    def __init__(self, workdir: str) -> None:
        root = os.path.join(workdir, ROOT)
        self._metadata = os.path.join(root, "metadata")
        self._incomplete = os.path.join(root, "incomplete")
        self.present = os.path.isdir(self._metadata) or os.path.isdir(self._incomplete)
        self._records: dict[str, dict[str, Any] | None] = {}
        self._sha: dict[str, str | None] = {}

    def record(self, output: str) -> dict[str, Any] | None:
        if output not in self._records:
            self._records[output] = _read(record_path(self._metadata, output))
        return self._records[output]

    def incomplete(self, output: str) -> bool:
        return os.path.exists(record_path(self._incomplete, output))

    def sha256(self, path: str) -> str | None:
        if path not in self._sha:
            h = hashlib.sha256()
            try:
                with open(path, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        h.update(block)
            except OSError:
                self._sha[path] = None
            else:
                self._sha[path] = "sha256:" + h.hexdigest()
        return self._sha[path]

    def provenance(self, step: Step) -> Provenance | None:
        """How Snakemake's records of ``step``'s outputs compare with the step now; None when some
        output has no record of this rule (then only mtimes can say)."""
        inst = step.instance
        if inst is None or not step.outputs:
            return None
        left = [o for o in step.outputs if self.incomplete(o)]
        if left:
            return Provenance(tuple(Reason(ReasonKind.INCOMPLETE, path=o) for o in left))
        records = [self.record(o) for o in step.outputs]
        if any(r is None or r.get("rule") != step.rule.name for r in records):
            return None
        reasons: list[Reason] = []
        vouched: set[str] = set()
        inputs = list(inst.input)
        for rec in records:
            reasons += self._changes(step, rec, inputs)  # type: ignore[arg-type]  # None ruled out above
            sums = rec.get("input_checksums") or {}  # type: ignore[union-attr]
            for path in inputs:
                recorded = sums.get(path)
                if recorded is None:
                    continue
                now = self.sha256(path)
                if now is None:  # a deleted temp input: its producer's own record vouches for it
                    continue
                if now != (recorded if ":" in recorded else "sha256:" + recorded):
                    reasons.append(Reason(ReasonKind.INPUT_CHANGED, path=path))
                else:
                    vouched.add(path)
        unchecked = tuple(p for p in inputs if p not in vouched)
        return Provenance(tuple(dict.fromkeys(reasons)), unchecked)

    def _changes(self, step: Step, rec: dict[str, Any], inputs: list[str]) -> list[Reason]:
        version = rec.get("record_format_version") or 0
        rule = step.rule
        out: list[Reason] = []
        code = rec.get("code")
        if version >= 3 and code is not None and rule.shell is not None and code.split() != rule.shell.split():
            out.append(Reason(ReasonKind.COMMAND_CHANGED))
        recorded_inputs = rec.get("input")
        if version >= 4 and recorded_inputs is not None and sorted(recorded_inputs) != sorted(inputs):
            out.append(Reason(ReasonKind.INPUT_CHANGED))
        recorded_params = rec.get("params")
        if version >= 6 and recorded_params is not None and not set(_plain_params(step)) <= set(recorded_params):
            out.append(Reason(ReasonKind.PARAMS_CHANGED))
        return out


def _plain_params(step: Step) -> list[str]:
    """The reprs of params given as values (Snakemake records those; not what functions derive)."""
    inst, given = step.instance, step.rule._params
    if inst is None or not given:
        return []
    values = list(inst.params)
    return [repr(values[i]) for i, (_, raw) in enumerate(given) if not callable(raw) and i < len(values)]


def _read(path: str) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as f:
            rec = json.load(f)
    except (OSError, ValueError):  # absent, or half written by a running Snakemake: no record
        return None
    return rec if isinstance(rec, dict) else None
