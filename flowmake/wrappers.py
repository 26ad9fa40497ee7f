"""Where a ``wrapper:`` (and a ``meta_wrapper:``) lives: its name resolved to a local directory.

Snakemake's wrappers are folders of a repository (``v5.0.0/bio/samtools/sort``) holding
``wrapper.py`` and ``environment.yaml``. A name is appended to the prefix (``--wrapper-prefix``,
by default Snakemake's ``https://github.com/snakemake/snakemake-wrappers/raw/``), unless it is a
full URL itself. A local prefix (``file://...`` or a plain directory) is read where it is, so it
works offline. A remote wrapper is fetched once, over http(s), into the user's cache directory
(``$XDG_CACHE_HOME/flowmake/wrappers/<digest of prefix+name>``) and read from there on: a second
run needs no network, and every job of a run reads the same copy the planner keyed. The cache is
authoritative also for names that are branches (``master/...``): delete its folder to refresh.

flowmake's ``script:`` runs Python, so a wrapper runs when it has a ``wrapper.py``; an R or Julia
wrapper is refused with a message that says so. The wrapper's script goes into the step key
(``Instance.action_source``), so editing the wrapper reruns its steps.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.parse
from dataclasses import dataclass

import blake3

from flowmake.errors import Location, WrapperError, _shown

DEFAULT_PREFIX = "https://github.com/snakemake/snakemake-wrappers/raw/"
SCRIPT = "wrapper.py"
# What Snakemake also looks for, so that an R or Julia wrapper gets a clear refusal.
OTHER_SCRIPTS = ("wrapper.R", "wrapper.Rmd", "wrapper.jl")
ENV_FILE = "environment.yaml"
OFFLINE_HINT = "--wrapper-prefix file:///path/to/snakemake-wrappers"
TIMEOUT_S = 30


@dataclass(frozen=True)
class Wrapper:
    """A wrapper on local disk: its folder, its script, its conda environment file (if any)."""

    name: str
    directory: str
    script: str

    @property
    def env_file(self) -> str | None:
        path = os.path.join(self.directory, ENV_FILE)
        return path if os.path.isfile(path) else None


def cache_root() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "flowmake", "wrappers")


def location_of(name: str, prefix: str | None) -> str:
    """The wrapper's folder as a URL or a local path: ``name`` itself when it is one, else prefix+name."""
    if _is_url(name):
        return name
    prefix = prefix or DEFAULT_PREFIX
    if not prefix.endswith("/"):  # Snakemake concatenates; a missing slash is only ever a slip
        prefix += "/"
    return prefix + name


def resolve(name: str, prefix: str | None = None, *, rule: str | None = None,
            location: Location | None = None, offline: bool = False) -> Wrapper:
    """The wrapper ``name`` on local disk, fetching it into the cache when it is remote.

    ``offline``: never fetch (a job reads the copy its planner resolved). WrapperError, at the
    rule, when there is no such wrapper, it cannot be fetched, or it is not a Python wrapper.
    """
    where = location_of(name, prefix)
    local = local_path(where)
    if local is not None:
        directory = os.path.dirname(local) if _names_script(local) else local
        return _checked(name, directory, where, rule, location)
    directory = os.path.join(cache_root(), _cache_key(where))
    if not os.path.isfile(os.path.join(directory, SCRIPT)) and not offline:
        _fetch_wrapper(name, where, directory, rule, location)
    if not os.path.isfile(os.path.join(directory, SCRIPT)):
        raise _unreachable(name, where, "no copy in the cache", rule, location)
    return Wrapper(name, directory, os.path.join(directory, SCRIPT))


def meta_wrapper_snakefile(name: str, prefix: str | None = None, *, offline: bool = False) -> str:
    """The local path of a meta-wrapper's Snakefile (``<prefix><name>/test/Snakefile``).

    ``module X: meta_wrapper: "v1/meta/bio/bwa_mapping"`` loads that file as the module.
    """
    where = location_of(name.rstrip("/") + "/test/Snakefile", prefix)
    local = local_path(where)
    if local is not None:
        if not os.path.isfile(local):
            raise WrapperError(f"meta-wrapper '{name}' not found: no {_shown(local)}")
        return local
    path = os.path.join(cache_root(), _cache_key(where), "Snakefile")
    if not os.path.isfile(path):
        if offline:
            raise _unreachable(name, where, "no copy in the cache", None, None, "meta-wrapper")
        try:
            _download(where, path)
        except _Missing:
            raise WrapperError(f"meta-wrapper '{name}' not found at {where}") from None
        except OSError as e:
            raise _unreachable(name, where, _reason(e), None, None, "meta-wrapper") from None
    return path


