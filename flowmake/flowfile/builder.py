"""The builder: the one object the executed rule file talks to (``__flowmake__`` in its namespace).

Each ``load_workflow`` makes a new Builder, Workflow and namespace dict, so two workflows loaded in
one process share nothing. Custom wildcard types are declared with::

    wildcard_type("sample_id", r"S\\d+", lambda s: int(s[1:]))
    rule x:
        output: "out/{id:sample_id}.txt"
"""

from __future__ import annotations

import copy
import hashlib
import os
import platform
import re
import subprocess
import sys
import tempfile
import types
from dataclasses import dataclass
from typing import Any, Callable

from flowmake.errors import FlowfileError, FlowmakeError, Location, _shown, did_you_mean
from flowmake.flowfile import config as configmod
from flowmake.flowfile.compat import builtins_with_snakemake
from flowmake.flowfile.helpers import namespace_helpers
from flowmake.flowfile.translate import HOOKS, Translation, translate
from flowmake.patterns import BUILTIN_TYPES, make_type
from flowmake.rules import Checkpoints, Rule, Rules, Workflow
from flowmake.settings import available_cores
from flowmake.shellfmt import Shell

_LIST_DIRECTIVES = ("input", "output", "log", "params", "resources")
_SINGLE_DIRECTIVES = ("threads", "priority", "retries", "message", "shell", "script", "container",
                      "singularity", "benchmark", "localrule", "default_target", "cache", "name")
_IGNORED = ("conda", "envmodules", "shadow", "group", "handover")


@dataclass(frozen=True)
class _Args:
    line: int
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


# Snakemake runs a Snakefile in its workflow module's globals, so rule files use these modules
# without importing them (``os.path.join`` in an input function, ``sys.exit`` in onerror).
_SNAKEFILE_MODULES = {m.__name__: m for m in (os, sys, re, subprocess, platform, copy, tempfile,
                                               hashlib)}


