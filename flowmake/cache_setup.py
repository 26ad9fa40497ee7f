"""Which shared cache a command uses, and the cache pass over its plan (for ``session``).

The cache comes from ``--cache URL`` or ``[cache]`` in flowmake.toml (``--no-cache``: none);
Snakemake's ``--cache RULE...`` spelling names the rules to cache, its cache then being
``$SNAKEMAKE_OUTPUT_CACHE`` unless a URL is configured. A store that cannot be reached while
planning is a warning, and the steps it would have answered run.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable

from flowmake.cache import human_bytes
from flowmake.cache_plan import CacheOutcome, apply_cache, cacheable
from flowmake.graph import Step
from flowmake.planner import Plan


def open_configured(opts: Any, settings: Any) -> Any:
    """The ``cache.Cache`` this command uses, or None."""
    if opts.no_cache:
        return None
    table = settings.cache
    url = opts.cache_url or table.get("url")
    if url is None and opts.cache_flag:
        url = os.environ.get("SNAKEMAKE_OUTPUT_CACHE")
    if not url:
        return None
    from flowmake.cache import Mode, open_cache

    mode = Mode(opts.cache_mode or table.get("mode") or "readwrite")
    return open_cache(url, mode, endpoint_url=table.get("endpoint_url"), region=table.get("region"),
                      profile=table.get("profile"))


def may_cache_of(opts: Any) -> Callable[[Step], bool]:
    rules = set(opts.cache_rules)
    if rules:
        return lambda step: step.rule.name in rules and cacheable(step)
    if opts.cache_flag and not opts.cache_url:  # Snakemake's bare --cache: the rules saying cache: True
        return lambda step: step.rule.cache is True and cacheable(step)
    return cacheable


class Lookup:
    """``Cache.lookup`` that stops asking once the store failed: one warning, not one per step."""

    def __init__(self, cache: Any) -> None:
        self.cache = cache
        self.failed = False

    def __call__(self, key: str) -> Any:
        if self.failed:
            return None
        seen = len(self.cache.warnings)
        try:
            found = self.cache.lookup(key)
        except Exception as e:  # any store error: the step runs, the run goes on
            self.cache.warnings.append(f"cache {self.cache.url} could not be read: {getattr(e, 'message', e)}")
            found = None
        if len(self.cache.warnings) > seen and found is None and "could not be read" in self.cache.warnings[-1]:
            self.failed = True
        return found


def plan_with_cache(plan: Plan, lookup: Lookup, targets: list[Any], opts: Any) -> CacheOutcome:
    outcome = CacheOutcome()
    if lookup.cache.can_read:
        outcome = apply_cache(plan, lookup, targets=targets, may_cache=may_cache_of(opts))
        warn(lookup.cache)
    return outcome


def warn(cache: Any, extra: list[str] | None = None) -> None:
    """Print the cache's warnings once each, and forget them."""
    for w in dict.fromkeys([*cache.warnings, *(extra or [])]):
        print(f"flowmake: warning: {w}", file=sys.stderr)
    cache.warnings.clear()


def summary_part(stats: Any) -> str:
    """The run's summary words about the cache: steps restored, bytes moved each way (nothing when
    the cache moved nothing)."""
    if stats is None:
        return ""
    words = []
    n = len(stats.restored) + len(stats.left)
    if n:
        left = f", {len(stats.left)} left there" if stats.left else ""
        words.append(f"{n} step{'s' if n != 1 else ''} restored from the cache "
                     f"({human_bytes(stats.restored_bytes)}{left})")
    if stats.published:
        words.append(f"{stats.published} published to the cache ({human_bytes(stats.published_bytes)})")
    return ", ".join(words)
