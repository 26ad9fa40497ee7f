"""Reading a rule file (``Flowfile`` or ``Snakefile``) into a ``rules.Workflow``.

``load_workflow`` translates the rule syntax to Python (``translate``), executes it in a fresh
namespace whose only link to the engine is a ``Builder``, then compiles every rule's patterns.
"""

from __future__ import annotations

import copy
import os
from typing import Any, Mapping, Sequence

from flowmake.envs import Deployment
from flowmake.errors import FlowfileError
from flowmake.flowfile import config as configmod
from flowmake.flowfile.builder import Builder, Reading
from flowmake.rules import Workflow

__all__ = ["Reading", "load_workflow"]


def load_workflow(path: str, *, config_overrides: Mapping[str, Any] | None = None,
                  configfiles: Sequence[str] = (), workdir: str | None = None,
                  deployment: Deployment | None = None,
                  default_storage: tuple[str, str] | None = None,
                  scatter: Mapping[str, int] | None = None, cores: int | None = None,
                  reading: Reading | None = None) -> Workflow:
    """Load a rule file. FlowfileError/ConfigError (with file:line) for any mistake in it.

    ``default_storage`` is (``--default-storage-provider``, ``--default-storage-prefix``);
    ``scatter``: ``--set-scatter`` counts, which win over the file's ``scattergather:``;
    ``reading``: --all-temp, --consider-ancient, --replace-workflow-config."""
    if not os.path.isfile(path):
        raise FlowfileError(f"no rule file '{path}'", hint="create a Flowfile or pass --flowfile")
    cli_layer = configmod.command_line_layer(configfiles, config_overrides)
    workflow = Workflow(os.path.normpath(path), copy.deepcopy(cli_layer),
                        configfiles=[os.path.abspath(p) for p in configfiles],
                        config_overrides=config_overrides, workdir=workdir)
    if deployment is not None:  # before the file runs: a meta-wrapper module needs the prefix
        workflow.deployment = deployment
    workflow.cores = cores  # before the file runs: threads: max(workflow.cores - 1, 1)
    builder = Builder(workflow, cli_layer, default_storage)
    builder.scatter.overrides.update(scatter or {})
    builder.reading = reading or Reading()
    builder.exec_file(workflow.flowfile)
    builder.check_rule_names()
    workflow.finalize()
    return workflow
