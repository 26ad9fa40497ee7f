"""Reusable rule fragments shipped with flowmake: the `*.flow` files beside this module.

Installed as ``flowmake.library`` (the source folder is ``rules/``; ``flowmake.rules`` is the
engine's Rule module). Each fragment is ordinary Snakemake syntax, so it can be included from a
Flowfile or from a Snakefile. From a Flowfile run by an installed flowmake:

    import flowmake.library
    include: flowmake.library.path("checksums.flow")

or give `include:` the file's path (`python -m flowmake.library` lists them with their paths).

- `checksums.flow`: `X.sha256` for any file `X` (`sha256sum -c` format, relocatable).
- `compress.flow`:  `X.gz` for any file `X`, byte-reproducible (`gzip -n`).
- `archive.flow`:   `D.tar` for any directory `D`, byte-reproducible (GNU tar).
"""
from __future__ import annotations

import difflib
from pathlib import Path

# Fragments are plain files installed beside this module (package data, never zipped).
HERE = Path(__file__).resolve().parent


def names() -> list[str]:
    """The fragments this installation ships."""
    return sorted(p.name for p in HERE.glob("*.flow"))


def path(name: str) -> str:
    """Filesystem path of fragment `name` (e.g. "checksums.flow"), for `include:`."""
    candidate = HERE / name
    if not name.endswith(".flow") or not candidate.is_file():
        close = difflib.get_close_matches(name, names(), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; available: {', '.join(names())}"
        raise FileNotFoundError(f"no rule fragment {name!r} in flowmake.library{hint}")
    return str(candidate)
