"""``template_engine:`` rules: the one template input rendered to the one output, in the job.

As in Snakemake: ``jinja2`` or ``yte`` (a YAML template engine, used only when installed); the
template sees ``params``, ``wildcards``, ``config`` and ``input``. With several inputs the template
is the one named ``template``. ``jobrun`` renders it, so every backend runs such a step like any
other.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Mapping

from flowmake.errors import FlowfileError

ENGINES = ("jinja2", "yte")


def check_engine(rule: Any, engine: Any) -> str:
    """The engine a rule names, refused at the rule when unknown or not installed."""
    if engine not in ENGINES:
        raise rule.error(f"template_engine must be 'jinja2' or 'yte', not {engine!r}")
    if importlib.util.find_spec(engine) is None:
        raise rule.error(f"template_engine {engine!r} needs the Python package '{engine}', which is "
                         "not installed", hint=f"pip install {engine}")
    return str(engine)


def render(inst: Any, config: Mapping[str, Any]) -> None:
    rule = inst.rule
    if len(inst.output) != 1:
        raise rule.error("a template_engine rule has exactly one output")
    names = inst.input.keys() if hasattr(inst.input, "keys") else ()
    if len(inst.input) == 1:
        template = inst.input[0]
    elif "template" in names:
        template = inst.input.template
    else:
        raise rule.error("a template_engine rule with several inputs names its template: "
                         "input: template=\"...\"")
    variables = {"params": inst.params, "wildcards": inst.wildcards, "config": config, "input": inst.input}
    try:
        with open(template, encoding="utf-8") as f:
            text = f.read()
        if rule.template_engine == "jinja2":
            import jinja2

            with open(inst.output[0], "w", encoding="utf-8") as out:
                out.write(jinja2.Template(text).render(**variables))
        else:
            import yte

            with open(inst.output[0], "w", encoding="utf-8") as out:
                yte.process_yaml(text, outfile=out, variables=variables)
    except FlowfileError:
        raise
    except Exception as e:  # the template's own mistake: at the rule, without a traceback
        raise rule.error(f"cannot render {rule.template_engine} template '{template}': "
                         f"{type(e).__name__}: {e}") from None
