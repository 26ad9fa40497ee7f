"""Which step writes which path, as the graph resolves them: conflicts are errors.

Two steps that would write one file conflict (the first used to win silently), and so does a file
inside another step's ``directory()`` output (Snakemake's ChildIOException), unless that step is a
checkpoint. Resolution records
every step's outputs here through ``claim``, in the order it finishes resolving them.
"""

from __future__ import annotations

import posixpath
from typing import Any, MutableMapping

from flowmake.errors import AmbiguousRuleError
from flowmake.namedlist import Flag


def claim(producer: MutableMapping[str, Any], step: Any, out: str,
          step_type: Any) -> AmbiguousRuleError | None:
    """Record ``step`` as the producer of ``out`` unless one is known; the conflict, if any.
    ``step_type`` is the graph's Step (values of ``producer`` may also be None or failures)."""
    other = producer.setdefault(out, step)
    if isinstance(other, step_type) and other is not step:
        return AmbiguousRuleError(
            f"two steps would write {out!r}: " + " and ".join(
                f"rule {s.rule.name!r} (for {s.outputs[0]!r})" for s in (other, step)),
            location=step.rule.location)
    parent = posixpath.dirname(out)
    while parent:
        up = producer.get(parent)
        # Not a checkpoint's directory: what later steps find among its files is looked at
        # after it ran (Snakemake, too, checks only the graph it starts with).
        if isinstance(up, step_type) and up is not step and up.instance is not None \
                and not up.rule.is_checkpoint and Flag.DIRECTORY in up.instance.flags.get(parent, ()):
            return AmbiguousRuleError(
                f"{out!r} of rule {step.rule.name!r} is inside {parent!r}, the directory() output "
                f"of rule {up.rule.name!r}", location=step.rule.location)
        parent = posixpath.dirname(parent)
    return None
