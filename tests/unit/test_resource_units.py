"""Human-friendly resource values (mem="4GB", runtime="1h30m"), read as Snakemake reads them."""
from __future__ import annotations

import pytest

from flowmake.resource_units import UnitError, human_size, minutes, normalize, size_mb


def test_sizes_are_megabytes() -> None:
    assert [size_mb(t) for t in ("5MB", "4 GB", "1GiB", "1.5G", "500", "'2kb'")] == \
        [5, 4000, 1074, 1500, 500, 1]
    with pytest.raises(UnitError, match="is not a size"):
        size_mb("lots")


def test_run_times_are_minutes() -> None:
    assert [minutes(t) for t in ("1h", "1h30m", "45 minutes", "2d", "90", "10s")] == \
        [60, 90, 45, 2880, 90, 1]
    with pytest.raises(UnitError, match="is not a time span"):
        minutes("soon")


def test_normalize_derives_mb_and_mib_and_rounds_floats() -> None:
    assert normalize([("mem", "5MB"), ("runtime", "2h"), ("gpus", 1.6), ("disk_mb", "1GB")]) == [
        ("mem", "5 MB"), ("mem_mb", 5), ("mem_mib", 5), ("runtime", 120), ("gpus", 2),
        ("disk_mb", 1000), ("disk_mib", 954), ("disk", "1 GB")]
    # A suffixed name the rule gave itself is not overwritten.
    assert normalize([("mem", "2GB"), ("mem_mb", 100)]) == [
        ("mem", "2 GB"), ("mem_mib", 1908), ("mem_mb", 100)]


def test_any_spelling_of_a_size_gives_all_three_as_snakemake_9_does() -> None:
    assert normalize([("mem_mb", 1000.1), ("disk_mib", 953.6743)]) == [
        ("mem_mb", 1000), ("mem_mib", 954), ("mem", "1 GB"),
        ("disk_mib", 954), ("disk_mb", 1000), ("disk", "1 GB")]
    assert dict(normalize([("mem_mb", 1500)]))["mem"] == "1.5 GB"
    assert dict(normalize([("disk_mb", 2_000_000)]))["disk"] == "2 TB"


def test_human_size_is_humanfriendly_decimal() -> None:
    # What Snakemake's resources.mem holds for mem="..." (humanfriendly.format_size of the bytes).
    assert [human_size(mb) for mb in (1000, 1500, 1074, 500, 2_000_000)] == [
        "1 GB", "1.5 GB", "1.07 GB", "500 MB", "2 TB"]
