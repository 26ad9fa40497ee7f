"""Running the rule file's own code outside planning: a step's ``run:`` block or ``script:``, and
the ``onstart:``/``onsuccess:``/``onerror:`` handlers.

The engine runs a step's block as ``python -m flowmake.jobrun <json>`` (see ``jobs.job_command``);
that loads the workflow again, instantiates the rule with ``instantiate`` and executes the block.
Every checkpoint counts as done there: the step only runs once its inputs exist.
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
        # Snakemake's scripts also see __real_file__ (the file that runs; here the script itself).
        runpy.run_path(path, init_globals={"snakemake": ScriptContext(inst), "__real_file__": path},
                       run_name="__main__")
    finally:
        sys.argv = old_argv
