"""Instance: one rule bound to wildcard values, the step that ``graph`` links and the scheduler runs.

Built by ``rules.Rule.instantiate``. It holds the concrete input, output, log, params, threads and
resources, the flags of its paths, and renders ``shell:``/``message:`` from ``JobNamespace``: what
``{input}``, ``{output}``, ``{wildcards}`` and the rule file's globals name in a command.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from flowmake import envs, shellfmt
from flowmake.directives import Flags, RuleKind
from flowmake.errors import FlowfileError
from flowmake.namedlist import NamedList, Wildcards
from flowmake.patterns import Bindings

if TYPE_CHECKING:
    from flowmake.rules import Rule


class Instance:
    """One step: a rule with bound wildcards and concrete inputs, outputs, params and resources."""

    __slots__ = ("rule", "bindings", "attempt", "wildcards", "input", "output", "log", "benchmark",
                 "threads", "resources", "params", "flags", "consulted")

    rule: Rule
    bindings: Bindings
    attempt: int
    wildcards: Wildcards
    input: NamedList
    output: NamedList
    log: NamedList
    benchmark: str | None
    threads: int
    resources: NamedList
    params: NamedList
    flags: Flags
    consulted: frozenset[str]

    def _namespace(self) -> Mapping[str, Any]:
        return JobNamespace(self)

    def _render(self, template: str, what: str, quote: bool) -> str:
        try:
            if quote:
                tainted = tuple(v for v in self.bindings._raw.values() if not shellfmt.is_safe(v)) if (
                    shellfmt.uses_verbatim(template)) else ()
                return shellfmt.render(template, self._namespace(), tainted=tainted)
            return template.format_map(self._namespace())
        except (KeyError, AttributeError, IndexError, ValueError) as e:
            raise FlowfileError(f"cannot format {what}: {type(e).__name__}: {e}",
                                location=self.rule.location, rule=self.rule.name,
                                details=[f"{what}: {template}"]) from None

    def command(self) -> str:
        """The rendered shell command with the prefix and suffix (empty for non-shell rules)."""
        if self.rule.shell is None:
            return ""
        settings = self.rule.workflow.shell_settings
        template = self.rule.shell
        if isinstance(template, shellfmt.DeferredCommand):
            ns = self._namespace()
            try:
                template = template.func(**{k: ns[k] for k in shellfmt.FSTRING_FIELDS})
            except Exception as e:  # the user's f-string: at the rule, no traceback
                raise FlowfileError(f"cannot format shell command: {type(e).__name__}: {e}",
                                    location=self.rule.location, rule=self.rule.name) from None
        return settings.prefix + self._render(template, "shell command", True) + settings.suffix

    def message(self) -> str | None:
        if self.rule.message is None:
            return None
        return self._render(self.rule.message, "message", False)

    def action_source(self) -> str:
        """What the step key hashes for the action: the rendered command, the run block's source,
        or the script/wrapper/notebook content; plus the conda environment and env modules when
        the run uses them (``envs.key_text``)."""
        rule = self.rule
        deployment = rule.workflow.deployment
        extra = envs.key_text(rule, deployment) if rule.conda is not None or rule.envmodules or (
            rule.wrapper is not None and deployment.use_conda) else ""
        if rule.shell is not None:
            return self.command() + extra
        kind = rule.kind
        if kind is RuleKind.RUN:
            return (rule.run_source or "") + extra
        if kind is RuleKind.SCRIPT:
            return f"script {rule.script}\n{_read(rule.script_path(), rule, 'script')}{extra}"
        if kind is RuleKind.WRAPPER:
            wrapper = deployment.wrapper(rule)
            return f"wrapper {rule.wrapper}\n{_read(wrapper.script, rule, 'wrapper')}{extra}"
        if kind is RuleKind.NOTEBOOK:
            return f"notebook {rule.notebook}\n{_read(rule.script_path(), rule, 'notebook')}{extra}"
        if kind is RuleKind.TEMPLATE:  # the template is an input: its content is in the key already
            return f"template_engine {rule.template_engine}{extra}"
        return extra

    def __repr__(self) -> str:
        return f"Instance({self.rule.name}, {self.bindings.raw_dict()!r})"


def _read(path: str, rule: Rule, what: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            return f.read()
    except OSError as e:
        raise FlowfileError(f"cannot read {what} '{path}': {e.strerror}",
                            location=rule.location, rule=rule.name) from None


class JobNamespace(dict[str, Any]):
    """What a command template may name: the step's fields, then the rule file's globals.

    A dict of the fields every step has, so the names a command uses most are found at C speed;
    the rest is looked up on demand (a command is rendered for every step of a plan).
    """

    __slots__ = ("_inst",)
    FIELDS = frozenset({"input", "output", "params", "log", "threads", "resources", "wildcards", "rule"})

    def __init__(self, inst: Instance) -> None:
        super().__init__(input=inst.input, output=inst.output, params=inst.params, log=inst.log,
                         threads=inst.threads, resources=inst.resources)
        self._inst = inst

    def __missing__(self, key: str) -> Any:
        inst = self._inst
        if key == "wildcards":  # paths keep their spelling: the raw values, not the typed ones
            return Wildcards.from_mapping(inst.bindings._raw)
        if key == "rule":
            return inst.rule.name
        return inst.rule.namespace[key]
