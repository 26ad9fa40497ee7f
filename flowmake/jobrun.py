"""``python -m flowmake.jobrun JSON``: run one ``run:``/``script:``/``wrapper:``/``notebook:`` step
in a fresh process.

The scheduler turns such steps into this command so that every backend runs them like any shell
command. It loads the same rule file with the same config, instantiates the rule for the given
wildcards and executes its block with the working directory as cwd. ``threads`` is capped at the
run's cores here too, so a run block sees what a shell command of the same rule would. Under
--use-conda the job already runs inside the rule's environment (``envs.wrap``); its Python
packages are added after flowmake's own, so a wrapper can import what its environment.yaml lists.
"""

from __future__ import annotations

import json
import os
import sys

from flowmake.errors import FlowmakeError


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m flowmake.jobrun JSON", file=sys.stderr)
        return 2
    job = json.loads(argv[0])
    from flowmake.envs import Deployment, site_packages
    from flowmake.flowfile import Reading, load_workflow
    from flowmake.flowfile.runtime import _shell_of, instantiate, run_script
    from flowmake.rules import RuleKind
    from flowmake.shellfmt import reloading

    os.chdir(job["workdir"])
    try:
        with reloading():  # the run did the rule file's load-time shell() commands already
            workflow = load_workflow(job["flowfile"], config_overrides=job.get("config") or {},
                                     configfiles=job.get("configfiles") or [], workdir=job["workdir"],
                                     deployment=Deployment.from_payload(job.get("deployment")),
                                     default_storage=tuple(job["default_storage"]) if job.get("default_storage") else None,
                                     scatter=job.get("scatter"), cores=job.get("workflow_cores"),
                                     reading=Reading(replace_config=bool(job.get("replace_config"))))
        if job.get("resource_args"):
            from flowmake.overrides import from_args

            from_args(job["resource_args"]).apply(workflow)
        inst = instantiate(workflow, job["rule"], job.get("wildcards") or {}, int(job.get("attempt", 1)))
        if job.get("cores"):
            inst.threads = min(int(inst.threads), max(1, int(job["cores"])))
        # A shadow: step runs in its shadow folder (``flowmake.shadow``), with the paths unchanged.
        os.chdir(os.environ.get("FLOWMAKE_SHADOW_DIR") or workflow.workdir)
        rule = inst.rule
        sys.path.extend(site_packages(rule, workflow.deployment, job["workdir"]))
        if rule.kind is RuleKind.RUN and rule.run is not None:
            rule.run(inst.input, inst.output, inst.params, inst.wildcards, inst.threads,
                     inst.resources, inst.log, rule.name, rule.config,
                     _shell_of(workflow))
        elif rule.kind is RuleKind.SCRIPT:
            run_script(inst)
        elif rule.kind is RuleKind.WRAPPER:  # a wrapper is a script: with the snakemake object
            run_script(inst, workflow.deployment.wrapper(rule).script)
        elif rule.kind is RuleKind.TEMPLATE:
            from flowmake.templates import render

            render(inst, workflow.config)
        elif rule.kind is RuleKind.NOTEBOOK:
            from flowmake.notebook import run_notebook

            run_notebook(inst)
        else:
            print(f"rule '{rule.name}' has no action to execute", file=sys.stderr)
            return 1
    except FlowmakeError as err:
        print(str(err), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
