"""Absent ``temp()`` outputs in a plan: which stand in as if present, and with what digest.

Snakemake deletes a temp output once its consumers are done, so its absence alone is no reason to
rerun its producer. One with a trace stands in with the digest it was recorded with; one without
(Snakemake made it, or a run that recorded nothing) stands in with ``ABSENT_TEMP`` when what its
consumers made vouches for it. ``planner.plan`` uses these, then remakes any such output that a
consumer which runs anyway needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flowmake.graph import Step
from flowmake.namedlist import Flag

if TYPE_CHECKING:
    from flowmake.planner import Facts

# The digest of an untraced stand-in: no file has it, so a consumer keyed with it reruns once the
# temp output is really remade.
ABSENT_TEMP = "absent-temp"


def absent_temps(steps: list[Step], facts: Facts) -> tuple[dict[str, str], set[str]]:
    """Absent temp outputs that stand in: those with a trace (its digest), and untraced ones
    whose consumers were made from them (``ABSENT_TEMP``; see ``untraced_stand_ins``)."""
    virtual: dict[str, str] = {}
    untraced: list[tuple[Step, str]] = []
    for step in steps:
        if not step.rule.may_flag or step.pending:  # most steps flag nothing
            continue
        inst = step.instance
        if inst is None or not inst.flags:
            continue
        for out in step.outputs:
            if Flag.TEMP in inst.flags.get(out, ()) and not facts.incomplete(out) and facts.digest(out) is None:
                head = facts.trace_head(out)
                if head is not None:
                    virtual[out] = head[1]
                else:
                    untraced.append((step, out))
    stand_ins = untraced_stand_ins(steps, untraced, facts) if untraced else set()
    virtual.update(dict.fromkeys(stand_ins, ABSENT_TEMP))
    return virtual, stand_ins


def untraced_stand_ins(steps: list[Step], untraced: list[tuple[Step, str]], facts: Facts) -> set[str]:
    """A deleted temp output no trace records (Snakemake built it, then removed it) is as good as
    there when every step that reads it has its outputs, made after the producer's inputs (or, where
    Snakemake's metadata vouches for the producer, after the inputs it does not vouch for). Then the
    producer is adopted instead of run; ``_remake_needed_temps`` still remakes it for a consumer
    that runs anyway."""
    wanted = {out for _, out in untraced}
    consumers: dict[str, list[Step]] = {}
    for step in steps:
        inst = step.instance
        if inst is not None:
            for path in inst.input:
                if path in wanted:
                    consumers.setdefault(path, []).append(step)
    # Consumers first: in a chain of temps, the one downstream stands in through the outputs
    # that vouched for it (its ``vouchers``), and those vouch for the one upstream too.
    vouchers: dict[str, list[str]] = {}
    for producer, out in reversed(untraced):
        readers = consumers.get(out, [])
        if not readers or any(not r.outputs for r in readers):
            continue
        made = _made_from(readers, vouchers, facts)
        if not made:
            continue
        prov = facts.provenance(producer)
        if prov is not None and prov.reasons:
            continue
        inst = producer.instance
        checked = prov.unchecked if prov is not None else (list(inst.input) if inst is not None else [])
        if not checked or facts.newer_than(made, checked):
            vouchers[out] = made
    return set(vouchers)


def _made_from(readers: list[Step], vouchers: dict[str, list[str]], facts: Facts) -> list[str] | None:
    """The files on disk that what ``readers`` made stands for; None if one of them is missing."""
    made: list[str] = []
    for reader in readers:
        for out in reader.outputs:
            if out in vouchers:
                made.extend(vouchers[out])
            elif facts.digest(out) is None:
                return None
            else:
                made.append(out)
    return made
