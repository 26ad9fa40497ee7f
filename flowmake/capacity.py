"""What the running jobs hold of the run's cores and ``--resources`` limits, and whether one more fits.

The scheduler asks ``fits`` before it starts a job, ``take``s what the job needs when it starts and
``give``s it back when the job ends. A job that needs more than a limit alone still runs, by itself:
the first job never waits (Snakemake scales such a job down; we run it capped).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from flowmake.resource_units import TBD


@dataclass(frozen=True)
class Need:
    """What one job holds while it runs."""

    cores: int = 0
    mem_mb: int = 0
    other: Mapping[str, int] = field(default_factory=dict)  # the resources --resources limits


NOTHING = Need()


def total(needs: list[Need]) -> Need:
    """What jobs running at once need together (the steps of a pipe group)."""
    if len(needs) == 1:
        return needs[0]
    other: dict[str, int] = {}
    for n in needs:
        for k, v in n.other.items():
            other[k] = other.get(k, 0) + v
    return Need(sum(n.cores for n in needs), sum(n.mem_mb for n in needs), other)


class Capacity:
    def __init__(self, cores: int, limits: Mapping[str, int]) -> None:
        self.cores = cores
        self.limits = limits
        self._cores = 0
        self._mem = 0
        self._other: dict[str, int] = {}

    def need_of(self, inst: Any) -> Need:
        """A step's threads (capped at the run's cores), memory and limited resources."""
        if inst is None:
            return Need(cores=1)
        threads = min(max(1, int(inst.threads)), self.cores)
        resources = dict(inst.resources.items())
        mem = resources.get("mem_mb", 0)
        mem = int(mem) if isinstance(mem, (int, float)) else 0
        other = {k: int(v) for k, v in resources.items()
                 if k in self.limits and k != "mem_mb" and isinstance(v, (int, float))}
        return Need(threads, mem, other)

    def check(self, inst: Any) -> None:
        """A resource that ``--resources`` limits must be a number in every step (Snakemake
        refuses a string there, e.g. foo="bar" with --resources foo=4)."""
        for name, value in inst.resources.items() if inst is not None and inst.resources else ():
            if name in self.limits and (isinstance(value, bool) or not isinstance(value, (int, float))) \
                    and value is not TBD:
                raise inst.rule.error(f"resources: {name}={value!r}, but --resources {name}="
                                      f"{self.limits[name]} limits it: it must be a number")

    def fits(self, need: Need, *, local: bool) -> bool:
        """Whether ``need`` fits beside what runs now (cores count only for jobs on this machine)."""
        if local and self._cores and self._cores + need.cores > self.cores:
            return False
        limit = self.limits.get("mem_mb")
        if limit and self._mem and self._mem + need.mem_mb > limit:
            return False
        for name, amount in need.other.items():
            lim = self.limits.get(name)
            used = self._other.get(name, 0)
            if lim is not None and used and used + amount > lim:
                return False
        return True

    def take(self, need: Need) -> None:
        self._cores += need.cores
        self._mem += need.mem_mb
        for k, v in need.other.items():
            self._other[k] = self._other.get(k, 0) + v

    def give(self, need: Need) -> None:
        self._cores -= need.cores
        self._mem -= need.mem_mb
        for k, v in need.other.items():
            self._other[k] -= v
