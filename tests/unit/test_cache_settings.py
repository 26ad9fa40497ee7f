"""flowmake.toml's [cache] table (settings) and which cache a command then uses (cache_setup)."""

from __future__ import annotations

from pathlib import Path

import pytest

from flowmake.cache import Mode
from flowmake.cache_setup import open_configured
from flowmake.errors import ConfigError
from flowmake.session import Options
from flowmake.settings import load_settings


def settings(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    (tmp_path / "flowmake.toml").write_text(text)
    return load_settings(str(tmp_path))


def test_the_table_gives_url_mode_and_the_s3_keys(tmp_path: Path) -> None:
    s = settings(tmp_path, '[cache]\nurl = "s3://b/p"\nmode = "read"\nendpoint_url = "http://x"\nregion = "r"\nprofile = "p"\n')
    assert s.cache == {"url": "s3://b/p", "mode": "read", "endpoint_url": "http://x", "region": "r", "profile": "p"}


@pytest.mark.parametrize("text,line,message", [
    ('[cache]\nurl = "file:///c"\nmode = "readonly"\n', 3, "[cache] mode must be one of read, write, readwrite, not 'readonly'"),
    ('backend = "local"\n[cache]\nurl = 3\n', 3, "[cache] url must be a string"),
    ('[cache]\n\n"url2" = "x"\n', 3, "unknown key 'url2' in [cache]"),
])
def test_mistakes_name_the_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        settings(tmp_path, text)
    assert e.value.message == message and e.value.location is not None and e.value.location.line == line


def test_flags_win_over_the_table_and_no_cache_over_both(tmp_path: Path) -> None:
    s = settings(tmp_path, f'[cache]\nurl = "file://{tmp_path}/lab"\nmode = "read"\n')
    cache = open_configured(Options(), s)
    assert cache.mode is Mode.READ and not cache.can_write and cache.url == f"file://{tmp_path}/lab"
    cache = open_configured(Options(cache_url=str(tmp_path / "mine"), cache_mode="write"), s)
    assert cache.mode is Mode.WRITE and cache.url == f"file://{tmp_path}/mine"
    assert open_configured(Options(no_cache=True), s) is None
    assert open_configured(Options(), load_settings(str(tmp_path / "elsewhere"))) is None
