"""``import snakemake...`` in a rule file, with or without Snakemake installed.

Snakefiles start with ``from snakemake.utils import min_version, validate`` or import helpers from
``snakemake.io``, ``snakemake.shell``, ``snakemake.logging``. Those names must mean what they mean
in flowmake (a schema relative to the rule file, ``glob_wildcards`` in the workflow's directory,
this workflow's ``shell``), whether or not Snakemake is installed: Snakemake's own ``validate``
expects Snakemake's workflow object, and its ``expand`` or ``temp`` make values flowmake cannot
read. So a rule file always gets stand-in modules (``snakemake``, ``.utils``, ``.io``, ``.shell``,
``.logging``, ``.common``, ``.exceptions``) holding flowmake's names; any other name, or another
submodule (``snakemake.remote``), comes from the real Snakemake when it is installed and is an
ImportError naming what is missing when it is not. Without Snakemake, the modules a rule file
imports find the stand-ins too, while it loads or a step's block runs (``serving``); nothing is
left under the name ``snakemake`` afterwards.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import importlib
import importlib.abc
import importlib.metadata
import importlib.util
import logging
import os
import sys
import types
from typing import Any, Callable, Iterator, Mapping

from flowmake.settings import available_cores

# The Snakemake language flowmake reads: ``snakemake.__version__`` without Snakemake installed.
SNAKEMAKE_VERSION = "9.0.0"
OURS = ("snakemake", "snakemake.utils", "snakemake.io", "snakemake.shell", "snakemake.logging",
        "snakemake.common", "snakemake.exceptions")


@functools.lru_cache(maxsize=None)
def snakemake_installed() -> bool:
    """Asked once per process, before ``serving`` may put the stand-ins in sys.modules."""
    try:
        return importlib.util.find_spec("snakemake") is not None
    except ValueError:  # sys.modules["snakemake"] is None: as good as absent
        return False


class WorkflowError(Exception):
    """Snakemake's ``WorkflowError`` when Snakemake is not installed (a rule file may raise it)."""


class _StderrHandler(logging.StreamHandler):
    """Writes to the stderr of the moment (a test or a step may have replaced ``sys.stderr``)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def _rule_file_logger() -> logging.Logger:
    """Snakemake's ``logger``: a real ``logging.Logger``, so a rule file may add handlers
    (``logger.addHandler(logging.FileHandler(...))``); each message one plain line on stderr.
    Debug messages are not shown, as in Snakemake without --verbose."""
    log = logging.getLogger("flowmake.flowfile")
    if not log.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    return log


logger = _rule_file_logger()


def _min_version(version: str) -> None:
    """Snakemake's version gate: flowmake reads the language, whatever version is asked for."""


def update_config(config: dict[str, Any], overwrite_config: Mapping[str, Any]) -> None:
    """Snakemake's recursive, in-place config update (a non-dict value is replaced)."""
    for key, value in overwrite_config.items():
        if isinstance(value, Mapping):
            sub = config.get(key)
            if not isinstance(sub, dict):
                sub = config[key] = {}
            update_config(sub, value)
        else:
            config[key] = value


def _makedirs(dirnames: Any) -> None:
    for d in [dirnames] if isinstance(dirnames, (str, os.PathLike)) else dirnames:
        os.makedirs(d, exist_ok=True)


def _linecount(filename: str) -> int:
    with open(filename, "rb") as f:
        return sum(1 for _ in f)


class _Standin(types.ModuleType):
    """A module whose own names are flowmake's; ``fallback`` names, and any other name, come from
    the real Snakemake module when it is installed (the fallback serves when it is not)."""

    def __init__(self, name: str, names: Mapping[str, Any], fallback: Mapping[str, Any]) -> None:
        super().__init__(name)
        self.__dict__.update(names)
        self.__fallback = dict(fallback)

    def __getattr__(self, attr: str) -> Any:
        if attr == "__version__" and self.__name__ in ("snakemake", "snakemake.common"):
            return _version()  # asked for rarely; reading package metadata costs every load ~50 ms
        if attr.startswith("__"):
            raise AttributeError(attr)
        real = _real(self.__name__)
        if real is not None and hasattr(real, attr):
            return getattr(real, attr)
        if attr in self.__fallback:
            return self.__fallback[attr]
        raise AttributeError(f"module '{self.__name__}' has no attribute '{attr}'")


