"""Snakemake flags that change how the workflow is read or what a run records, for ``cli``.

``add_flags`` puts them on the parser; ``options`` turns them into ``api.Options`` fields. Kept
apart from ``cli`` so that module stays the thin list of everyday flags.
"""

from __future__ import annotations

import argparse
import os
from typing import Any, Sequence

from flowmake.errors import UsageError


def add_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("reading the workflow, and what a run records")
    g.add_argument("--all-temp", action="store_true",
                   help="mark every output temp(): removed once no pending step needs it")
    g.add_argument("--consider-ancient", nargs="+", default=[], metavar="RULE=INPUTS",
                   help="treat these inputs of RULE as ancient() (names or 0-based positions, "
                        "comma-separated)")
    g.add_argument("--replace-workflow-config", action="store_true",
                   help="--config/--configfile replace the rule file's configfile: instead of "
                        "updating it")
    g.add_argument("--benchmark-extended", action="store_true",
                   help="benchmark: files get Snakemake's extended columns (cpu times, I/O, "
                        "start time; JSON lines for .jsonl)")
    g.add_argument("--batch", metavar="RULE=BATCH/BATCHES",
                   help="only the BATCH-th of BATCHES parts of RULE's inputs (an aggregating rule), "
                        "and what they need")
    c = p.add_argument_group("the shared cache (restores steps someone already ran; [cache] in flowmake.toml)")
    c.add_argument("--cache", nargs="*", metavar="URL|RULE",
                   help="the cache to use: file:///DIR or s3://BUCKET/PREFIX; Snakemake's --cache RULE... "
                        "spelling (rule names) caches only those rules")
    c.add_argument("--cache-mode", choices=["read", "write", "readwrite"],
                   help="read: restore only (never writes the store); write: publish only (default readwrite)")
    c.add_argument("--no-cache", action="store_true", help="neither restore from nor publish to a cache")


def options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "all_temp": args.all_temp,
        "consider_ancient": parse_consider_ancient(args.consider_ancient),
        "replace_workflow_config": args.replace_workflow_config,
        "benchmark_extended": args.benchmark_extended,
        "batch": parse_batch(args.batch) if args.batch else None,
        **_cache_options(args),
    }


def is_cache_url(text: str) -> bool:
    """A cache location rather than a rule name: rule names have neither ``/`` nor ``:``."""
    return "://" in text or "/" in text


def _cache_options(args: argparse.Namespace) -> dict[str, Any]:
    """``--cache URL`` or Snakemake's ``--cache [RULE...]``. Targets written after ``--cache URL``
    were taken by its ``nargs``: they go back to the targets."""
    given = args.cache
    url, rules = None, []
    if given:
        if is_cache_url(given[0]):
            url = given[0] if "://" in given[0] else os.path.abspath(given[0])  # before -d moves
            args.targets.extend(given[1:])
        else:
            rules = [g for g in given]
            bad = [g for g in rules if is_cache_url(g)]
            if bad:
                raise UsageError(f"--cache takes one URL first, then nothing but targets: {bad[0]!r}")
    return {"cache_url": url, "cache_rules": rules, "cache_flag": given is not None,
            "cache_mode": args.cache_mode, "no_cache": args.no_cache}


_ANCIENT_FORM = ("--consider-ancient takes RULE=INPUTS, INPUTS being input names or 0-based "
                 "positions separated by commas")


def parse_consider_ancient(items: Sequence[str]) -> dict[str, frozenset[str | int]]:
    """``["A=0", "B=x,1"]`` → ``{"A": {0}, "B": {"x", 1}}``; UsageError for anything else."""
    out: dict[str, frozenset[str | int]] = {}
    for item in items:
        rule, sep, inputs = item.partition("=")
        rule = rule.strip().strip("'\"")
        if not sep or not rule.isidentifier():
            raise UsageError(f"{_ANCIENT_FORM}, got {item!r}")
        parsed: set[str | int] = set()
        for name in inputs.strip().strip("'\"").split(","):
            name = name.strip()
            if name.isdecimal():
                parsed.add(int(name))
            elif name.isidentifier():
                parsed.add(name)
            else:
                raise UsageError(f"{_ANCIENT_FORM}; {name!r} in {item!r} is neither")
        out[rule] = frozenset(parsed)
    return out


def parse_batch(text: str) -> tuple[str, int, int]:
    """``"aggregate=1/3"`` → ``("aggregate", 1, 3)``; batches count from 1."""
    rule, sep, spec = text.partition("=")
    batch, slash, batches = spec.partition("/")
    try:
        i, n = int(batch), int(batches)
    except ValueError:
        i = n = 0
    if not sep or not slash or not rule or n < 1:
        raise UsageError(f"--batch takes RULE=BATCH/BATCHES, e.g. aggregate=1/3, got {text!r}")
    if not 1 <= i <= n:
        raise UsageError(f"--batch {text}: BATCH must be between 1 and {n}")
    return rule, i, n
