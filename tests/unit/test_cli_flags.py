"""The values of Snakemake's --consider-ancient and --batch flags (cli_flags)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from flowmake.cli_flags import parse_batch, parse_consider_ancient
from flowmake.errors import UsageError


def test_consider_ancient_takes_names_and_positions() -> None:
    assert parse_consider_ancient(["A=0", "B=x,2"]) == {"A": {0}, "B": {"x", 2}}


@pytest.mark.parametrize("item", ["A", "=0", "A=", "A=x-y", "1A=0"])
def test_consider_ancient_refuses_malformed(item: str) -> None:
    with pytest.raises(UsageError, match="--consider-ancient takes RULE=INPUTS"):
        parse_consider_ancient([item])


def test_batch_parses_and_checks_range() -> None:
    assert parse_batch("aggregate=1/3") == ("aggregate", 1, 3)
    with pytest.raises(UsageError, match="between 1 and 3"):
        parse_batch("aggregate=4/3")
    with pytest.raises(UsageError, match="RULE=BATCH/BATCHES"):
        parse_batch("aggregate=1")


def _options(*argv: str) -> Any:
    from flowmake import cli

    return cli._options(cli._parser().parse_args(list(argv)), list(argv))


def test_cache_takes_a_url_and_gives_later_words_back_to_the_targets(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    opts = _options("--cache", "s3://bucket/prefix", "out.txt", "--cache-mode", "read")
    assert (opts.cache_url, opts.targets, opts.cache_mode, opts.cache_rules) == (
        "s3://bucket/prefix", ["out.txt"], "read", [])
    assert _options("--cache", "lab/cache").cache_url == str(tmp_path / "lab" / "cache"), "before -d moves"


def test_cache_with_rule_names_is_snakemakes_spelling(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    opts = _options("--cache", "align", "sort", "--", "out.txt")
    assert (opts.cache_url, opts.cache_rules, opts.targets, opts.cache_flag) == (None, ["align", "sort"], ["out.txt"], True)
    assert _options("--no-cache").no_cache and not _options().cache_flag