def _real(name: str) -> types.ModuleType | None:
    if not snakemake_installed():
        return None
    try:
        module = importlib.import_module(name)
    except ImportError:
        return None
    return None if isinstance(module, _Standin) else module


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves the stand-ins to modules a rule file imports (``scripts/common.py`` with its own
    ``from snakemake.utils import validate``), while ``serving`` is in effect."""

    def __init__(self, modules: Mapping[str, types.ModuleType]) -> None:
        self.modules = modules

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name not in self.modules:
            return None
        return importlib.util.spec_from_loader(name, self, is_package=name == "snakemake")

    def create_module(self, spec: Any) -> types.ModuleType:
        return self.modules[spec.name]

    def exec_module(self, module: types.ModuleType) -> None:
        pass


def standins_of(namespace: Mapping[str, Any]) -> dict[str, types.ModuleType]:
    """The stand-in modules of a loaded rule file's namespace (for a ``script:`` step)."""
    root = namespace.get("snakemake")
    if not isinstance(root, _Standin):
        return {}
    return {"snakemake": root, **{m.__name__: m for m in vars(root).values() if isinstance(m, _Standin)}}


@contextlib.contextmanager
def serving(modules: Mapping[str, types.ModuleType]) -> Iterator[None]:
    """While a rule file loads or a step's block runs, without Snakemake installed: the modules it
    imports find the stand-ins too. Afterwards sys.modules holds no ``snakemake`` again."""
    if snakemake_installed() or any(isinstance(f, _Finder) for f in sys.meta_path):
        yield
        return
    finder = _Finder(modules)
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
        for name in [n for n, m in sys.modules.items() if isinstance(m, _Standin)]:
            del sys.modules[name]


def _version() -> str:
    try:
        return importlib.metadata.version("snakemake") if snakemake_installed() else SNAKEMAKE_VERSION
    except importlib.metadata.PackageNotFoundError:
        return SNAKEMAKE_VERSION


def snakemake_modules(io_names: Mapping[str, Any], utils_names: Mapping[str, Any],
                      shell: Any) -> dict[str, types.ModuleType]:
    """The stand-in modules of one workflow: ``io_names`` are its rule-file helpers,
    ``utils_names`` its ``validate`` and ``Paramspace``, ``shell`` its ``shell``."""
    utils = _Standin("snakemake.utils", {
        "min_version": _min_version, "available_cpu_count": available_cores,
        "makedirs": _makedirs, "update_config": update_config, "linecount": _linecount,
        **utils_names}, {})
    mods: dict[str, types.ModuleType] = {
        "snakemake.utils": utils,
        "snakemake.io": _Standin("snakemake.io", io_names, {}),
        "snakemake.shell": _Standin("snakemake.shell", {"shell": shell}, {}),
        "snakemake.logging": _Standin("snakemake.logging", {"logger": logger}, {}),
        "snakemake.common": _Standin("snakemake.common", {}, {"ON_WINDOWS": os.name == "nt"}),
        "snakemake.exceptions": _Standin("snakemake.exceptions", {},
                                         {"WorkflowError": WorkflowError}),
    }
    root = _Standin("snakemake", {n.split(".")[1]: m for n, m in mods.items()}, {})
    mods["snakemake"] = root
    return mods


def builtins_with_snakemake(modules: Mapping[str, types.ModuleType]) -> dict[str, Any]:
    """The builtins a rule file runs with: the real ones, with ``import snakemake...`` served by
    the stand-ins (and by the real Snakemake for anything else, when installed)."""
    real_import: Callable[..., Any] = builtins.__import__
    root = modules["snakemake"]

    def _import(name: str, globals: Any = None, locals: Any = None, fromlist: Any = (),
                level: int = 0) -> Any:
        if level != 0 or not (name == "snakemake" or name.startswith("snakemake.")):
            return real_import(name, globals, locals, fromlist, level)
        if name in modules:
            return modules[name] if fromlist else root
        if not snakemake_installed():
            raise ModuleNotFoundError(
                f"No module named '{name}': Snakemake is not installed, and flowmake stands in "
                f"only for {', '.join(OURS)}", name=name)
        module = real_import(name, globals, locals, fromlist, level)
        # `import snakemake.remote` binds `snakemake`: keep it the stand-in (which reaches the
        # real submodule through its fallback), so snakemake.utils stays flowmake's.
        return module if fromlist else root

    table = dict(vars(builtins))
    table["__import__"] = _import
    return table
