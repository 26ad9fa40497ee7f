"""A module's namespace: what a module file's code sees (``flowfile.modules`` runs the file).

Its own ``config``; ``rules.x`` and ``checkpoints.x`` by the module's own rule names;
``workflow`` the main one but with the module's config and file; and ``__flowmake__``, the
builder with the module's scope, so that its rules, includes, configfile, localrules, ruleorder,
wildcard_constraints and container stay the module's.
"""

from __future__ import annotations

import os
import sys
import types
from typing import TYPE_CHECKING, Any, Callable

import flowmake.flowfile.builder as builder_mod
import flowmake.flowfile.modules as modules_mod
from flowmake.errors import FlowfileError, _shown, did_you_mean
from flowmake.flowfile import config as configmod
from flowmake.flowfile import sources
from flowmake.rule_refs import Checkpoints, RuleProxy

if TYPE_CHECKING:
    from flowmake.flowfile.modules import Scope


def module_namespace(builder: Any, scope: Scope, path: str) -> dict[str, Any]:
    if scope.info is None:  # only a module's scope has a namespace of its own
        raise FlowfileError("internal: a module namespace for the main file's scope")
    keys = scope.info.keys
    config = keys["config"] if keys.get("config") is not None else {}
    ns: dict[str, Any] = builder._make_namespace()
    ns.update(__flowmake__=ModuleBuilder(builder, scope), __name__=scope.info.name,
              __file__=path, config=config, rules=ModuleRules(scope),
              checkpoints=ModuleCheckpoints(scope),
              workflow=ModuleWorkflow(builder.namespace["workflow"], scope, config))
    return ns


class _NoRule(FlowfileError, AttributeError):
    """``rules.x`` for an unknown x: a FlowfileError, and False for ``hasattr``."""


class ModuleRules:
    """``rules`` inside a module: its rules by the names the module gave them."""

    def __init__(self, scope: Scope) -> None:
        self._scope = scope

    def __getattr__(self, name: str) -> RuleProxy:
        if name.startswith("__"):
            raise AttributeError(name)
        if name not in self._scope.decls:
            raise _NoRule(f"no rule named '{name}' (rules must be defined before use)",
                          hint=did_you_mean(name, self._scope.decls))
        return RuleProxy(self._scope.shadow(name))

    def __dir__(self) -> list[str]:
        return list(self._scope.decls)


class ModuleCheckpoints:
    """``checkpoints`` inside a module: the imported checkpoints, by the module's names."""

    def __init__(self, scope: Scope) -> None:
        self._scope = scope

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        if name not in self._scope.final:
            module = self._scope.info.name if self._scope.info else ""
            raise FlowfileError(f"no checkpoint named '{name}' used from module '{module}'")
        return getattr(Checkpoints(self._scope.builder.workflow), self._scope.final[name])


class ModuleWorkflow:
    """``workflow`` inside a module: the main one, but with the module's config and file."""

    def __init__(self, main: Any, scope: Scope, config: Any) -> None:
        self._main = main
        self._scope = scope
        self.config = config
        skip = bool(scope.info.keys.get("skip_validation")) if scope.info else False
        # snakemake.utils.validate reads workflow.modifier.skip_validation.
        self.modifier = types.SimpleNamespace(skip_validation=skip)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._main, name)

    @property
    def snakefile(self) -> str:
        # Snakemake's: the file of the code that asks.
        return os.path.abspath(sys._getframe(1).f_code.co_filename)


class ModuleBuilder:
    """``__flowmake__`` in a module's namespace: the builder, with the module's own scope."""

    def __init__(self, builder: Any, scope: Scope) -> None:
        self._builder = builder
        self._scope = scope

    def __getattr__(self, name: str) -> Any:
        return getattr(self._builder, name)  # args, workdir, conda, ...: as in the main file

    def rule(self, name: str | None, line: int, is_checkpoint: bool, file_id: int) -> Callable[..., None]:
        return modules_mod.rule_factory(self._builder, self._scope, name, line, is_checkpoint, file_id)

    def module(self, line: int, name: str | None, /, **keys: Any) -> None:
        self._scope.module(line, name, **keys)

    def use_rule(self, *args: Any) -> Callable[..., None]:
        return self._scope.use_rule(*args)

    def include(self, line: int, path: Any) -> None:
        b, scope = self._builder, self._scope
        current = b._stack[-1]
        target = b._resolve(path, os.path.dirname(current))
        if scope.source is not None and not os.path.isabs(os.fspath(path)) and not os.path.isfile(target):
            target = sources.fetch_beside(scope.source, current, os.fspath(path),
                                          f"include '{os.fspath(path)}'", b._here(line))
        if not os.path.isfile(target):
            raise FlowfileError(f"cannot include '{os.fspath(path)}': file not found",
                                location=b._here(line), hint=f"looked for {_shown(target)}: include: "
                                "paths are relative to the file that includes")
        if target not in b.workflow.files:
            b.workflow.files.append(target)
        b.exec_file(target, scope.namespace)  # in a module, every use includes afresh

    def configfile(self, line: int, path: Any) -> None:
        b, scope = self._builder, self._scope
        if scope.info is not None and scope.info.keys.get("config") is not None:
            return  # Snakemake: a module given `config:` ignores its configfile statements
        target = b._resolve(path, b.workflow.workdir)
        data = configmod.load_configfile(target, b._here(line))
        config = scope.namespace["config"]
        configmod.merge(config, data)
        configmod.merge(config, b._cli_config)
        if target not in b.workflow.files:
            b.workflow.files.append(target)

    def pepfile(self, line: int, path: Any) -> None:
        self._builder.pepfile(line, path, self._scope.namespace)  # `pep` is the module's own

    def pepschema(self, line: int, schema: Any) -> None:
        self._builder.pepschema(line, schema, self._scope.namespace)

    def localrules(self, line: int, *names: str) -> None:
        self._scope.refs.append(("localrules", names, self._builder._here(line)))

    def ruleorder(self, line: int, *names: str) -> None:
        if len(names) < 2:
            raise FlowfileError("ruleorder needs at least two rules: a > b",
                                location=self._builder._here(line))
        self._scope.refs.append(("ruleorder", names, self._builder._here(line)))

    def wildcard_constraints(self, line: int, *args: Any, **constraints: Any) -> None:
        value = builder_mod._Args(line, args, constraints)
        self._scope.constraints.update(
            builder_mod._constraints(value, self._builder._here(line).file))

    def container(self, line: int, image: Any) -> None:
        self._scope.container = str(image)

    singularity = container