class Builder:
    def __init__(self, workflow: Workflow, command_line_config: dict[str, Any]) -> None:
        self.workflow = workflow
        self._cli_config = command_line_config
        self._files: list[tuple[str, Translation]] = []
        self._stack: list[str] = []
        # (rule names, where) from localrules/ruleorder: checked once every rule is known.
        self._name_refs: list[tuple[tuple[str, ...], Location]] = []
        self.namespace = self._make_namespace()
        # Like Snakemake, shell commands may name the rule file's globals ({config[x]}, {REF}).
        workflow.globals = self.namespace

    def _make_namespace(self) -> dict[str, Any]:
        wf = self.workflow
        helpers = namespace_helpers(lambda: wf.workdir)
        ns: dict[str, Any] = {
            "__builtins__": builtins_with_snakemake(helpers), "__name__": "__flowfile__", "__file__": wf.flowfile,
            "__flowmake__": self, "config": wf.config, "rules": Rules(wf),
            "checkpoints": Checkpoints(wf), "shell": Shell(wf.shell_settings),
            "wildcard_type": self.wildcard_type, "workflow": _WorkflowInfo(self),
        }
        ns.update(helpers)
        ns.update(_SNAKEFILE_MODULES, temporary=helpers["temp"])  # Snakemake's alias of temp()
        return ns

    # -- executing files ---------------------------------------------------------------------

    def exec_file(self, path: str) -> None:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise FlowfileError(f"cannot read '{path}': {e.strerror}") from None
        translation = translate(text, path, len(self._files))
        self._files.append((path, translation))
        try:
            code = compile(translation.source, path, "exec")
        except SyntaxError as e:
            raise _syntax_error(e, path, text) from None
        self._stack.append(path)
        try:
            exec(code, self.namespace)
        except FlowmakeError as e:
            if e.location is None:
                e.location = Location(path, _user_line(e.__traceback__, path))
            raise
        except Exception as e:  # user code at load time
            line = _user_line(e.__traceback__, path)
            raise FlowfileError(f"{type(e).__name__}: {e}", location=Location(path, line),
                                details=_source_detail(text, line)) from None
        finally:
            self._stack.pop()
        for hook in HOOKS:
            func = self.namespace.pop(f"__flow_{hook}__", None)
            if func is not None:
                self.workflow.hooks[hook] = func

    def _here(self, line: int) -> Location:
        return Location(self._stack[-1] if self._stack else self.workflow.flowfile, line)

    def _resolve(self, path: Any, base: str) -> str:
        path = os.fspath(path)
        return path if os.path.isabs(path) else os.path.normpath(os.path.join(base, path))

    # -- rules -------------------------------------------------------------------------------

    def args(self, line: int, *args: Any, **kwargs: Any) -> _Args:
        return _Args(line, args, kwargs)

    def rule(self, name: str | None, line: int, is_checkpoint: bool,
             file_id: int) -> Callable[..., None]:
        path, translation = self._files[file_id]

        def factory(_cls: str, _bases: tuple, ns: dict[str, Any]) -> None:
            directives = {k[7:-2]: v for k, v in ns.items()
                          if k.startswith("__flow_") and k.endswith("__")}
            location = Location(path, line)
            self._add_rule(name, location, is_checkpoint, directives,
                           translation.run_sources.get(line),
                           os.path.dirname(os.path.abspath(path)))

        return factory

    def _add_rule(self, name: str | None, location: Location, is_checkpoint: bool,
                  directives: dict[str, Any], run_source: str | None, basedir: str) -> None:
        kw: dict[str, Any] = {}
        for d, value in directives.items():
            if d == "run":
                kw["run"], kw["run_source"] = value, run_source
            elif d in _IGNORED:
                continue
            elif d in _LIST_DIRECTIVES:
                if d == "resources" and value.args:
                    raise FlowfileError("resources must be named (mem_mb=1000)",
                                        location=Location(location.file, value.line))
                kw[d] = [(None, a) for a in value.args] + list(value.kwargs.items())
            elif d == "wildcard_constraints":
                kw[d] = _constraints(value, location.file)
            else:
                kw["container" if d == "singularity" else d] = _single(d, value, location.file)
        rule_name = kw.pop("name", None) or name or f"rule{len(self.workflow.rules) + 1}"
        if not isinstance(rule_name, str) or not re.fullmatch(r"[A-Za-z_][\w-]*", rule_name):
            raise FlowfileError(f"invalid rule name {rule_name!r}", location=location)
        for key in ("shell", "script", "message"):
            if key in kw and not isinstance(kw[key], str):
                raise FlowfileError(f"'{key}' must be a string", location=location, rule=rule_name)
        rule = Rule(self.workflow, rule_name, location, is_checkpoint=is_checkpoint,
                    basedir=basedir, **kw)
        self.workflow.add_rule(rule)

    # -- top-level directives ------------------------------------------------------------------

    def include(self, line: int, path: Any) -> None:
        base = os.path.dirname(self._stack[-1])
        target = self._resolve(path, base)
        if not os.path.isfile(target):
            raise FlowfileError(f"cannot include '{os.fspath(path)}': file not found",
                                location=self._here(line),
                                hint=f"looked for {_shown(target)}: include: paths are relative "
                                "to the file that includes")
        if target in self.workflow.files:
            return  # like Snakemake, a file is included once
        self.workflow.files.append(target)
        self.exec_file(target)

    def configfile(self, line: int, path: Any) -> None:
        target = self._resolve(path, self.workflow.workdir)
        data = configmod.load_configfile(target, self._here(line))
        configmod.merge(self.workflow.config, data)
        configmod.merge(self.workflow.config, self._cli_config)
        if target not in self.workflow.files:
            self.workflow.files.append(target)

    def localrules(self, line: int, *names: str) -> None:
        self._name_refs.append((names, self._here(line)))
        self.workflow.localrules.update(names)

    def ruleorder(self, line: int, *names: str) -> None:
        if len(names) < 2:
            raise FlowfileError("ruleorder needs at least two rules: a > b", location=self._here(line))
        self._name_refs.append((names, self._here(line)))
        self.workflow.ruleorder.append(tuple(names))

    def check_rule_names(self) -> None:
        """Every rule that localrules/ruleorder name exists; else FlowfileError at the directive."""
        known = [r.name for r in self.workflow.rules]
        for names, where in self._name_refs:
            for name in names:
                if not self.workflow.has_rule(name):
                    # The message is the one Workflow.finalize gives; this adds the line.
                    raise FlowfileError(f"unknown rule '{name}' in ruleorder/localrules",
                                        location=where, hint=did_you_mean(name, known))

    def wildcard_constraints(self, line: int, *args: Any, **constraints: Any) -> None:
        value = _Args(line, args, constraints)
        self.workflow.wildcard_constraints.update(_constraints(value, self._here(line).file))

    def workdir(self, line: int, path: Any) -> None:
        target = self._resolve(path, self.workflow.workdir)
        os.makedirs(target, exist_ok=True)  # Snakemake creates it too
        self.workflow.workdir = target

    def container(self, line: int, image: Any) -> None:
        self.workflow.container = str(image)

    singularity = container

    def _ignore(self, line: int, *args: Any, **kwargs: Any) -> None:
        """conda/envvars/report/containerized/resource_scopes at top level: accepted, no effect
        (resource scopes matter only to cluster group jobs)."""

    conda = envvars = report = containerized = resource_scopes = _ignore

    def wildcard_type(self, name: str, regex: str, convert: Callable[[str], Any] | None = None,
                      ) -> None:
        if name in BUILTIN_TYPES:
            raise FlowfileError(f"wildcard type '{name}' is built in and cannot be redefined")
        self.workflow.wildcard_types[name] = make_type(name, regex, convert)


