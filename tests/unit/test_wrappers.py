"""wrappers.resolve and wrappers.meta_wrapper_snakefile: a wrapper name to a folder on local disk.

Remote wrappers are served by a real HTTP server on 127.0.0.1 (the standard library's), started
per test; the cache lives under a temporary XDG_CACHE_HOME.
"""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path
from typing import Iterator

import pytest

from flowmake import wrappers
from flowmake.errors import WrapperError


def repo(root: Path) -> Path:
    """A tiny wrapper repository: v1/demo/upper (Python), v1/demo/plot (R), a meta-wrapper."""
    upper = root / "v1" / "demo" / "upper"
    upper.mkdir(parents=True)
    (upper / "wrapper.py").write_text("print('upper')\n")
    (upper / "environment.yaml").write_text("dependencies: [python]\n")
    plot = root / "v1" / "demo" / "plot"
    plot.mkdir(parents=True)
    (plot / "wrapper.R").write_text("print('plot')\n")
    meta = root / "v1" / "meta" / "demo" / "pipeline" / "test"
    meta.mkdir(parents=True)
    (meta / "Snakefile").write_text('rule a:\n    output: "a"\n    wrapper: "v1/demo/upper"\n')
    return root


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "flowmake" / "wrappers"


class Server:
    def __init__(self, root: Path) -> None:
        handler = functools.partial(_Quiet, directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.prefix = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.requests = _Quiet.log
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    log: list[str] = []

    def log_message(self, format: str, *args: object) -> None:
        _Quiet.log.append(self.path)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    _Quiet.log.clear()
    s = Server(repo(tmp_path / "served"))
    yield s
    s.stop()


def test_local_directory_prefix(tmp_path: Path, cache: Path) -> None:
    root = repo(tmp_path / "w")
    w = wrappers.resolve("v1/demo/upper", str(root))  # no trailing slash: one is added
    assert w.script == str(root / "v1/demo/upper/wrapper.py")
    assert w.env_file == str(root / "v1/demo/upper/environment.yaml")
    assert not cache.exists()  # read where it is


def test_file_url_prefix_and_full_file_url_name(tmp_path: Path, cache: Path) -> None:
    root = repo(tmp_path / "w")
    assert wrappers.resolve("v1/demo/upper", f"file://{root}/").directory == str(root / "v1/demo/upper")
    full = f"file://{root}/v1/demo/upper/wrapper.py"  # a full URL ignores the prefix
    assert wrappers.resolve(full, "https://example.invalid/").script == str(root / "v1/demo/upper/wrapper.py")


def test_default_prefix_is_snakemakes() -> None:
    assert wrappers.location_of("v5.0.0/bio/samtools/sort", None) == (
        "https://github.com/snakemake/snakemake-wrappers/raw/v5.0.0/bio/samtools/sort")


def test_missing_local_wrapper_names_it(tmp_path: Path, cache: Path) -> None:
    root = repo(tmp_path / "w")
    with pytest.raises(WrapperError) as e:
        wrappers.resolve("v1/demo/nope", f"{root}/", rule="r")
    assert e.value.message == f"wrapper 'v1/demo/nope' not found: no wrapper.py in {root}/v1/demo/nope"
    assert e.value.rule == "r"


def test_r_wrapper_is_refused_clearly(tmp_path: Path, cache: Path) -> None:
    root = repo(tmp_path / "w")
    with pytest.raises(WrapperError) as e:
        wrappers.resolve("v1/demo/plot", f"{root}/")
    assert e.value.message == ("wrapper 'v1/demo/plot' is written in R (wrapper.R); "
                               "flowmake runs Python wrappers (wrapper.py) only")


def test_remote_wrapper_is_fetched_once_then_read_offline(server: Server, cache: Path) -> None:
    w = wrappers.resolve("v1/demo/upper", server.prefix)
    assert Path(w.script).read_text() == "print('upper')\n"
    assert w.env_file is not None and Path(w.env_file).read_text() == "dependencies: [python]\n"
    assert Path(w.directory).parent == cache
    server.stop()  # the network is gone: the cached copy serves
    again = wrappers.resolve("v1/demo/upper", server.prefix)
    assert again == w


def test_remote_r_wrapper_is_refused(server: Server, cache: Path) -> None:
    with pytest.raises(WrapperError) as e:
        wrappers.resolve("v1/demo/plot", server.prefix)
    assert "is written in R" in e.value.message


def test_remote_missing_wrapper(server: Server, cache: Path) -> None:
    with pytest.raises(WrapperError) as e:
        wrappers.resolve("v1/demo/nope", server.prefix)
    assert e.value.message == f"wrapper 'v1/demo/nope' not found: no wrapper.py at {server.prefix}v1/demo/nope/"


def test_unreachable_without_a_copy_names_the_flag(cache: Path) -> None:
    with pytest.raises(WrapperError) as e:
        wrappers.resolve("v1/demo/upper", "http://127.0.0.1:9/", rule="upper")
    assert e.value.message.startswith(
        "wrapper 'v1/demo/upper' cannot be fetched from http://127.0.0.1:9/v1/demo/upper: ")
    assert e.value.rule == "upper"
    assert e.value.hint == ("offline, use a local copy of the wrappers: "
                            "--wrapper-prefix file:///path/to/snakemake-wrappers")


def test_offline_never_fetches(server: Server, cache: Path) -> None:
    with pytest.raises(WrapperError) as e:
        wrappers.resolve("v1/demo/upper", server.prefix, offline=True)
    assert "no copy in the cache" in e.value.message
    assert server.requests == []


def test_meta_wrapper_snakefile_local_and_remote(tmp_path: Path, server: Server, cache: Path) -> None:
    root = repo(tmp_path / "w")
    local = wrappers.meta_wrapper_snakefile("v1/meta/demo/pipeline", f"file://{root}/")
    assert local == str(root / "v1/meta/demo/pipeline/test/Snakefile")
    remote = wrappers.meta_wrapper_snakefile("v1/meta/demo/pipeline", server.prefix)
    assert Path(remote).read_text() == Path(local).read_text()
    server.stop()
    assert wrappers.meta_wrapper_snakefile("v1/meta/demo/pipeline", server.prefix) == remote


def test_meta_wrapper_missing(tmp_path: Path, server: Server, cache: Path) -> None:
    with pytest.raises(WrapperError) as e:
        wrappers.meta_wrapper_snakefile("v1/meta/nope", server.prefix)
    assert e.value.message == f"meta-wrapper 'v1/meta/nope' not found at {server.prefix}v1/meta/nope/test/Snakefile"
