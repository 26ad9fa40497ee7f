"""The builder: the one object the executed rule file talks to (``__flowmake__`` in its namespace).

Each ``load_workflow`` makes a new Builder, Workflow and namespace dict, so two workflows loaded in
one process share nothing. Custom wildcard types are declared with::

    wildcard_type("sample_id", r"S\\d+", lambda s: int(s[1:]))
    rule x:
        output: "out/{id:sample_id}.txt"
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
import types
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

from flowmake.errors import FlowfileError, FlowmakeError, Location, _shown, did_you_mean
from flowmake import shellfmt
from flowmake.flowfile import compat
from flowmake.flowfile import config as configmod
from flowmake.flowfile import helpers
from flowmake.flowfile import modules
from flowmake.flowfile import namespace as nsmod
from flowmake.flowfile.scatter import ScatterGather
from flowmake.flowfile.translate import HOOKS, Translation, translate
from flowmake.namedlist import ExtensionList, Flag, Flagged, FlaggedFunction, flags_of
from flowmake.patterns import BUILTIN_TYPES, make_type
from flowmake.rules import Rule, Workflow
from flowmake.storage import StorageRegistry

_LIST_DIRECTIVES = ("input", "output", "log", "params", "resources")
_SINGLE_DIRECTIVES = ("threads", "priority", "retries", "message", "shell", "script", "container",
                      "singularity", "benchmark", "localrule", "default_target", "cache", "name",
                      "wrapper", "notebook", "conda")
_IGNORED = ("group",)


@dataclass(frozen=True)
class _Args:
    line: int
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


@dataclass(frozen=True)
class Reading:
    """Flags that change how the rule file is read: ``--all-temp`` (every output temp()),
    ``--consider-ancient`` (rule → input names/positions made ancient()) and
    ``--replace-workflow-config`` (the command line's config replaces a configfile:'s)."""

    all_temp: bool = False
    consider_ancient: Mapping[str, frozenset[str | int]] = field(default_factory=dict)
    replace_config: bool = False


class Builder:
    def __init__(self, workflow: Workflow, command_line_config: dict[str, Any],
                 default_storage: tuple[str, str] | None = None) -> None:
        self.workflow = workflow
        # The rule file's `storage` object; --default-storage-provider maps inputs and outputs.
        self.storage = workflow.storage = StorageRegistry(default_storage)
        self._cli_config = command_line_config
        self.reading = Reading()  # load_workflow sets the command line's
        self._files: list[tuple[str, Translation]] = []
        self._stack: list[str] = []
        # (rule names, where) from localrules/ruleorder: checked once every rule is known.
        self._name_refs: list[tuple[tuple[str, ...], Location]] = []
        # inputflags:/outputflags: the flag helpers applied to the inputs/outputs of later rules,
        # each with the flags it sets (to skip a file that has them or a contradicting one).
        self._default_flags: dict[str, list[tuple[Callable[[Any], Any], frozenset[Flag]]]] = {
            "input": [], "output": []}
        self._pepfile: str | None = None
        self.info = nsmod.WorkflowInfo(self)
        self.standins: dict[str, types.ModuleType] = {}  # snakemake.*, set by make_namespace
        self.scatter = ScatterGather(workflow)  # load_workflow sets its --set-scatter overrides
        self.namespace = self._make_namespace()
        self.root = modules.Scope(self, None, self.namespace)  # the main file's rules and modules
        # Like Snakemake, shell commands may name the rule file's globals ({config[x]}, {REF}).
        workflow.globals = self.namespace

    def _make_namespace(self) -> dict[str, Any]:
        """A fresh namespace: the main file's, and each module's (modules add their own names)."""
        ns = nsmod.make_namespace(self)
        # github(), gitlab(), gitfile(), and local(), which also keeps a path from a module's prefix
        ns.update(modules.NAMES)
        ns["storage"] = self.storage
        ns["scatter"], ns["gather"] = self.scatter.scatter, self.scatter.gather
        return ns

    def current_file(self) -> str:
        return self._stack[-1] if self._stack else self.workflow.flowfile

    # -- executing files ---------------------------------------------------------------------

    def exec_file(self, path: str, namespace: dict[str, Any] | None = None) -> None:
        """Run a rule file in the main namespace, or in a module's (``modules``)."""
        ns = self.namespace if namespace is None else namespace
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
            with import_path([os.path.dirname(os.path.abspath(path))]), compat.serving(self.standins):
                exec(code, ns)
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
            func = ns.pop(f"__flow_{hook}__", None)
            if func is not None and ns is self.namespace:
                self.workflow.hooks[hook] = func
            elif func is not None:  # as in Snakemake, a module's is only M.onstart() for the user
                ns[hook] = func

    def _here(self, line: int) -> Location:
        return Location(self._stack[-1] if self._stack else self.workflow.flowfile, line)

    def _resolve(self, path: Any, base: str) -> str:
        path = os.fspath(path)
        return path if os.path.isabs(path) else os.path.normpath(os.path.join(base, path))

    # -- rules -------------------------------------------------------------------------------

    def args(self, line: int, *args: Any, **kwargs: Any) -> _Args:
        return _Args(line, args, kwargs)

    def fshell(self, source: str, func: Callable[..., str]) -> shellfmt.DeferredCommand:
        """A ``shell:`` f-string, formatted for each step (see ``shellfmt.DeferredCommand``)."""
        return shellfmt.DeferredCommand(source, func)

    def rule(self, name: str | None, line: int, is_checkpoint: bool,
             file_id: int) -> Callable[..., None]:
        return modules.rule_factory(self, self.root, name, line, is_checkpoint, file_id)

    def module(self, line: int, name: str | None, /, **keys: Any) -> None:
        self.root.module(line, name, **keys)

    def use_rule(self, line: int, rules: tuple[str, ...], module: str | None,
                 exclude: tuple[str, ...], pattern: str | None, file_id: int) -> Callable[..., None]:
        return self.root.use_rule(line, rules, module, exclude, pattern, file_id)

    def make_rule(self, name: str | None, location: Location, is_checkpoint: bool,
                  directives: dict[str, Any], run_source: str | None, basedir: str) -> Rule:
        kw: dict[str, Any] = {}
        for d, value in directives.items():
            if d == "run":
                # Modules beside the rule files import in a run: block too (as while loading).
                kw["run"], kw["run_source"] = _importing(value, self._import_dirs, self.standins), run_source
            elif d in _IGNORED:
                continue
            elif d in _LIST_DIRECTIVES:
                if d == "resources" and value.args:
                    raise FlowfileError("resources must be named (mem_mb=1000)",
                                        location=Location(location.file, value.line))
                kw[d] = self._items(d, self._flagged_by_cli(d, name, value))
                if d in ("input", "output"):
                    kw[d] = [(n, self.storage.map_default(v)) for n, v in kw[d]]
                if d in ("input", "output", "log"):
                    kw[d] = [(n, _within(v, self.workflow.workdir)) for n, v in kw[d]]
            elif d == "wildcard_constraints":
                kw[d] = _constraints(value, location.file)
            elif d == "envmodules":
                kw[d] = tuple(str(a) for a in value.args)
            else:
                kw["container" if d == "singularity" else d] = _single(d, value, location.file)
        rule_name = kw.pop("name", None) or name or f"rule{len(self.workflow.rules) + 1}"
        if not isinstance(rule_name, str) or not re.fullmatch(r"[A-Za-z_][\w-]*", rule_name):
            raise FlowfileError(f"invalid rule name {rule_name!r}", location=location)
        for key in ("shell", "script", "message", "wrapper", "notebook"):
            if key in kw and not isinstance(kw[key], str):
                raise FlowfileError(f"'{key}' must be a string", location=location, rule=rule_name)
        return Rule(self.workflow, rule_name, location, is_checkpoint=is_checkpoint,
                    basedir=basedir, **kw)

    def _items(self, d: str, value: _Args) -> list[tuple[str | None, Any]]:
        """A list directive's (name, value) pairs: named multiext() paths become named items,
        and inputflags:/outputflags: apply to input/output."""
        pairs: list[tuple[str | None, Any]] = []
        for a in value.args:
            if isinstance(a, ExtensionList) and d in ("input", "output", "log"):
                pairs.extend(zip(a.names, list(a)))
            else:
                pairs.append((None, a))
        pairs += list(value.kwargs.items())
        if d != "input" and any(isinstance(v, FlaggedFunction) and v.unpack for _, v in pairs):
            raise FlowfileError(f"unpack() is only for input functions, not {d}",
                                location=self._here(value.line),
                                hint="a params function may return a dict: {params.name[key]}")
        defaults = self._default_flags.get(d)
        if defaults:
            pairs = [(n, _with_defaults(v, defaults)) for n, v in pairs]
        return pairs

    def _flagged_by_cli(self, d: str, rule: str | None, value: _Args) -> _Args:
        """``value`` with --all-temp's temp() on outputs, --consider-ancient's ancient() on
        the named or numbered (positional, from 0) inputs of ``rule``."""
        if d == "output" and self.reading.all_temp:
            wrap: list[tuple[Callable[[Any], Any], frozenset[Flag]]] = [
                (helpers.temporary, frozenset({Flag.TEMP}))]
            return _Args(value.line, tuple(_with_defaults(a, wrap) for a in value.args),
                         {k: _with_defaults(v, wrap) for k, v in value.kwargs.items()})
        ancient = self.reading.consider_ancient.get(rule or "")
        if d != "input" or not ancient:
            return value
        mark: list[tuple[Callable[[Any], Any], frozenset[Flag]]] = [
            (helpers.ancient, frozenset({Flag.ANCIENT}))]
        return _Args(value.line,
                     tuple(_with_defaults(a, mark) if i in ancient else a
                           for i, a in enumerate(value.args)),
                     {k: _with_defaults(v, mark) if k in ancient else v
                      for k, v in value.kwargs.items()})

    def _import_dirs(self) -> list[str]:
        return list(dict.fromkeys(os.path.dirname(os.path.abspath(p)) for p, _ in self._files))

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
        if not os.path.exists(target) and self.workflow.configfiles:
            # Snakemake: a missing configfile: is no error when --configfile gave the config.
            return
        data = configmod.load_configfile(target, self._here(line))
        if self.reading.replace_config and self._cli_config:
            # Snakemake: the file's values are discarded, the command line's config is all.
            self.workflow.config.clear()
        else:
            configmod.merge(self.workflow.config, data)
        configmod.merge(self.workflow.config, self._cli_config)
        if target not in self.workflow.files:
            self.workflow.files.append(target)

    def inputflags(self, line: int, *flags: Any) -> None:
        self._set_default_flags("input", line, flags)

    def outputflags(self, line: int, *flags: Any) -> None:
        self._set_default_flags("output", line, flags)

    def _set_default_flags(self, what: str, line: int, flags: tuple[Any, ...]) -> None:
        """Like Snakemake, each directive replaces the defaults before it, for the rules after it."""
        found = []
        for f in flags:
            if not callable(f):
                raise FlowfileError(f"{what}flags: takes flag functions such as temp, not {f!r}",
                                    location=self._here(line))
            try:
                sets = flags_of(f("x"))  # which flags this helper sets
            except Exception as e:
                raise FlowfileError(f"{what}flags: {f!r} is not a flag function: {e}",
                                    location=self._here(line)) from None
            found.append((f, sets))
        self._default_flags[what] = found

    def pepfile(self, line: int, path: Any, namespace: dict[str, Any] | None = None) -> None:
        """``pep`` in the rule file's namespace (``namespace``: a module's, which gets its own)."""
        peppy = _optional("peppy", "pepfile:", self._here(line))
        target = self._resolve(path, self.workflow.workdir)
        try:
            (self.namespace if namespace is None else namespace)["pep"] = peppy.Project(target)
        except Exception as e:  # peppy's own errors: a bad or missing project file
            raise FlowfileError(f"pepfile '{_shown(target)}': {type(e).__name__}: {e}",
                                location=self._here(line)) from None
        self._pepfile = target
        if target not in self.workflow.files:
            self.workflow.files.append(target)

    def pepschema(self, line: int, schema: Any, namespace: dict[str, Any] | None = None) -> None:
        eido = _optional("eido", "pepschema:", self._here(line))
        project = (self.namespace if namespace is None else namespace).get("pep")
        if self._pepfile is None or project is None:
            raise FlowfileError("pepschema: needs a pepfile: before it", location=self._here(line))
        target = self._resolve(schema, os.path.dirname(os.path.abspath(self.current_file())))
        try:
            eido.validate_project(project=project, schema=target)
        except Exception as e:  # eido's validation errors say which sample and attribute
            raise FlowfileError(f"the PEP does not match the schema '{_shown(target)}': "
                                f"{type(e).__name__}: {e}", location=self._here(line)) from None

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

    def storage_directive(self, line: int, tag: str | None, **settings: Any) -> None:
        """`storage: provider="s3", ...` and `storage NAME: provider="s3", endpoint_url=...`."""
        self.storage.register(self._here(line), tag, **settings)

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

    def scattergather(self, line: int, **counts: Any) -> None:
        self.scatter.declare(counts)

    def wildcard_type(self, name: str, regex: str, convert: Callable[[str], Any] | None = None,
                      ) -> None:
        if name in BUILTIN_TYPES:
            raise FlowfileError(f"wildcard type '{name}' is built in and cannot be redefined")
        self.workflow.wildcard_types[name] = make_type(name, regex, convert)


