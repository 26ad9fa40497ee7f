"""What scripts/snakemake_suite.py runs: the cases of a Snakemake-style tests/ directory.

Reads ``tests.py`` and ``test_*.py`` with ``ast`` (nothing of Snakemake is imported or run): each
test function that calls ``run(dpath("NAME"), ...)`` is one ``Case`` (one per parameter set of a
parametrized test) with its ``Call``s and their literal keyword arguments, or a reason it is out of
scope.
"""
from __future__ import annotations

import ast
import dataclasses
import shlex
import shutil
from pathlib import Path
from typing import Any, Iterator

# Decorators that put a whole test out of scope.
SKIP_DECORATORS = {
    "connected": "network", "gcloud": "remote storage", "azbatch": "cluster executor",
    "zenodo": "remote storage", "apptainer": "containers", "conda": "conda",
    "only_on_windows": "Windows only", "needs_s3": "remote storage",
    "needs_envmodules": "environment modules", "patch": "Python API-only (mocks)",
    "skip": "skipped upstream",
}
# run() keywords that put a call out of scope when given a non-empty value.
SKIP_KWARGS = {
    "cluster": "cluster executor", "cluster_status": "cluster executor",
    "deployment_method": "conda/containers", "apptainer_args": "containers",
    "conda_create_envs": "conda", "conda_list_envs": "conda", "conda_prefix": "conda",
    "conda_frontend": None, "report": "report generation", "report_after_run": None,
    "report_stylesheet": "report generation", "report_metadata": "report generation",
    "default_storage_provider": "remote storage", "default_storage_prefix": "remote storage",
    "storage_provider_settings": "remote storage", "remote_job_local_storage_prefix":
    "remote storage", "local_storage_prefix": "remote storage", "shared_fs_usage":
    "cluster executor", "envvars": "cluster executor", "archive": "archive (conda envs)",
    "containerize": "containers", "generate_unit_tests": "unit-test generation",
    "edit_notebook": "notebook editing (interactive)", "persistence_backend":
    "Python API-only (persistence backend)", "persistence_backend_db_url":
    "Python API-only (persistence backend)", "sigint_after": "Python API-only (signals)",
    "wrapper_prefix": "network", "nodes": None, "container_image": None,
}
# run() keywords with no effect on a local run, or on what flowmake decides.
IGNORED_KWARGS = {"cleanup", "cleanup_scripts", "set_pythonpath", "no_tmpdir", "debug_dag",
                  "scheduler_ilp_solver", "trust_io_cache", "tmpdir", "path"}
# Words in a shellcmd that put it out of scope.
SKIP_FLAGS = {
    "--sdm": "conda/containers", "--use-conda": "conda", "--use-singularity": "containers",
    "--use-apptainer": "containers", "--software-deployment-method": "conda/containers",
    "--cluster": "cluster executor", "--cluster-generic-submit-cmd": "cluster executor",
    "--report": "report generation", "--lint": "linting", "--containerize": "containers",
    "--generate-unit-tests": "unit-test generation", "--archive": "archive (conda envs)",
    "--default-storage-provider": "remote storage", "--conda-create-envs-only": "conda",
}


@dataclasses.dataclass
class Call:
    """One ``run(dpath(NAME), ...)`` call with its keyword arguments evaluated."""
    name: str
    kwargs: dict[str, Any]
    reuse: str | None = None      # the variable a previous call's workdir was kept in
    keep_as: str | None = None    # the variable this call's workdir is kept in


@dataclasses.dataclass
class Case:
    test: str                      # file::function[params]
    calls: list[Call]
    skip: str | None = None
    extra_code: bool = False
    outcome: str = ""
    detail: str = ""
    seconds: float = 0.0


class NotLiteral(Exception):
    pass


# -- reading the tests ---------------------------------------------------------------------------

