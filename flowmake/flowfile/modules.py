"""Snakemake's module system: ``module NAME:``, ``use rule ... from NAME`` and ``use rule X as Y``.

The semantics are Snakemake 9's. Each ``use rule ... from M`` statement executes M's Snakefile
afresh in a namespace of its own (its own ``config``, ``rules``, ``checkpoints``, wildcard
constraints, ruleorder, localrules and container), under a ``Scope``. Every rule the file declares
is offered to that scope, which

1. keeps it only if the statement names it (``use rule a, b``, ``*``, ``exclude``),
2. renames it (``as m_*``),
3. rewrites its relative input/output/log/benchmark paths by the module's ``prefix:`` or
   ``replace_prefix:`` (absolute paths, ``../`` paths and ``local()`` ones stay; input functions'
   results are rewritten when called),
4. replaces directives by the statement's ``with:`` block (``params`` by keyword; the action stays),

and hands it to the enclosing scope, up to the root, which adds it to the workflow. A module that
uses modules nests scopes, so prefixes compose and names are renamed at each level. Paths in a
``with:`` block are written in the using file, so no prefix applies to them.

Inside a module, ``rules.x`` is rule x as the module wrote it (paths before rewriting): its
outputs, used as another module rule's inputs (directly, through ``expand`` or an f-string), are
rewritten exactly once. Snakemake instead hands out the rewritten paths, marked so that they are not
rewritten again (a mark an f-string loses); the two differ only where a module's ``params:`` or
command names ``rules.x``'s paths, which here are the module's own.
``checkpoints.x`` is the imported checkpoint. After the statement the module's namespace is
available to the using file under the module's name (``M.some_function()``).

A rule made by ``use rule *`` may be replaced once by a later statement naming it (Snakemake's
"modify an imported rule"); any other second definition of a name is an error.
"""

from __future__ import annotations

import itertools
import os
import types
from dataclasses import dataclass, replace
from typing import Any, Callable

import flowmake.flowfile.builder as builder_mod
import flowmake.flowfile.module_ns as module_ns
from flowmake.errors import FlowfileError, FlowmakeError, Location, _shown, did_you_mean
from flowmake import wrappers
from flowmake.flowfile import sources
from flowmake.flowfile.paths import PathRewrite, local
from flowmake.rules import Rule

NAMES: dict[str, Any] = {"github": sources.github, "gitlab": sources.gitlab,
                         "gitfile": sources.gitfile, "local": local}
PATH_DIRECTIVES = ("input", "output", "log", "benchmark")
_RESERVED = ("workflow", "rules", "checkpoints", "config")
_statements = itertools.count(1)


@dataclass(frozen=True)
class Decl:
    """A rule as one scope sees it: its directives, with paths in that scope's terms."""

    location: Location
    is_checkpoint: bool
    directives: dict[str, Any]
    run_source: str | None
    basedir: str
    home: Scope  # where it was written: its namespace, constraints and container


@dataclass
class ModuleInfo:
    name: str
    location: Location
    keys: dict[str, Any]
    base: str  # the folder of the file that declares the module
    paths: PathRewrite


def module_snakefile(info: ModuleInfo, where: Location, wrapper_prefix: str) -> str:
    """The local path of a module's Snakefile (a meta-wrapper's is ``<prefix><name>/test/Snakefile``)."""
    meta = info.keys.get("meta_wrapper")
    if meta is not None:
        try:
            return wrappers.meta_wrapper_snakefile(str(meta), wrapper_prefix)
        except FlowmakeError as e:
            e.location = e.location or info.location
            raise
    snakefile = info.keys.get("snakefile")
    snakefile = sources.shorthand(snakefile) or snakefile
    if snakefile is None:
        raise FlowfileError(f"module '{info.name}' has no 'snakefile:'", location=info.location)
    if isinstance(snakefile, sources.HostedFile) or sources.is_url(snakefile):
        return sources.fetch(snakefile, f"module '{info.name}'", info.location)
    path = os.fspath(snakefile)
    path = path if os.path.isabs(path) else os.path.normpath(os.path.join(info.base, path))
    if not os.path.isfile(path):
        raise FlowfileError(f"module '{info.name}': no Snakefile '{os.fspath(snakefile)}'",
                            location=info.location, details=[f"used at {where}"],
                            hint=f"looked for {_shown(path)}: snakefile: is relative to the file "
                            "that declares the module")
    return path


