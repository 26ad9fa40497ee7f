"""The step key: the one place that lists everything a step's result depends on.

``key_values`` lists every field; ``key_of_values`` hashes them into the key the planner
compares and the cache is addressed by; ``digests_of`` digests each field separately so
``explain``/``--why`` can name what changed (``diff_fields``). Threads, memory and other resources are deliberately not fields: they change
how a step runs, not what it produces. Paths must already be relative to the workdir (a moved
checkout keeps its keys). Digests are 32 hex characters, like file digests (see ``digest``).

``canonical`` renders params deterministically; callers pass its result as ``params``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import re
from pathlib import PurePath
from typing import Any, Callable, Mapping, Sequence

import blake3

from flowmake.digest import DIGEST_BYTES

# Bump when the meaning of any field or of its encoding changes: every step then reruns once.
KEY_VERSION = 1
FIELDS = ("version", "rule", "action", "params", "env", "image", "inputs")

_quote: Callable[[str], str] = json.encoder.encode_basestring
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _h(text: str) -> str:
    return blake3.blake3(text.encode("utf-8", "surrogateescape")).hexdigest(DIGEST_BYTES)


def key_values(
    *,
    rule: str,
    action: str,
    params: str,
    env: Mapping[str, str],
    image: str | None,
    inputs: Sequence[tuple[str, str]],
    version: int = KEY_VERSION,
) -> tuple[str, ...]:
    """Every field of a step key, as text, in ``FIELDS`` order: the one list of what counts.

    rule: the rule's identity (its name). action: the rendered command, run-block source or script
    content. params: ``canonical(params)``. env: the declared environment (not the whole os.environ).
    image: the container image *digest* (None: no container). inputs: (path, digest) in the order
    the rule declares them; order matters because commands see inputs positionally.
    Per-input digests are not fields: they are kept in the trace and compared with ``diff_inputs``.
    """
    # Unambiguous encodings: paths never contain NUL and digests are hex (no NUL, no newline);
    # env names and values may contain newlines, so they are length-prefixed.
    env_text = "".join(f"{len(k)}:{k}{len(v)}:{v}" for k, v in sorted(env.items())) if env else ""
    inputs_text = "".join([f"{p}\0{d}\n" for p, d in inputs])
    return (str(version), rule, action, params, env_text, "-" if image is None else image, inputs_text)


# Each field framed as name \1 length \1 text, in FIELDS order, as one format call: planning
# computes a key for every step, and framing field by field is most of that cost.
_FRAMING = "".join(f"{name}\1{{{i}}}\1{{{i + len(FIELDS)}}}" for i, name in enumerate(FIELDS))


def key_of_values(values: tuple[str, ...]) -> str:
    """The step key of the fields ``key_values`` returns: one digest over all of them, each
    length-framed so no two keys collide by shifting text between fields. One hash per step,
    not one per field: planning 100k steps."""
    return _h(_FRAMING.format(*map(len, values), *values))


def digests_of(texts: Mapping[str, str]) -> dict[str, str]:
    """Per-field digests (kept in traces), so ``diff_fields`` can name what changed."""
    return {k: (v if k in ("version",) or v == "-" and k == "image" else _h(v)) for k, v in texts.items()}


def diff_fields(old: Mapping[str, str], new: Mapping[str, str]) -> list[str]:
    """Names of fields that differ, in ``FIELDS`` order then any others (added/removed count)."""
    names = [f for f in FIELDS if f in old or f in new]
    names += sorted((set(old) | set(new)) - set(FIELDS))
    return [n for n in names if old.get(n) != new.get(n)]


def diff_inputs(old: Sequence[tuple[str, str]], new: Sequence[tuple[str, str]]) -> list[str]:
    """Input paths added, removed or whose digest changed (in new order, then removed ones)."""
    before = dict(old)
    after = dict(new)
    changed = [p for p, d in new if before.get(p) != d]
    changed += [p for p, _ in old if p not in after]
    if not changed and [p for p, _ in old] != [p for p, _ in new]:
        changed = [p for p, _ in new]  # same set, different order: the command sees them differently
    return changed


def canonical(value: Any) -> str:
    """A deterministic text rendering of params (JSON-like, with tags for non-JSON types).

    dict keys are sorted (by their rendering, so mixed key types work); lists and tuples render the
    same (a list->tuple refactor must not rerun everything); sets are sorted. Floats use ``repr``
    (shortest round-trip). Unknown objects fall back to ``repr`` with memory addresses removed, so
    an object without a useful ``__repr__`` is at least stable across runs.
    """
    return _render(value)


def _render(v: Any) -> str:
    # Ordered by frequency in real params; exact type checks first (bool is an int subclass).
    t = type(v)
    if t is str:
        return _quote(v)
    if v is None:
        return "null"
    if t is bool:
        return "true" if v else "false"
    if t is int:
        return str(v)
    if t is float:
        return repr(v)
    if isinstance(v, Mapping):
        items = sorted((_render(k), _render(x)) for k, x in v.items())
        return "{" + ",".join(f"{k}:{x}" for k, x in items) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_render(x) for x in v) + "]"
    if isinstance(v, (set, frozenset)):
        return "set[" + ",".join(sorted(_render(x) for x in v)) + "]"
    if isinstance(v, str):
        return _quote(str(v))
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, enum.Enum):
        return f"{type(v).__qualname__}.{v.name}"
    if isinstance(v, int):
        return str(int(v))
    if isinstance(v, float):
        return repr(float(v))
    if isinstance(v, PurePath):
        return "path" + _quote(v.as_posix())
    if isinstance(v, dt.datetime):  # before date: datetime is a date subclass
        return f"datetime({v.isoformat()})"
    if isinstance(v, dt.date):
        return f"date({v.isoformat()})"
    if isinstance(v, (dt.time, dt.timedelta)):
        return f"{type(v).__name__}({v})"
    if isinstance(v, (bytes, bytearray)):
        return "bytes(" + bytes(v).hex() + ")"
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        inner = ",".join(f"{f.name}={_render(getattr(v, f.name))}" for f in dataclasses.fields(v))
        return f"{type(v).__qualname__}({inner})"
    return _ADDRESS.sub("", repr(v))
