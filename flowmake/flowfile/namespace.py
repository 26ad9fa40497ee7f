"""The names a rule file may use without importing them, and its ``workflow`` object.

Snakemake executes a Snakefile in the globals of ``snakemake/workflow.py``, so a Snakefile may
assume everything that module imports or registers: ``os``, ``sys``, ``re``, ``Path``, ``expand``,
``shell``, ``config``, ``rules``, ``checkpoints``, ``workflow``, ``logger``, ``snakemake``, the
flag helpers, ``lookup`` and friends. ``make_namespace`` gives a rule file the same names (those
flowmake can honour), each bound to this one workflow; the builder is the only link to the engine.
"""

from __future__ import annotations

import copy
import hashlib
import os
import platform
import re
import subprocess
import sys
import tarfile
import tempfile
import threading
from collections import OrderedDict, namedtuple
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from itertools import chain, filterfalse
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Optional, Set, Union

from flowmake.flowfile import compat
from flowmake.flowfile.helpers import namespace_helpers
from flowmake.flowfile.ioutils import (ItemProxy, as_py_module, extract_checksum, from_queue,
                                       parse_input, prepend_param)
from flowmake.flowfile.paramspace import Paramspace
from flowmake.flowfile.validate import validate_in
from flowmake.rule_refs import Checkpoints, Rules
from flowmake.rules import Rule
from flowmake.settings import available_cores
from flowmake.shellfmt import Shell

if TYPE_CHECKING:
    from flowmake.flowfile.builder import Builder

# What snakemake/workflow.py imports, and so every Snakefile may name without an import.
_PYTHON_NAMES: dict[str, Any] = {
    "os": os, "sys": sys, "re": re, "subprocess": subprocess, "copy": copy, "hashlib": hashlib,
    "platform": platform, "tempfile": tempfile, "tarfile": tarfile, "threading": threading,
    "Path": Path, "partial": partial, "namedtuple": namedtuple, "OrderedDict": OrderedDict,
    "chain": chain, "filterfalse": filterfalse, "dataclass": dataclass, "field": field,
    "Iterator": Iterator, "Mapping": Mapping, "Callable": Callable, "Dict": Dict,
    "Iterable": Iterable, "List": List, "Optional": Optional, "Set": Set, "Union": Union,
}


def make_namespace(builder: Builder) -> dict[str, Any]:
    wf = builder.workflow
    helpers = namespace_helpers(lambda: wf.workdir, lambda: builder.info.current_basedir)
    shell = Shell(wf.shell_settings)
    validate = validate_in(lambda: builder.info.current_basedir, lambda: wf.files)
    modules = builder.standins = compat.snakemake_modules(
        helpers, {"validate": validate, "Paramspace": Paramspace}, shell)
    ns: dict[str, Any] = dict(_PYTHON_NAMES)
    ns.update(helpers)
    ns.update({
        "__builtins__": compat.builtins_with_snakemake(modules), "__name__": "__flowfile__",
        "__file__": wf.flowfile, "__flowmake__": builder, "config": wf.config,
        "rules": Rules(wf), "checkpoints": Checkpoints(wf), "shell": shell,
        "wildcard_type": builder.wildcard_type, "workflow": builder.info,
        "snakemake": modules["snakemake"], "logger": compat.logger,
        # flowmake's own: asking the stand-in would import the real Snakemake (~100 ms a load).
        "WorkflowError": compat.WorkflowError,
        "update_config": compat.update_config,
        # Snakemake's deferred rule items: `params: bam=input.bam` reads the step's input.
        "input": ItemProxy("input"), "output": ItemProxy("output"),
        "resources": ItemProxy("resources"), "threads": _threads,
        "prepend_param": prepend_param, "as_py_module": as_py_module,
        "parse_input": parse_input, "extract_checksum": extract_checksum, "from_queue": from_queue,
    })
    return ns


def _threads(wildcards: Any, threads: int) -> int:
    return threads


class WorkflowInfo:
    """The ``workflow`` object Snakefiles read: where they are, the config, the cores, the rules."""

    def __init__(self, builder: Builder) -> None:
        self._builder = builder

    @property
    def basedir(self) -> str:
        """The folder of the main rule file."""
        return os.path.dirname(self.main_snakefile)

    @property
    def current_basedir(self) -> str:
        """The folder of the rule file being executed (an include's own folder while it runs)."""
        return os.path.dirname(os.path.abspath(self._builder.current_file()))

    @property
    def main_snakefile(self) -> str:
        return os.path.abspath(self._builder.workflow.flowfile)

    @property
    def snakefile(self) -> str:
        """The rule file that asks (Snakemake reads the caller's file name too)."""
        return sys._getframe(1).f_code.co_filename

    def source_path(self, rel_path: Any) -> str:
        """``rel_path`` relative to the folder of the rule file that calls this, made absolute."""
        caller = sys._getframe(1).f_code.co_filename
        path = os.fspath(rel_path)
        return path if os.path.isabs(path) else os.path.normpath(
            os.path.join(os.path.dirname(os.path.abspath(caller)), path))

    @property
    def config(self) -> dict[str, Any]:
        return self._builder.workflow.config

    @property
    def configfiles(self) -> list[str]:
        return list(self._builder.workflow.configfiles)

    overwrite_configfiles = configfiles

    @property
    def cores(self) -> int:
        # -c as given (the job processes load with the run's cores too); else the machine's.
        return self._builder.workflow.cores or available_cores()

    @property
    def global_resources(self) -> dict[str, Any]:
        # --resources is not known while loading either: the machine's cores, nothing else.
        return {"_cores": self.cores, "_nodes": None}

    @property
    def is_main_process(self) -> bool:
        """False in the process that runs one step's run: block (Snakemake's job processes)."""
        main = sys.modules.get("__main__")
        spec = getattr(main, "__spec__", None)
        return getattr(spec, "name", None) != "flowmake.jobrun"

    @property
    def rules(self) -> list[Rule]:
        return list(self._builder.workflow.rules)

    def get_rule(self, name: str) -> Rule:
        return self._builder.workflow.rule(name)

    @property
    def workdir_init(self) -> str:
        return self._builder.workflow.workdir

    # Snakemake 7's remote providers are gone in 9; old Snakefiles still test the attribute.
    default_remote_provider = None
    default_remote_prefix = ""
    use_conda = use_singularity = use_apptainer = False