def _optional(module: str, directive: str, where: Location) -> Any:
    try:
        return __import__(module)
    except ImportError:
        raise FlowfileError(f"{directive} needs the '{module}' package, which is not installed",
                            location=where, hint="pip install 'flowmake[pep]'") from None


def _with_defaults(value: Any, defaults: list[tuple[Callable[[Any], Any], frozenset[Flag]]]) -> Any:
    """``value`` with each default flag it has neither itself nor a contradicting one of."""
    if isinstance(value, ExtensionList):
        return ExtensionList([_with_defaults(v, defaults) for v in value], value.names)
    if isinstance(value, (list, tuple)):
        return [_with_defaults(v, defaults) for v in value]
    for func, sets in defaults:
        has = flags_of(value)
        if any(f in has or _CONTRADICTS.get(f, frozenset()) & has for f in sets):
            continue
        value = func(value)
    return value


_CONTRADICTS = {Flag.TEMP: frozenset({Flag.PROTECTED}), Flag.PROTECTED: frozenset({Flag.TEMP})}


@contextlib.contextmanager
def import_path(dirs: list[str]) -> Iterator[None]:
    """The rule files' folders first on sys.path, so modules beside them import (as in Snakemake),
    and off it again afterwards, so loading leaves the process as it was."""
    added = [d for d in dirs if d not in sys.path]
    sys.path[:0] = added
    try:
        yield
    finally:
        for d in added:
            if d in sys.path:
                sys.path.remove(d)


