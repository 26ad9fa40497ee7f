"""The values of Snakemake's --consider-ancient and --batch flags (cli_flags)."""

from __future__ import annotations

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
