"""Which rules can make a path: the rules whose output patterns match it, tried cheaply.

A plan of 100,000 paths in a rule file of many rules would otherwise match every path against every
rule. Each path has a *shape*: its first path segment and the extension of its last one. Which
rules can produce something of a shape is decided once per shape, from the literal text of their
output patterns, and a path is matched only against those.
"""

from __future__ import annotations

import os
import posixpath

from flowmake.errors import UnsafeWildcardError
from flowmake.patterns import Bindings, Pattern
from flowmake.rules import Rule, Workflow


class RuleIndex:
    """``candidates(path)``: (rule, bindings) for each rule of the workflow that matches the path,
    in rule-file order."""

    def __init__(self, workflow: Workflow) -> None:
        self._rules = list(workflow.rules)
        self._shapes = {id(r): (_heads(r), _extensions(r)) for r in self._rules}
        self._by_shape: dict[tuple[str, str], list[Rule]] = {}
        # The rule and wildcards of the step whose input is resolved next, set by the graph just
        # before it asks. As in Snakemake, an input named through ``rules.NAME.output`` is made
        # by that rule, and the consumer's own wildcard values are tried first (``_by_names``).
        self.hint: tuple[Rule, Bindings] | None = None

    def candidates(self, path: str,
                   refused: list[UnsafeWildcardError] | None = None) -> list[tuple[Rule, Bindings]]:
        """``refused``, when given, collects the rules that match only with an unsafe wildcard
        value (see ``patterns``); otherwise the first such refusal is raised."""
        hint, self.hint = self.hint, None
        shape = _shape(path)
        rules = self._by_shape.get(shape)
        if rules is None:
            rules = self._by_shape[shape] = [r for r in self._rules if self._may_make(r, shape)]
        found = []
        for rule in rules:
            try:
                b = rule.match_output(path)
            except UnsafeWildcardError as e:
                e.location, e.rule = rule.location, rule.name
                if refused is None:
                    raise
                refused.append(e)
                continue
            if b is not None:
                found.append((rule, b if hint is None else _by_names(rule, path, b, hint[1])))
        if hint is not None and hint[0].input_rules and len(found) > 1:
            only = hint[0].wanted_inputs(hint[1]).get(path)
            if any(r.name == only for r, _ in found):
                return [(r, b) for r, b in found if r.name == only]
        return found

    def known_names(self, target: str) -> list[str]:
        """What a mistyped target may have meant: rule names, files beside it, output patterns."""
        names = [r.name for r in self._rules]
        names += [p.text for r in self._rules for p in r.output_patterns]
        folder = posixpath.dirname(target)
        try:
            for entry in os.scandir(folder or "."):
                names.append(posixpath.join(folder, entry.name) if folder else entry.name)
        except OSError:
            pass
        return names

    def _may_make(self, rule: Rule, shape: tuple[str, str]) -> bool:
        heads, exts = self._shapes[id(rule)]
        return (heads is None or shape[0] in heads) and (exts is None or shape[1] in exts)


def _by_names(rule: Rule, path: str, b: Bindings, hint: Bindings) -> Bindings:
    """``foo.{sample}{read}.fq`` matches ``foo.ar1.fq`` as sample=ar, read=1 or sample=a,
    read=r1: when the consumer has wildcards of the same names whose values make the path, those
    win (as in Snakemake). Untyped wildcards only; otherwise the match stands."""
    raw = hint._raw
    if all(raw.get(n, v) == v for n, v in b._raw.items()) or b._values != b._raw \
            or any(n not in raw for n in b._raw):
        return b
    mine = {n: raw[n] for n in b._raw}
    alt = Bindings._fast(mine, dict(mine))
    if any(p.format(alt) == path for p in [*rule.output_patterns, *rule.product_patterns]):
        return alt
    return b


def _shape(path: str) -> tuple[str, str]:
    """(first path segment, extension of the last; "" for none)."""
    slash = path.find("/")
    last = path.rfind("/") + 1
    dot = path.rfind(".")
    return (path[:slash] if slash > 0 else "", path[dot + 1:] if dot >= last else "")


def _heads(rule: Rule) -> frozenset[str] | None:
    """First path segments every output of the rule starts with; None when one can be anything."""
    heads = set()
    for p in [*rule.output_patterns, *rule.product_patterns]:
        prefix = p.literal_prefix
        slash = prefix.find("/")
        if slash <= 0:
            return None
        heads.add(prefix[:slash])
    return frozenset(heads)


def _extensions(rule: Rule) -> frozenset[str] | None:
    """Extensions (in ``_shape``'s sense) every output of the rule has; None when one can be any."""
    exts = set()
    for p in [*rule.output_patterns, *rule.product_patterns]:
        ext = _pattern_extension(p)
        if ext is None:
            return None
        exts.add(ext)
    return frozenset(exts)


def _pattern_extension(p: Pattern) -> str | None:
    """The extension every path the pattern matches has; None if it varies."""
    if p.is_static:
        return _shape(p.text)[1]
    suffix = p.literal_suffix
    if "/" in suffix:  # the last segment is all literal
        last = suffix[suffix.rfind("/") + 1:]
        return last[last.rfind(".") + 1:] if "." in last else ""
    if "." in suffix:  # a wildcard before it may hold dots, but the last one is in the suffix
        return suffix[suffix.rfind(".") + 1:]
    return None