# -- local ------------------------------------------------------------------------------------


def _is_url(text: str) -> bool:
    return text.startswith(("http://", "https://", "file:"))


def local_path(where: str) -> str | None:
    """The path a ``file:`` URL or a plain path names; None for http(s)."""
    if where.startswith(("http://", "https://")):
        return None
    if where.startswith("file:"):
        parsed = urllib.parse.urlparse(where)
        path = urllib.parse.unquote(parsed.path)
        if parsed.netloc and parsed.netloc != "localhost":  # file://relative/dir: a slip for file:relative
            path = parsed.netloc + path
        return os.path.abspath(path)
    return os.path.abspath(where)


def _names_script(path: str) -> bool:
    return os.path.basename(path) in (SCRIPT, *OTHER_SCRIPTS)


def _checked(name: str, directory: str, where: str, rule: str | None,
             location: Location | None) -> Wrapper:
    script = os.path.join(directory, SCRIPT)
    if os.path.isfile(script):
        return Wrapper(name, directory, script)
    others = [s for s in OTHER_SCRIPTS if os.path.isfile(os.path.join(directory, s))]
    if others:
        raise _not_python(name, others[0], rule, location)
    raise WrapperError(f"wrapper '{name}' not found: no {SCRIPT} in {_shown(directory)}",
                       rule=rule, location=location,
                       hint=f"the wrapper prefix is prepended to the name: {where}")


def _not_python(name: str, script: str, rule: str | None, location: Location | None) -> WrapperError:
    return WrapperError(f"wrapper '{name}' is written in {script.rsplit('.', 1)[1]} ({script}); "
                        f"flowmake runs Python wrappers ({SCRIPT}) only", rule=rule, location=location)


# -- remote -----------------------------------------------------------------------------------


def _cache_key(where: str) -> str:
    return blake3.blake3(where.encode("utf-8", "surrogateescape")).hexdigest(12)


class _Missing(Exception):
    """The server answered 404: the file is not there (as opposed to the server being unreachable)."""


def _download(url: str, dest: str) -> None:
    """``url`` into ``dest``, whole or not at all."""
    import urllib.request  # http, ssl, email: imported only when fetching
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp:
            data = resp.read()
    except urllib.error.HTTPError as e:
        if e.code == 404:
            raise _Missing(url) from None
        raise
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    tmp = f"{dest}.{os.getpid()}.part"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, dest)


def _fetch_wrapper(name: str, where: str, directory: str, rule: str | None,
                   location: Location | None) -> None:
    import urllib.request  # http, ssl, email: imported only when fetching
    base = where.rstrip("/")
    if _names_script(base):
        base = base.rsplit("/", 1)[0]
    try:
        # The environment first: the script's presence is what marks the copy complete.
        try:
            _download(f"{base}/{ENV_FILE}", os.path.join(directory, ENV_FILE))
        except _Missing:
            pass
        try:
            _download(f"{base}/{SCRIPT}", os.path.join(directory, SCRIPT))
            return
        except _Missing:
            pass
        for other in OTHER_SCRIPTS:
            try:
                with urllib.request.urlopen(f"{base}/{other}", timeout=TIMEOUT_S):
                    raise _not_python(name, other, rule, location)
            except urllib.error.HTTPError as e:
                if e.code != 404:
                    raise
    except OSError as e:  # URLError, HTTPError other than 404, timeouts, a full disk
        raise _unreachable(name, where, _reason(e), rule, location) from None
    raise WrapperError(f"wrapper '{name}' not found: no {SCRIPT} at {base}/",
                       rule=rule, location=location,
                       hint="check the name and the version (the first path component)")


def _reason(e: OSError) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, urllib.error.URLError):
        return str(e.reason)
    return e.strerror or str(e)


def _unreachable(name: str, where: str, reason: str, rule: str | None, location: Location | None,
                 what: str = "wrapper") -> WrapperError:
    return WrapperError(f"{what} '{name}' cannot be fetched from {where}: {reason}",
                        rule=rule, location=location,
                        details=[f"cache: {_shown(cache_root())} (no copy of it)"],
                        hint=f"offline, use a local copy of the wrappers: {OFFLINE_HINT}")