class Scope:
    """The root (the main rule file and its includes) or one execution of a module file."""

    def __init__(self, builder: Any, parent: Scope | None, namespace: dict[str, Any],
                 info: ModuleInfo | None = None, select: Callable[[str], str | None] | None = None,
                 overrides: dict[str, Any] | None = None) -> None:
        self.builder = builder
        self.parent = parent
        self.namespace = namespace
        self.info = info
        self._select = select
        self._overrides = overrides or {}
        self.decls: dict[str, Decl] = {}
        self.final: dict[str, str] = {}  # name in this scope → name in the workflow
        self.modules: dict[str, ModuleInfo] = {}
        self.constraints: dict[str, str] = {}
        self.container: str | None = None
        self.refs: list[tuple[str, tuple[str, ...], Location]] = []  # localrules/ruleorder
        self.source: sources.HostedFile | None = None
        # The `use rule` of this scope being executed (id, is `*`, where), and which statement
        # (None: a rule block) gave each name this scope passed on, and where.
        self.statement: tuple[int, bool, Location] | None = None
        self.owners: dict[str, tuple[int | None, bool, Location]] = {}
        self._shadows: dict[str, Rule] = {}

    @property
    def root(self) -> Scope:
        return self if self.parent is None else self.parent.root

    def here(self, line: int) -> Location:
        return self.builder._here(line)

    # -- rules passing up ----------------------------------------------------------------------

    def declare(self, name: str, decl: Decl) -> str | None:
        """Offer a rule to this scope; the name it has in the workflow, or None if not used."""
        self.decls[name] = decl
        self._shadows.pop(name, None)
        if self.parent is None:
            self._add(name, decl)
            self.final[name] = name
            return name
        if self._select is None or self.info is None:  # every scope but the main one has both
            raise FlowfileError(f"internal: module scope without a selection for rule '{name}'")
        new = self._select(name)
        if new is None:
            return None
        self._claim(new, decl.location)
        directives = dict(decl.directives)
        for d in PATH_DIRECTIVES:
            if d in directives and self.info.paths.active:
                directives[d] = self.info.paths.args(directives[d], decl.location)
        result = self.parent.declare(new, replace(decl, directives=_override(directives, self._overrides)))
        if result is not None:
            self.final[name] = result
        return result

    def _add(self, name: str, decl: Decl) -> None:
        rule = self.make_rule(name, decl)
        stmt = self.statement
        rule.used_at = stmt[2] if stmt else None
        if self._claim(name, decl.location):
            self.builder.workflow.add_rule(rule)
        else:
            self.builder.workflow.replace_rule(rule)  # an imported rule modified by a later `use rule`

    def _claim(self, name: str, location: Location) -> bool:
        """True if ``name`` is new in this scope, False if it may replace the rule of that name:
        one a `use rule *` made, modified by a later `use rule` naming it (once), or the same
        statement's (a nested module did the modifying). Else the rule is defined twice."""
        stmt = self.statement
        owner = self.owners.get(name)
        if owner is None:
            self.owners[name] = (stmt[0], stmt[1], location) if stmt else (None, False, location)
            return True
        same = stmt is not None and owner[0] == stmt[0]
        if stmt is not None and (same or (owner[1] and not stmt[1])):
            self.owners[name] = (stmt[0], owner[1] and same, location)
            return False
        raise FlowfileError(f"rule '{name}' is defined twice (first at {owner[2]})", location=location,
                            rule=name)

    def make_rule(self, name: str, decl: Decl) -> Rule:
        home = decl.home
        directives = decl.directives
        if home.container and "container" not in directives and "singularity" not in directives:
            directives = {**directives, "container": builder_mod._Args(0, (home.container,), {})}
        rule: Rule = self.builder.make_rule(name, decl.location, decl.is_checkpoint, directives,
                                            decl.run_source, decl.basedir)
        if home.info is not None:
            rule.module = home.info.name
            rule.module_globals = home.namespace
            rule.scope_constraints = home.constraints
        return rule

    def shadow(self, name: str) -> Rule:
        """Rule ``name`` as this scope declared it, for ``rules.name`` (never in the workflow)."""
        if name not in self._shadows:
            self._shadows[name] = self.make_rule(name, self.decls[name])
        return self._shadows[name]

    # -- statements ----------------------------------------------------------------------------

    def module(self, line: int, name: str | None, /, **keys: Any) -> None:
        where = self.here(line)
        if "name" in keys:
            if name is not None:
                raise FlowfileError(f"module '{name}' is named twice (after 'module' and by "
                                    "'name:')", location=where)
            name = keys.pop("name")
        if name is None:
            raise FlowfileError("a module needs a name: 'module NAME:' or a 'name:' key",
                                location=where)
        if not isinstance(name, str) or not name.isidentifier():
            raise FlowfileError(f"invalid module name {name!r}", location=where)
        if name in _RESERVED:
            raise FlowfileError(f"a module cannot be named '{name}'", location=where)
        if keys.get("snakefile") is None and keys.get("meta_wrapper") is None:
            raise FlowfileError(f"module '{name}' needs 'snakefile:' or 'meta_wrapper:'", location=where)
        paths = PathRewrite(keys.get("prefix"), keys.get("replace_prefix"), where)
        base = os.path.dirname(os.path.abspath(where.file))
        self.modules[name] = ModuleInfo(name, where, keys, base, paths)

    def use_rule(self, line: int, rules: tuple[str, ...], module: str | None,
                 exclude: tuple[str, ...], pattern: str | None, file_id: int) -> Callable[..., None]:
        where = self.here(line)

        def factory(_cls: str = "___", _bases: tuple = (), ns: dict[str, Any] | None = None) -> None:
            overrides = {k[7:-2]: v for k, v in (ns or {}).items()
                         if k.startswith("__flow_") and k.endswith("__")}
            scopes = [self] if self.root.statement is not None else [self, self.root]
            saved = [s.statement for s in scopes]
            for s in scopes:  # the root's names where the rules go; ours for ownership
                s.statement = (next(_statements), rules == ("*",), where)
            try:
                if module is None:
                    self._use_local(where, rules, pattern, overrides)
                else:
                    self._use_from(where, rules, module, exclude, pattern, overrides)
            finally:
                for s, old in zip(scopes, saved):
                    s.statement = old

        return factory

    def _use_local(self, where: Location, rules: tuple[str, ...], pattern: str | None,
                   overrides: dict[str, Any]) -> None:
        if len(rules) != 1:
            raise FlowfileError("'use rule' without 'from' takes one rule", location=where)
        base = self.decls.get(rules[0])
        if base is None:
            raise FlowfileError(f"use rule: no rule '{rules[0]}' defined before this statement",
                                location=where, hint=did_you_mean(rules[0], self.decls))
        rename = _renamer(rules, pattern, where)
        new = rename(rules[0]) if rename else rules[0]
        self.declare(new, replace(base, location=where,
                                  directives=_override(dict(base.directives), overrides)))

    def _use_from(self, where: Location, rules: tuple[str, ...], module: str,
                  exclude: tuple[str, ...], pattern: str | None, overrides: dict[str, Any]) -> None:
        info, pattern = self._find_module(module, pattern, where)
        rename = _renamer(rules, pattern, where)
        wanted = None if rules == ("*",) else set(rules)
        if "*" in rules and len(rules) > 1:
            raise FlowfileError("'use rule *' cannot name other rules too", location=where)

        def select(name: str) -> str | None:
            if (wanted is not None and name not in wanted) or name in exclude:
                return None
            return rename(name) if rename else name

        path = module_snakefile(info, where, self.builder.workflow.deployment.wrapper_prefix)
        if path not in self.builder.workflow.files:  # the graph memo fingerprints these
            self.builder.workflow.files.append(path)
        child = Scope(self.builder, self, {}, info, select, overrides)
        hosted = sources.shorthand(info.keys.get("snakefile")) or info.keys.get("snakefile")
        if isinstance(hosted, sources.HostedFile):
            child.source = hosted
        child.namespace = module_ns.module_namespace(self.builder, child, path)
        try:
            self.builder.exec_file(path, child.namespace)
        except FlowmakeError as e:
            e.details.append(f"in module '{info.name}', used at {where}")
            raise
        child.finish()
        missing = sorted((wanted or set()) - child.decls.keys())
        if missing:
            raise FlowfileError(f"module '{info.name}' has no rule '{missing[0]}'", location=where,
                                hint=did_you_mean(missing[0], child.decls),
                                details=[f"module file: {_shown(path)}"])
        mod = types.ModuleType(info.name)
        mod.__dict__.update(child.namespace)
        self.namespace[info.name] = mod

    def _find_module(self, module: str, pattern: str | None,
                     where: Location) -> tuple[ModuleInfo, str | None]:
        if module in self.modules:
            return self.modules[module], pattern
        value = self.namespace.get(module)
        if isinstance(value, str) and value in self.modules:
            # Snakemake's dynamic modules: `use rule * from name_var as alias_var*`.
            if pattern is not None:
                var = pattern[:-1] if pattern.endswith("*") else pattern
                if var not in self.namespace:
                    raise FlowfileError(f"use rule: '{var}' names no variable, as a dynamic "
                                        f"module '{value}' needs", location=where)
                pattern = f"{self.namespace[var]}*" if pattern.endswith("*") else str(self.namespace[var])
            return self.modules[value], pattern
        raise FlowfileError(f"unknown module '{module}'", location=where,
                            hint=did_you_mean(module, self.modules) or
                            f"declare it first with 'module {module}:'")

    def finish(self) -> None:
        """Map the module's localrules/ruleorder to the names its rules got in the workflow."""
        wf = self.builder.workflow
        for kind, names, _where in self.refs:
            mapped = tuple(self.final[n] for n in names if n in self.final)
            if kind == "localrules":
                wf.localrules.update(mapped)
            elif len(mapped) >= 2:
                wf.ruleorder.append(mapped)