def _eval(node: ast.expr, env: dict[str, Any]) -> Any:
    """A literal, with dpath("x"), Path("x"), names bound by parametrize and f-strings."""
    if isinstance(node, ast.Name) and node.id in env:
        return env[node.id]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
            node.func.id in ("dpath", "Path", "str") and len(node.args) == 1:
        value = _eval(node.args[0], env)
        return ("dpath", str(value)) if node.func.id == "dpath" else str(value)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        what = ast.unparse(node.func)
        if node.func.attr == "split" and not node.args:
            return str(_eval(node.func.value, env)).split()
        if what == "Resources.parse" and node.args:
            return _eval(node.args[0], env)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.args and \
            node.func.id == "dict":
        return {k.arg: _eval(k.value, env) for k in node.keywords if k.arg}
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
            node.func.id == "Batch" and len(node.args) == 3:
        rule, i, n = (_eval(a, env) for a in node.args)
        return f"{rule}={i}/{n}"
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and \
            node.value.id in ("DeploymentMethod", "RerunTrigger", "SharedFSUsage"):
        return node.attr.lower()
    if isinstance(node, ast.JoinedStr):
        parts = []
        for v in node.values:
            parts.append(str(_eval(v.value, env)) if isinstance(v, ast.FormattedValue)
                         else str(_eval(v, env)))
        return "".join(parts)
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        return [_eval(e, env) for e in node.elts]
    if isinstance(node, ast.Dict):
        if any(k is None for k in node.keys):
            raise NotLiteral(ast.unparse(node))
        return {_eval(k, env): _eval(v, env) for k, v in zip(node.keys, node.values)
                if k is not None}
    if isinstance(node, ast.Attribute) and ast.unparse(node).endswith(("Error", "Exception")):
        return True  # shouldfail=SomeError: we only see that it fails
    if isinstance(node, ast.Name) and node.id.endswith(("Error", "Exception")):
        return True
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise NotLiteral(ast.unparse(node)) from None


def _decorator_name(d: ast.expr) -> str:
    target = d.func if isinstance(d, ast.Call) else d
    return ast.unparse(target).split(".")[-1]


def _param_sets(fn: ast.FunctionDef) -> list[tuple[str, dict[str, Any]]]:
    """[("", {})] or one ("[i]", {name: value}) per pytest.mark.parametrize row."""
    sets: list[tuple[str, dict[str, Any]]] = [("", {})]
    for d in fn.decorator_list:
        if not (isinstance(d, ast.Call) and _decorator_name(d) == "parametrize"):
            continue
        names = _eval(d.args[0], {})
        names = [n.strip() for n in names.split(",")] if isinstance(names, str) else names
        rows = _eval(d.args[1], {})
        new = []
        for label, env in sets:
            for i, row in enumerate(rows):
                values = row if len(names) > 1 else [row]
                new.append((f"{label}[{i}]", {**env, **dict(zip(names, values))}))
        sets = new
    return sets


def _run_calls(fn: ast.FunctionDef, env: dict[str, Any]) -> tuple[list[Call], bool]:
    """The run() calls of a test function in order, and whether it has other code."""
    calls: list[Call] = []
    extra = _walk(fn.body, dict(env), calls, False)
    return calls, extra


def _walk(body: list[ast.stmt], env: dict[str, Any], calls: list[Call], fails: bool) -> bool:
    """Collect run() calls from statements; ``fails``: inside pytest.raises or a try whose
    handler is the test's success. Loops and ifs run their body once."""
    extra = False
    for stmt in body:
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
            continue  # docstring
        call, keep = None, None
        if isinstance(stmt, ast.Expr) and _is_run(stmt.value):
            call = stmt.value
        elif isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and \
                isinstance(stmt.targets[0], ast.Name):
            if _is_run(stmt.value):
                call, keep = stmt.value, stmt.targets[0].id
            else:
                try:
                    env[stmt.targets[0].id] = _eval(stmt.value, env)
                    continue
                except NotLiteral:
                    pass
        elif isinstance(stmt, ast.With):
            raises = any(_decorator_name(i.context_expr) == "raises" for i in stmt.items)
            quiet = all(_decorator_name(i.context_expr) in ("raises", "prepare_tmpdir")
                        for i in stmt.items)
            extra = _walk(stmt.body, env, calls, fails or raises) or extra or not quiet
            continue
        elif isinstance(stmt, ast.Try):
            caught = any(isinstance(h.body[-1], ast.Return) for h in stmt.handlers)
            extra = _walk(stmt.body, env, calls, fails or caught) or extra
            extra = _walk(stmt.finalbody, env, calls, fails) or extra
            continue
        elif isinstance(stmt, (ast.For, ast.If)):
            _walk(stmt.body, env, calls, fails)
            extra = True
            continue
        if call is None:
            if any(_is_run(n) for n in ast.walk(stmt)):
                raise NotLiteral("run() inside other code")
            extra = extra or not _harmless(stmt)
            continue
        calls.append(_call(call, env, keep))  # type: ignore[arg-type]  # _is_run: an ast.Call
        if fails:
            calls[-1].kwargs["shouldfail"] = True
    return extra