class _WorkflowInfo:
    """The read-only ``workflow`` object Snakefiles use for ``workflow.basedir`` and friends."""

    def __init__(self, builder: Builder) -> None:
        self._builder = builder

    @property
    def basedir(self) -> str:
        return os.path.dirname(os.path.abspath(self._builder.workflow.flowfile))

    @property
    def current_basedir(self) -> str:
        stack = self._builder._stack
        return os.path.dirname(os.path.abspath(stack[-1])) if stack else self.basedir

    @property
    def main_snakefile(self) -> str:
        return os.path.abspath(self._builder.workflow.flowfile)

    snakefile = main_snakefile

    @property
    def config(self) -> dict[str, Any]:
        return self._builder.workflow.config

    @property
    def cores(self) -> int:
        # --cores is not known while loading; the scheduler caps threads at the real value anyway.
        return available_cores()


def _single(d: str, value: _Args, file: str) -> Any:
    if len(value.args) != 1 or value.kwargs:
        raise FlowfileError(f"'{d}' takes a single value", location=Location(file, value.line))
    return value.args[0]


def _constraints(value: _Args, file: str) -> dict[str, str]:
    if value.args:
        raise FlowfileError("wildcard_constraints must be named (sample=r\"[a-z]+\")",
                            location=Location(file, value.line))
    for name, regex in value.kwargs.items():
        try:
            re.compile(regex)
        except (re.error, TypeError) as e:
            raise FlowfileError(f"bad wildcard constraint for '{name}': {e}",
                                location=Location(file, value.line)) from None
    return dict(value.kwargs)


def _user_line(tb: types.TracebackType | None, path: str) -> int | None:
    """The line of the deepest traceback frame that is in the rule file."""
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == path:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _source_detail(text: str, line: int | None) -> list[str]:
    lines = text.splitlines()
    if line and 0 < line <= len(lines) and lines[line - 1].strip():
        return [lines[line - 1].strip()]
    return []


def _syntax_error(e: SyntaxError, path: str, text: str) -> FlowfileError:
    return FlowfileError(f"invalid syntax: {e.msg}", location=Location(path, e.lineno),
                         details=_source_detail(text, e.lineno))