def _override(directives: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Snakemake's `with:`: each directive replaced, but params merged by keyword."""
    for d, value in overrides.items():
        old = directives.get(d)
        if d == "params" and old is not None:
            value = builder_mod._Args(value.line, value.args or old.args, {**old.kwargs, **value.kwargs})
        directives[d] = value
    return directives


def _renamer(rules: tuple[str, ...], pattern: str | None,
             where: Location) -> Callable[[str], str] | None:
    if pattern is None:
        return None
    if "*" in pattern:
        return lambda name: pattern.replace("*", name)
    if "*" in rules or len(rules) > 1:
        raise FlowfileError(f"several rules cannot all be named '{pattern}'", location=where,
                            hint=f"put '*' in the name, e.g. '{pattern}_*'")
    return lambda name: pattern


def rule_factory(builder: Any, scope: Scope, name: str | None, line: int, is_checkpoint: bool,
                 file_id: int) -> Callable[..., None]:
    """The metaclass of a translated ``rule`` block: its directives become a Decl of ``scope``."""
    path, translation = builder._files[file_id]

    def factory(_cls: str, _bases: tuple, ns: dict[str, Any]) -> None:
        directives = {k[7:-2]: v for k, v in ns.items()
                      if k.startswith("__flow_") and k.endswith("__")}
        location = Location(path, line)
        rule_name = name
        if "name" in directives:  # `name:` sets the rule's own name, before any renaming
            rule_name = builder_mod._single("name", directives.pop("name"), path)
        rule_name = rule_name or f"rule{len(builder.workflow.rules) + 1}"
        decl = Decl(location, is_checkpoint, directives, translation.run_sources.get(line),
                    os.path.dirname(os.path.abspath(path)), scope)
        scope.declare(rule_name, decl)

    return factory
