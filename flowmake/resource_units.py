"""Human-friendly resource values, read as Snakemake reads them.

``mem="5GB"`` and ``disk="1 TB"`` give ``mem_mb``/``mem_mib`` and ``disk_mb``/``disk_mib`` (MB
and MiB), ``mem_mb="2GB"`` and ``runtime="1h30m"`` become numbers (MB, minutes). Floats are rounded. The scheduler, ``--resources`` accounting and the SLURM backend then
see ``mem_mb`` and ``runtime`` whichever spelling the rule used.
"""

from __future__ import annotations

import math
import re
from typing import Any, Iterable

SIZED = ("mem", "disk")

_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgtpe]?)(i?)b?\s*$", re.IGNORECASE)
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5, "e": 6}
_SPAN = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)", re.IGNORECASE)
_SECONDS = {"s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1,
            "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60,
            "h": 3600, "hr": 3600, "hrs": 3600, "hour": 3600, "hours": 3600,
            "d": 86400, "day": 86400, "days": 86400, "w": 604800, "week": 604800,
            "weeks": 604800}


class UnitError(ValueError):
    pass


class _Deferred(str):
    __slots__ = ()

    # `{params.x[foo]}` in a dry run's shown command reads <TBD>, as the whole value does.
    def __getitem__(self, key: Any) -> _Deferred:
        return self


# A resource function that failed while an input of its step was still to be made: the scheduler
# asks it again once the step is ready (Snakemake evaluates resources just before the job, too).
TBD = _Deferred("<TBD>")


def size_mb(text: str) -> int:
    """"5GB" → 5000, "1 GiB" → 1074 (MB, rounded up, at least 1); a bare number is MB already."""
    stripped = text.strip("'\" ")
    if stripped.isdecimal():
        return int(stripped)
    m = _SIZE.match(stripped)
    if m is None:
        raise UnitError(f"{text!r} is not a size (e.g. 500MB, 4GB, 1.5GiB)")
    base = 1024 if m.group(3) else 1000
    size = float(m.group(1)) * base ** _POWERS[m.group(2).lower()]
    return max(int(math.ceil(size / 1e6)), 1)


def minutes(text: str) -> int:
    """"1h" → 60, "1h30m" → 90, "45 minutes" → 45 (at least 1); a bare number is minutes."""
    stripped = text.strip("'\" ")
    if stripped.isdecimal():
        return int(stripped)
    total, pos = 0.0, 0
    for m in _SPAN.finditer(stripped):
        if stripped[pos:m.start()].strip() or m.group(2).lower() not in _SECONDS:
            raise UnitError(f"{text!r} is not a time span (e.g. 30m, 2h, 1h30m, 1d)")
        total += float(m.group(1)) * _SECONDS[m.group(2).lower()]
        pos = m.end()
    if pos == 0 or stripped[pos:].strip():
        raise UnitError(f"{text!r} is not a time span (e.g. 30m, 2h, 1h30m, 1d)")
    return max(int(round(total) / 60), 1)


_MIB = 0.95367431640625  # MiB per MB
_DECIMAL = ("KB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB")


def mb_to_mib(mb: int) -> int:
    return int(math.ceil(mb * _MIB))


def human_size(mb: int) -> str:
    """1000 → "1 GB", 1500 → "1.5 GB": Snakemake's (humanfriendly's) spelling of a size in MB."""
    size = mb * 10**6
    for power in range(len(_DECIMAL), 0, -1):
        if size >= 1000**power:
            text = f"{size / 1000**power:.2f}".rstrip("0").rstrip(".")
            return f"{text} {_DECIMAL[power - 1]}"
    return f"{size} bytes"


def _sized_base(name: str | None) -> str | None:
    for base in SIZED:
        if name in (base, f"{base}_mb", f"{base}_mib"):
            return base
    return None


def _as_mb(name: str, value: Any) -> int | None:
    if isinstance(value, bool) or value is TBD:
        return None
    if name.endswith("_mib"):
        return int(math.floor(value / _MIB)) if isinstance(value, int) else None
    if isinstance(value, str):
        return size_mb(value)
    return value if isinstance(value, int) else None


def normalize(pairs: Iterable[tuple[str | None, Any]]) -> list[tuple[str | None, Any]]:
    """Resource (name, value) pairs with sizes and run times as numbers; UnitError if one is
    not readable. Whichever of ``mem``, ``mem_mb`` and ``mem_mib`` is given (``disk`` alike) gives
    the other two (``mem`` as ``"1 GB"``), unless the rule gave them itself."""
    pairs = list(pairs)
    given = {name for name, _ in pairs}
    derived: set[str] = set()
    out: list[tuple[str | None, Any]] = []
    for name, value in pairs:
        if value is TBD:
            out.append((name, value))
            continue
        if isinstance(value, float):
            value = round(value)
        base = _sized_base(name)
        if base is not None and name is not None:  # the scheduler reads NAME_mb
            if name.endswith("_mb") and isinstance(value, str):
                value = size_mb(value)
            mb = _as_mb(name, value)
            if name == base and isinstance(value, str) and mb is not None:
                value = human_size(mb)  # Snakemake shows "1GB" as its own "1 GB"
            out.append((name, value))
            if mb is not None and base not in derived:
                # Snakemake 9 shows every sized resource three ways: NAME ("1 GB"), _mb and _mib.
                derived.add(base)
                out += [(n, v) for n, v in ((f"{base}_mb", mb), (f"{base}_mib", mb_to_mib(mb)),
                                            (base, human_size(mb))) if n not in given]
            continue
        if name == "runtime" and isinstance(value, str):
            value = minutes(value)
        out.append((name, value))
    return out
