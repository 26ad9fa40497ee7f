"""flowmake.toml: which backend to use and each backend's settings.

Looked up in the workdir, then in ``$XDG_CONFIG_HOME/flowmake/`` (``~/.config/flowmake/``);
``--profile FILE.toml`` picks another file (any other ``--profile`` is a Snakemake profile: see
``profiles``). Settings for backend NAME live under ``[backends.NAME]``.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Any

from flowmake.errors import ConfigError, Location

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib


CLUSTER_BACKENDS = ("slurm", "spot")  # -j counts jobs there; Snakemake's default resources apply (overrides)


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, as a cgroup or taskset limits it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclass(frozen=True)
class Settings:
    backend: str = "local"
    backends: dict[str, dict[str, Any]] = field(default_factory=dict)
    source: str | None = None
    storage: dict[str, dict[str, Any]] = field(default_factory=dict)  # [storage.s3], [storage.NAME]
    cache: dict[str, str] = field(default_factory=dict)  # [cache]: url, mode, endpoint_url, region, profile

    def for_backend(self, name: str) -> dict[str, Any]:
        return dict(self.backends.get(name, {}))


def _candidates(workdir: str) -> list[str]:
    config_home = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return [os.path.join(workdir, "flowmake.toml"), os.path.join(config_home, "flowmake", "flowmake.toml")]


def load_settings(workdir: str, profile: str | None = None) -> Settings:
    if profile is not None:
        if not os.path.isfile(profile):
            raise ConfigError(f"profile {profile!r} does not exist")
        return _read(profile)
    for path in _candidates(workdir):
        if os.path.isfile(path):
            return _read(path)
    return Settings()


def _read(path: str) -> Settings:
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(exc), location=Location(path)) from None
    backend = data.get("backend", "local")
    backends = data.get("backends", {})
    if not isinstance(backend, str) or not isinstance(backends, dict):
        raise ConfigError("'backend' must be a string and [backends.NAME] tables", location=Location(path))
    storage = data.get("storage", {})
    if not isinstance(storage, dict) or not all(isinstance(v, dict) for v in storage.values()):
        raise ConfigError("storage settings must be [storage.NAME] tables", location=Location(path))
    return Settings(backend=backend, backends={k: dict(v) for k, v in backends.items()}, source=path,
                    storage={k: dict(v) for k, v in storage.items()}, cache=_cache_table(data.get("cache", {}), path))


CACHE_KEYS = ("url", "mode", "endpoint_url", "region", "profile")
CACHE_MODES = ("read", "write", "readwrite")


def _cache_table(table: Any, path: str) -> dict[str, str]:
    """``[cache]``: every key known and a string, the mode one of ``CACHE_MODES``."""
    if not isinstance(table, dict):
        raise ConfigError("'cache' must be a [cache] table", location=Location(path, _line_of(path, "cache")))
    for key, value in table.items():
        where = Location(path, _line_of(path, key, "cache"))
        if key not in CACHE_KEYS:
            raise ConfigError(f"unknown key {key!r} in [cache]", location=where,
                              hint="known keys: " + ", ".join(CACHE_KEYS))
        if not isinstance(value, str):
            raise ConfigError(f"[cache] {key} must be a string", location=where)
    mode = table.get("mode")
    if mode is not None and mode not in CACHE_MODES:
        raise ConfigError(f"[cache] mode must be one of {', '.join(CACHE_MODES)}, not {mode!r}",
                          location=Location(path, _line_of(path, "mode", "cache")))
    return dict(table)


def _line_of(path: str, key: str, table: str | None = None) -> int:
    """The line where ``key`` is set (inside ``[table]`` when given), for error locations; 0 if not found."""
    inside = table is None
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return 0
    for n, line in enumerate(lines, 1):
        text = line.strip()
        if text.startswith("["):
            inside = table is None or text.strip("[] ") == table
            if table is None and text.strip("[] ") == key:
                return n
            continue
        if inside and text.split("=", 1)[0].strip().strip('"\'') == key and "=" in text:
            return n
    return 0


def backend_settings(settings: Settings, name: str, opts: Any) -> dict[str, Any]:
    """A backend's settings plus, for a cluster backend, what flags set for it (``api.Options``)."""
    out = settings.for_backend(name)
    if name not in CLUSTER_BACKENDS:  # elsewhere outputs are local and submitting costs nothing
        return out
    for key, value in (("latency_wait", opts.latency_wait), ("max_jobs_per_timespan", opts.max_jobs_per_timespan),
                       ("verbose", opts.verbose or None)):
        if value is not None:
            out[key] = value
    return out