def _harmless(stmt: ast.stmt) -> bool:
    """Removing the kept workdir is what run(cleanup=True) does anyway."""
    text = ast.unparse(stmt)
    return text.startswith(("shutil.rmtree(tmpdir", "shutil.rmtree(path", "raise AssertionError"))


def _is_run(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
        node.func.id == "run"


def _call(node: ast.Call, env: dict[str, Any], keep: str | None) -> Call:
    if not node.args:
        raise NotLiteral("run() without a path")
    path = _eval(node.args[0], env)
    if not (isinstance(path, tuple) and path[0] == "dpath"):
        raise NotLiteral(ast.unparse(node.args[0]))
    kwargs: dict[str, Any] = {}
    reuse = None
    for k in node.keywords:
        if k.arg is None:
            more = _eval(k.value, env)
            if not isinstance(more, dict):
                raise NotLiteral(ast.unparse(k.value))
            kwargs.update(more)
        elif k.arg == "tmpdir" and isinstance(k.value, ast.Name):
            reuse = k.value.id
        else:
            kwargs[k.arg] = _eval(k.value, env)
    return Call(path[1], kwargs, reuse, keep)


def collect(tests: Path) -> tuple[list[Case], int]:
    """Every test function that calls run(dpath(...)); and how many test functions there are."""
    files = [tests / "tests.py"] + sorted(tests.glob("test_*.py"))
    cases: list[Case] = []
    total = 0
    for f in files:
        if not f.is_file():
            continue
        tree = ast.parse(f.read_text(encoding="utf-8"))
        for fn in tree.body:
            if not (isinstance(fn, ast.FunctionDef) and fn.name.startswith("test")):
                continue
            total += 1
            if not any(_is_run(n) for n in ast.walk(fn)):
                continue
            cases.extend(_cases_of(f.name, fn))
    return cases, total


def _cases_of(fname: str, fn: ast.FunctionDef) -> Iterator[Case]:
    skip = next((reason for d in fn.decorator_list
                 if (reason := SKIP_DECORATORS.get(_decorator_name(d)))), None)
    try:
        sets = _param_sets(fn)
    except NotLiteral as e:
        yield Case(f"{fname}::{fn.name}", [], skip or f"harness: non-literal parameters ({e})")
        return
    for label, env in sets:
        test = f"{fname}::{fn.name}{label}"
        try:
            calls, extra = _run_calls(fn, env)
        except NotLiteral as e:
            yield Case(test, [], skip or f"harness: non-literal argument ({str(e)[:60]})")
            continue
        yield Case(test, calls, skip or _skip_reason(calls), extra)


def _skip_reason(calls: list[Call]) -> str | None:
    for c in calls:
        for key, value in c.kwargs.items():
            reason = SKIP_KWARGS.get(key)
            if reason and value and value != "conda":
                return reason
        if c.kwargs.get("executor", "local") not in ("local", "dryrun", "touch"):
            return "cluster executor"
        words = shlex.split(c.kwargs.get("shellcmd", "") or "")
        for w in words:
            reason = SKIP_FLAGS.get(w.split("=")[0])
            if reason and not (w == "--default-storage-provider" and "none" in words):
                return reason
            if w.startswith(("http://", "https://", "{server_url}")):
                return "network"
        if "--executor" in words and words[words.index("--executor") + 1] != "local":
            return "cluster executor"
    return None


# -- running a case ------------------------------------------------------------------------------
