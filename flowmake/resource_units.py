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


def format_size(mb: int) -> str:
    """MB as humanfriendly.format_size writes them (what Snakemake's ``resources.mem`` holds):
    decimal units, at most two decimals, "1 GB", "1.5 TB", "500 MB"."""
    size = mb * 10 ** 6
    for power, unit in ((6, "EB"), (5, "PB"), (4, "TB"), (3, "GB"), (2, "MB"), (1, "KB")):
        if size >= 1000 ** power:
            return f"{size / 1000 ** power:.2f}".rstrip("0").rstrip(".") + f" {unit}"
    return f"{size} bytes"


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


def normalize(pairs: Iterable[tuple[str | None, Any]]) -> list[tuple[str | None, Any]]:
    """Resource (name, value) pairs with sizes and run times as numbers; UnitError if one is
    not readable. ``mem``/``disk`` also give their ``_mb`` and ``_mib`` forms, unless given."""
    pairs = list(pairs)
    given = {name for name, _ in pairs}
    out: list[tuple[str | None, Any]] = []
    for name, value in pairs:
        if value is TBD:
            out.append((name, value))
            continue
        if isinstance(value, float):
            value = round(value)
        if name in SIZED:  # the scheduler reads NAME_mb
            mb = size_mb(value) if isinstance(value, str) else value
            # Snakemake shows a size it read as its own spelling of the MB: "1GB" is "1 GB".
            out.append((name, format_size(mb) if isinstance(value, str) else value))
            if isinstance(mb, int):
                out += [(f"{name}{suffix}", v) for suffix, v in
                        (("_mb", mb), ("_mib", math.ceil(mb * 1e6 / 2 ** 20)))
                        if f"{name}{suffix}" not in given]
            continue
        if name in ("mem_mb", "disk_mb") and isinstance(value, str):
            value = size_mb(value)
        elif name == "runtime" and isinstance(value, str):
            value = minutes(value)
        out.append((name, value))
    return out