def _importing(func: Callable[..., Any], dirs: Callable[[], list[str]],
               standins: dict[str, types.ModuleType]) -> Callable[..., Any]:
    @functools.wraps(func)
    def run(*args: Any, **kwargs: Any) -> Any:
        with import_path(dirs()), compat.serving(standins):
            return func(*args, **kwargs)
    return run


def _single(d: str, value: _Args, file: str) -> Any:
    if len(value.args) != 1 or value.kwargs:
        raise FlowfileError(f"'{d}' takes a single value", location=Location(file, value.line))
    return value.args[0]


def _within(value: Any, workdir: str) -> Any:
    """An absolute path inside the workdir as the workdir-relative path it names (Snakemake takes
    ``os.path.join(os.getcwd(), "x")``, and so do we); others are left as they are."""
    if isinstance(value, (list, tuple)):
        return [_within(v, workdir) for v in value]
    if isinstance(value, dict):
        return {k: _within(v, workdir) for k, v in value.items()}
    if type(value) not in (str, Flagged) or not os.path.isabs(value):
        return value
    root = os.path.realpath(workdir)
    rel = os.path.relpath(os.path.realpath(os.path.dirname(value)), root)
    if rel == ".." or rel.startswith("../"):
        return value
    path = os.path.normpath(os.path.join(rel, os.path.basename(value)))
    return Flagged(path, value.flags, value.data) if isinstance(value, Flagged) else path


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
