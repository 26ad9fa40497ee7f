"""A git revision of this repository laid out as an installed flowmake, for `compare.py --baseline`.

`git archive REV` gives the revision's files without touching the repository (no worktree
entry, no checkout). Its packages are then placed the way `pip install` would place them, using
that revision's own `setup.cfg` `package_dir` (`flowmake.backends` lives in `backends/`,
`flowmake.library` in `rules/`, so the source tree on PYTHONPATH would not import them), plus a
`.dist-info` carrying its entry points, since backends are found through the
`flowmake.backends` entry-point group. PYTHONPATH pointing at that directory then wins over the
current editable install: it comes before site-packages, and importlib.metadata keeps the first
distribution of a name it finds.
"""
from __future__ import annotations

import configparser
import io
import os
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Baseline:
    ref: str          # as the user spelled it, e.g. HEAD or main~3
    commit: str       # the full hash it resolved to
    site: Path        # put this on PYTHONPATH

    @property
    def env(self) -> dict[str, str]:
        return {"PYTHONPATH": str(self.site)}


def git(repo: Path, *args: str) -> bytes:
    res = subprocess.run(["git", "-C", str(repo), *args], capture_output=True)
    if res.returncode != 0:
        sys.exit(f"git {' '.join(args)}: {res.stderr.decode(errors='replace').strip()}")
    return res.stdout


def prepare(repo: Path, ref: str, dest: Path) -> Baseline:
    """Extract `ref` under dest/src and lay it out as installed under dest/site."""
    commit = git(repo, "rev-parse", "--verify", f"{ref}^{{commit}}").decode().strip()
    src, site = dest / "src", dest / "site"
    shutil.rmtree(dest, ignore_errors=True)  # a --workdir reused from an earlier run
    src.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(git(repo, "archive", "--format=tar", commit))) as tar:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 warns without a filter
            tar.extractall(src, filter="data")
        else:
            tar.extractall(src)
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(src / "setup.cfg")
    mapping = parse_mapping(cfg.get("options", "package_dir", fallback=""))
    site.mkdir()
    if not mapping:  # a plain layout: the tree itself is importable
        mapping = {"flowmake": "flowmake"}
    # Parents first, so flowmake/ exists before flowmake/backends/ is put inside it.
    for pkg in sorted(mapping, key=lambda p: p.count(".")):
        target = site.joinpath(*pkg.split("."))
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(src / mapping[pkg], target,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    write_dist_info(site, cfg, version_in(site / "flowmake" / "__init__.py"))
    base = Baseline(ref, commit, site)
    check_imports(base)
    return base


def parse_mapping(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if "=" in line:
            pkg, _, path = line.partition("=")
            out[pkg.strip()] = path.strip()
    return out


def version_in(init: Path) -> str:
    for line in init.read_text().splitlines():
        if line.startswith("__version__"):
            return line.split("=", 1)[1].strip().strip("\"'")
    return "0"


def write_dist_info(site: Path, cfg: configparser.ConfigParser, version: str) -> None:
    info = site / f"flowmake-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: flowmake\nVersion: {version}\n")
    lines = []
    if cfg.has_section("options.entry_points"):
        for group, body in cfg.items("options.entry_points"):
            lines.append(f"[{group}]")
            lines += [ln.strip() for ln in body.splitlines() if ln.strip()]
            lines.append("")
    (info / "entry_points.txt").write_text("\n".join(lines))


def check_imports(base: Baseline) -> None:
    """Every flowmake module the baseline imports must come from its own tree, not this one."""
    probe = ("import importlib.metadata as m, flowmake, flowmake.backends, flowmake.library\n"
             "ep = m.entry_points(group='flowmake.backends')['local']\n"
             "print(flowmake.__file__, flowmake.backends.__file__, flowmake.library.__file__)\n"
             "print(m.distribution('flowmake').locate_file('flowmake'))\n"
             "print(__import__('sys').modules[ep.load().__module__].__file__)\n")
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         env={**os.environ, **base.env}, cwd=base.site.parent)
    if res.returncode != 0:
        sys.exit(f"baseline {base.ref} does not import: {res.stderr.strip()[-400:]}")
    stray = [p for p in res.stdout.split() if not Path(p).resolve().is_relative_to(base.site)]
    if stray:
        sys.exit(f"baseline {base.ref} imports code outside its tree: {', '.join(stray)}")
