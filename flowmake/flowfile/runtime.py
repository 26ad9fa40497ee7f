"""Executing a ``run:`` block or a ``script:`` for one step, in the current process, and the rule
file's ``onstart:``/``onsuccess:``/``onerror:`` handlers (``run_hook``).

The engine runs ``python -m flowmake.jobrun <json>``; that loads the workflow again from
``Instance.to_dict()`` (flowfile, config, rule, raw wildcard strings) and calls ``run_instance``.
Every checkpoint counts as done here: the step only runs once its inputs exist.
"""

from __future__ import annotations

import os
import runpy
import sys
from typing import Any, Mapping

from flowmake.errors import FlowfileError, FlowmakeError, Location
from flowmake.rules import AllDone, Instance, Workflow


class ScriptContext:
    """The ``snakemake`` object a ``script:`` sees (Snakemake's names, so scripts run unchanged)."""

    def __init__(self, inst: Instance) -> None:
        self.input = inst.input
        self.output = inst.output
        self.params = inst.params
        self.wildcards = inst.wildcards
        self.threads = inst.threads
        self.resources = inst.resources
        self.log = inst.log
        self.config = inst.rule.workflow.config
        self.rule = inst.rule.name
        self.attempt = inst.attempt


def instantiate(workflow: Workflow, rule_name: str, raw_wildcards: Mapping[str, str],
                attempt: int = 1) -> Instance:
    rule = workflow.rule(rule_name)
    return rule.instantiate(rule.bindings_from_raw(raw_wildcards), AllDone(), attempt)


def rebuild_instance(data: Mapping[str, Any]) -> Instance:
    """The Instance described by ``Instance.to_dict()``, in this process."""
    from flowmake.flowfile import load_workflow

    workflow = load_workflow(data["flowfile"], config_overrides=data.get("config_overrides"),
                             configfiles=data.get("configfiles", ()), workdir=data.get("workdir"))
    return instantiate(workflow, data["rule"], data["wildcards"], data.get("attempt", 1))


def run_from_dict(data: Mapping[str, Any]) -> None:
    """What ``python -m flowmake.jobrun <json>`` does with the decoded JSON."""
    from flowmake.flowfile import load_workflow

    workflow = load_workflow(data["flowfile"], config_overrides=data.get("config_overrides"),
                             configfiles=data.get("configfiles", ()), workdir=data.get("workdir"))
    run_instance(workflow, data["rule"], data["wildcards"], data.get("attempt", 1))


def run_instance(workflow: Workflow, rule_name: str, raw_wildcards: Mapping[str, str],
                 attempt: int = 1) -> None:
    """Run the rule's run block or script for these wildcards, with cwd = the workdir."""
    inst = instantiate(workflow, rule_name, raw_wildcards, attempt)
    os.chdir(workflow.workdir)
    rule = inst.rule
    if rule.kind == "run":
        shell = _shell_of(workflow)
        rule.run(inst.input, inst.output, inst.params, inst.wildcards, inst.threads,
                 inst.resources, inst.log, rule.name, workflow.config, shell)
    elif rule.kind == "script":
        run_script(inst)
    else:
        raise FlowfileError(f"rule '{rule.name}' has no run: block or script: to execute",
                            location=rule.location, rule=rule.name)


def run_hook(workflow: Workflow, name: str) -> None:
    """Call the rule file's ``onstart``/``onsuccess``/``onerror`` block, once.

    What the block raises is the user's mistake: reported at the line in the rule file that
    raised it (the block's first line if none did), without a traceback.
    """
    fn = workflow.hooks.get(name)
    if fn is None:
        return
    try:
        fn()  # translated as ``def __flow_NAME__(log=None)``: no argument needed
    except FlowmakeError:
        raise
    except Exception as e:
        code = fn.__code__
        line, tb = code.co_firstlineno, e.__traceback__
        while tb is not None:  # the deepest frame in that rule file
            if tb.tb_frame.f_code.co_filename == code.co_filename:
                line = tb.tb_lineno
            tb = tb.tb_next
        raise FlowfileError(f"{name} handler raised {type(e).__name__}: {e}",
                            location=Location(code.co_filename, line)) from None


def _shell_of(workflow: Workflow) -> Any:
    # The run function's globals are the rule file namespace, which holds its shell object.
    from flowmake.shellfmt import Shell

    return Shell(workflow.shell_settings)


def run_script(inst: Instance) -> None:
    rule = inst.rule
    path = rule.script_path()
    if not path.endswith(".py"):
        raise FlowfileError(f"script '{rule.script}': only Python (.py) scripts are supported",
                            location=rule.location, rule=rule.name)
    if not os.path.isfile(path):
        raise FlowfileError(f"script '{rule.script}' not found", location=rule.location,
                            rule=rule.name)
    old_argv = sys.argv
    sys.argv = [path]
    try:
        runpy.run_path(path, init_globals={"snakemake": ScriptContext(inst)}, run_name="__main__")
    finally:
        sys.argv = old_argv
