"""Running the rule file's own code outside planning: a step's ``run:`` block or ``script:``, and
the ``onstart:``/``onsuccess:``/``onerror:`` handlers.

The engine runs a step's block as ``python -m flowmake.jobrun <json>`` (see ``jobs.job_command``);
that loads the workflow again, instantiates the rule with ``instantiate`` and executes the block.
Every checkpoint counts as done there: the step only runs once its inputs exist.
"""

from __future__ import annotations

import builtins
import dataclasses
import hashlib
import os
import shutil
import sys
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any, Mapping

from flowmake.errors import FlowfileError, FlowmakeError, Location
from flowmake.rules import AllDone, Instance, Workflow


@dataclasses.dataclass(frozen=True)
class ReportHref:
    """A relative link into a Snakemake report: ``../<id>/<name>[?args][#anchor]``.

    The report keeps each item under a folder named by the first 16 hex digits of the sha256 of
    the path given to ``report()``, so the link is known before any report exists. A child of a
    directory item keeps the directory's folder and its own relative path.
    """

    path: str
    item: str = ""  # the path given to report(); "" for the item itself
    args: tuple[tuple[str, str], ...] = ()
    fragment: str = ""

    def child_path(self, path: str | os.PathLike[str]) -> ReportHref:
        return ReportHref(Path(path).as_posix(), self.item or self.path)

    def url_args(self, **args: object) -> ReportHref:
        return dataclasses.replace(self, args=tuple((k, str(v)) for k, v in args.items()))

    def anchor(self, anchor: str) -> ReportHref:
        return dataclasses.replace(self, fragment=anchor)

    def __str__(self) -> str:
        item = self.item or self.path
        folder = hashlib.sha256(item.encode()).hexdigest()[:16]
        name = self.path if self.item else os.path.basename(self.path)
        query = "&".join(f"{k}={urllib.parse.quote(v)}" for k, v in self.args)
        return (f"../{folder}/{name}" + (f"?{query}" if query else "")
                + (f"#{urllib.parse.quote(self.fragment)}" if self.fragment else ""))


class ScriptContext:
    """The ``snakemake`` object a ``script:`` sees (Snakemake's names, so scripts run unchanged)."""

    def __init__(self, inst: Instance, scriptdir: str = "") -> None:
        self.scriptdir = scriptdir
        self.input = inst.input
        self.output = inst.output
        self.params = inst.params
        self.wildcards = inst.wildcards
        self.threads = inst.threads
        self.resources = inst.resources
        self.log = inst.log
        self.config = inst.rule.config  # a module's rule sees its module's config
        self.rule = inst.rule.name
        self.attempt = inst.attempt

    def report_href(self, path: str | os.PathLike[str]) -> ReportHref:
        """A link from this output to ``path`` (as given to ``report()``) inside Snakemake's report."""
        return ReportHref(os.fspath(path))

    def log_fmt_shell(self, stdout: bool = True, stderr: bool = True, append: bool = False) -> str:
        """Snakemake's redirection of a ``shell()`` call to the rule's log ("" without a log)."""
        if not self.log:
            return ""
        redirect = {(True, True): "{0} {1} 2>&1", (True, False): "{0} {1}", (False, True): "2{0} {1}"}
        if (stdout, stderr) not in redirect:
            return ""
        return " " + redirect[(stdout, stderr)].format(">>" if append else ">", str(self.log))


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


def run_script(inst: Instance, path: str | None = None) -> None:
    """Run the rule's ``script:`` (or ``path``: a wrapper's wrapper.py) with the ``snakemake`` object."""
    rule = inst.rule
    shown = rule.script if path is None else path
    path = rule.script_path() if path is None else path
    if not path.endswith(".py"):
        raise FlowfileError(f"script '{shown}': only Python (.py) scripts are supported",
                            location=rule.location, rule=rule.name)
    if not os.path.isfile(path):
        raise FlowfileError(f"script '{shown}' not found", location=rule.location,
                            rule=rule.name)
    from flowmake.flowfile.builder import import_path
    from flowmake.flowfile.compat import serving, standins_of

    old_argv = sys.argv
    sys.argv = [path]
    # As Snakemake, the script runs from a copy under .snakemake/scripts/ in the working
    # directory: __real_file__ names that copy, __file__ the script itself (scripts test both).
    real = _script_copy(path)
    # The rule file's builtins: `from snakemake.shell import shell` in a script gets the same
    # stand-ins as the rule file (Snakemake installed or not); modules beside it import.
    init = {"snakemake": ScriptContext(inst, os.path.dirname(os.path.abspath(path))),
            "__real_file__": real, "__file__": os.path.realpath(path), "__name__": "__main__",
            "__builtins__": rule.workflow.globals.get("__builtins__", builtins)}
    try:
        with open(path, "rb") as f:
            code = compile(f.read(), path, "exec")  # tracebacks name the script, not the copy
        with import_path([os.path.dirname(os.path.abspath(path)), rule.basedir]), \
                serving(standins_of(rule.workflow.globals)):
            exec(code, init)
    finally:
        sys.argv = old_argv
        os.remove(real)


def _script_copy(path: str) -> str:
    folder = os.path.join(".snakemake", "scripts")
    os.makedirs(folder, exist_ok=True)
    fd, real = tempfile.mkstemp(suffix="." + os.path.basename(path), dir=folder)
    with os.fdopen(fd, "wb") as out, open(path, "rb") as src:
        shutil.copyfileobj(src, out)
    return real
