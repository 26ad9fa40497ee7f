"""Rule syntax → plain Python, line for line.

Every edit stays on its own line, so the translated source has exactly the line numbers of the
rule file and Python's SyntaxErrors and tracebacks point at the right Flowfile line.

A rule block becomes a class statement whose metaclass is the builder's rule factory: the body runs
immediately (so rules in loops and under ``if`` work), Python scoping is untouched, and the class
namespace hands the directive values, including the ``run:`` function, to the builder::

    rule align:                      class ___(metaclass=__flowmake__.rule('align', 1, False, 0)):
        input: "a.fq", ref="r.fa"        __flow_input__ = __flowmake__.args(2, "a.fq", ref="r.fa")
        run:                             def __flow_run__(input, output, params, wildcards, ...):
            shell("...")                     shell("...")

Top-level directives become builder calls (``include: "x"`` → ``__flowmake__.include(3, "x")``);
``onstart:``/``onsuccess:``/``onerror:`` blocks become functions the builder collects after the file
ran. ``module NAME:`` becomes ``__flowmake__.module(ROW, 'NAME', snakefile=(...),)``; ``use rule ...``
a ``__flowmake__.use_rule(...)()`` call or, with ``with:``, a class statement whose body holds the
overriding directives like a rule's (``modules`` does the rest). Only ``__flowmake__`` links the
namespace to the engine. The class is named ``___`` because
Python does not mangle private names inside an all-underscore class, so ``__x`` in a rule body
means what it says.
"""

from __future__ import annotations

import io
import re
import textwrap
import tokenize
from dataclasses import dataclass, field
from typing import Callable

from flowmake.errors import FlowfileError, Location, did_you_mean
from flowmake.shellfmt import FSTRING_FIELDS

ACTIONS = ("shell", "run", "script", "notebook", "wrapper", "template_engine", "cwl")
UNSUPPORTED = ("cwl",)
RULE_DIRECTIVES = (
    "input", "output", "params", "threads", "resources", "log", "benchmark", "message",
    "priority", "retries", "container", "singularity", "wildcard_constraints", "localrule",
    "default_target", "cache", "name", "conda", "envmodules", "shadow", "group", "handover",
    *ACTIONS,
)
TOP_DIRECTIVES = (
    "include", "configfile", "localrules", "ruleorder", "wildcard_constraints", "workdir",
    "onstart", "onsuccess", "onerror", "container", "singularity", "containerized", "conda",
    "envvars", "report", "inputflags", "outputflags", "pepfile", "pepschema",
    "storage", "scattergather", "resource_scopes",
)
HOOKS = ("onstart", "onsuccess", "onerror")
MODULE_KEYS = ("name", "snakefile", "meta_wrapper", "config", "skip_validation", "replace_prefix",
               "prefix")
FSHELL_ARGS = ", ".join(FSTRING_FIELDS)
RUN_ARGS = "input, output, params, wildcards, threads, resources, log, rule, config, shell"
_SKIP = (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT,
         tokenize.ENDMARKER)


@dataclass
class Translation:
    source: str
    # rule keyword line → dedented source of its run: block
    run_sources: dict[int, str] = field(default_factory=dict)


@dataclass
class _Line:
    tokens: list[tokenize.TokenInfo]

    @property
    def col(self) -> int:
        return self.tokens[0].start[1]

    @property
    def row(self) -> int:
        return self.tokens[0].start[0]


def _logical_lines(source: str, path: str) -> list[_Line]:
    lines: list[_Line] = []
    current: list[tokenize.TokenInfo] = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.NEWLINE:
                if current:
                    lines.append(_Line(current))
                current = []
            elif tok.type not in _SKIP:
                current.append(tok)
    except tokenize.TokenError as e:
        # Python's own parser names the line that opened the bracket or string; prefer it.
        try:
            compile(source, path, "exec")
        except SyntaxError as se:
            raise FlowfileError(f"invalid syntax: {se.msg}", location=Location(path, se.lineno),
                                details=[(se.text or "").strip()]) from None
        row = e.args[1][0] if len(e.args) > 1 else None
        raise FlowfileError(f"unexpected end of file: {e.args[0]}", location=Location(path, row),
                            hint="check for an unclosed bracket or string") from None
    except SyntaxError as e:  # IndentationError and friends
        raise FlowfileError(f"{e.msg}", location=Location(path, e.lineno),
                            details=[(e.text or "").strip()]) from None
    if current:
        lines.append(_Line(current))
    return lines


class _Translator:
    def __init__(self, source: str, path: str, file_id: int) -> None:
        self.source = source
        self.src_lines = source.splitlines(keepends=True)
        self.path = path
        self.file_id = file_id
        self.lines = _logical_lines(source, path)
        self.edits: list[tuple[int, int, int, str]] = []  # (row, col_start, col_end, text)
        self.run_sources: dict[int, str] = {}

    def error(self, message: str, row: int, hint: str | None = None) -> FlowfileError:
        text = self.src_lines[row - 1].strip() if 0 < row <= len(self.src_lines) else ""
        return FlowfileError(message, location=Location(self.path, row), hint=hint,
                             details=[text] if text else [])

    def _block_end(self, i: int) -> int:
        """Index just past the lines indented deeper than line i."""
        col, j = self.lines[i].col, i + 1
        while j < len(self.lines) and self.lines[j].col > col:
            j += 1
        return j

    def translate(self) -> Translation:
        i = 0
        while i < len(self.lines):
            toks = self.lines[i].tokens
            first = toks[0]
            if first.type == tokenize.NAME and _is_rule_header(toks):
                i = self._rule(i)
            elif first.type == tokenize.NAME and len(toks) > 1 and toks[1].string == ":" \
                    and first.string in TOP_DIRECTIVES:
                i = self._top_directive(i)
            elif first.string == "storage" and len(toks) > 2 and toks[1].type == tokenize.NAME \
                    and toks[2].string == ":" and first.start[1] == 0:
                i = self._tagged_storage(i)
            elif _is_use_rule(toks):
                i = self._use_rule(i)
            elif _is_module(toks):
                i = self._module(i)
            elif _looks_like_misspelt_directive(toks):
                # `inclde: "x.smk"` is a valid Python annotation that would silently do nothing.
                raise self.error(f"unknown directive '{first.string}'", first.start[0],
                                 hint=did_you_mean(first.string, TOP_DIRECTIVES))
            else:
                i += 1
        return Translation(self._apply(), self.run_sources)

    # -- rules ------------------------------------------------------------------------------

    def _rule(self, i: int) -> int:
        toks = self.lines[i].tokens
        kw, row = toks[0], toks[0].start[0]
        name = toks[1].string if toks[1].type == tokenize.NAME else None
        colon = toks[2] if name else toks[1]
        if len(toks) > (3 if name else 2):
            rest = toks[3 if name else 2:]
            if not (len(rest) > 2 and rest[0].type == tokenize.NAME and rest[1].string == ":"
                    and rest[0].string in RULE_DIRECTIVES and rest[0].string != "run"):
                raise self.error(f"unexpected text after '{kw.string}' header", row)
            # A one-line rule (`rule all: input: "x"`): the directive becomes a line of its own,
            # deeper than the header, and Python takes `class ___(...): stmt` on one line.
            self.lines[i:i + 1] = [_Line(toks[:len(toks) - len(rest)]), _Line(rest)]
        end = self._block_end(i)
        if end == i + 1:
            raise self.error(f"{kw.string} '{name or ''}' has no directives", row)
        factory = (f"__flowmake__.rule({name!r}, {row}, {kw.string == 'checkpoint'}, "
                   f"{self.file_id})")
        # An all-underscore class name turns off private-name mangling, so user code in the
        # rule body that uses __names means what it says.
        self._replace(kw, colon, f"class ___(metaclass={factory}):")
        seen: dict[str, int] = {}
        action: str | None = None
        k = i + 1
        if self.lines[k].tokens[0].type == tokenize.STRING and all(
                t.type == tokenize.STRING for t in self.lines[k].tokens):
            k += 1  # a docstring, as Snakemake allows; it stays the class docstring
        while k < end:
            k, directive = self._rule_directive(k, row, name, seen, action)
            if directive in ACTIONS:
                action = directive
        return end

    def _rule_directive(self, k: int, rule_row: int, rule_name: str | None,
                        seen: dict[str, int], action: str | None) -> tuple[int, str]:
        toks = self.lines[k].tokens
        head, row = toks[0], toks[0].start[0]
        if head.type != tokenize.NAME or len(toks) < 2 or toks[1].string != ":":
            raise self.error("expected a rule directive such as 'input:' or 'shell:'", row)
        d = head.string
        label = f"rule '{rule_name}'" if rule_name else "rule"
        if d not in RULE_DIRECTIVES:
            raise self.error(f"unknown directive '{d}' in {label}", row,
                             hint=did_you_mean(d, RULE_DIRECTIVES))
        if d in UNSUPPORTED:
            raise self.error(f"'{d}' is not supported", row)
        if action is not None:
            raise self.error(f"'{d}' after the action '{action}:' in {label}; the action "
                             "(shell, run, script, wrapper or notebook) must come last", row)
        if d in seen:
            raise self.error(f"'{d}' given twice in {label}", row)
        seen[d] = row
        end = self._block_end(k)
        if d == "run":
            self._run(k, end, rule_row)
        elif d == "shell" and _is_fstring(toks[2:] + [t for ln in self.lines[k + 1:end] for t in ln.tokens]):
            # Snakemake formats an f-string command in the job's function, where input, output,
            # ... are the job's: the lambda defers it to the step (``Instance.command``).
            last = self.lines[end - 1].tokens[-1]
            first = toks[2] if len(toks) > 2 else self.lines[k + 1].tokens[0]
            text = "".join(self.src_lines[first.start[0] - 1:last.end[0]])
            text = text[first.start[1]:len(text) - len(self.src_lines[last.end[0] - 1]) + last.end[1]]
            self._call(k, end, f"__flow_shell__ = __flowmake__.args({row}, __flowmake__.fshell("
                               f"{text!r}, lambda {FSHELL_ARGS}: ")
            self.edits.append((last.end[0], last.end[1], last.end[1], ")"))
        else:
            self._call(k, end, f"__flow_{d}__ = __flowmake__.args({row}, ")
        return end, d

    def _run(self, k: int, end: int, rule_row: int) -> None:
        toks = self.lines[k].tokens
        self._replace(toks[0], toks[1], f"def __flow_run__({RUN_ARGS}):")
        self.run_sources[rule_row] = self._block_text(k, end)

    def _block_text(self, k: int, end: int) -> str:
        toks = self.lines[k].tokens
        if len(toks) > 2:  # inline: `run: shell("...")`
            line = self.src_lines[toks[2].start[0] - 1]
            return line[toks[2].start[1]:].strip() + "\n"
        if end == k + 1:
            raise self.error(f"'{toks[0].string}' has no body", toks[0].start[0])
        first = self.lines[k + 1].row
        last = self.lines[end - 1].tokens[-1].end[0]
        return textwrap.dedent("".join(self.src_lines[first - 1:last]))

    # -- top level ---------------------------------------------------------------------------

    def _top_directive(self, i: int) -> int:
        toks = self.lines[i].tokens
        d, row = toks[0].string, toks[0].start[0]
        end = self._block_end(i)
        if d in HOOKS:
            self._replace(toks[0], toks[1], f"def __flow_{d}__(log=None):")
            self._block_text(i, end)  # checks there is a body
        elif d in ("localrules", "ruleorder"):
            self._names_list(i, end, d)
        elif d == "storage":
            self._call(i, end, f"__flowmake__.storage_directive({row}, None, ")
        else:
            self._call(i, end, f"__flowmake__.{d}({row}, ")
        return end

    def _tagged_storage(self, i: int) -> int:
        """`storage NAME: provider="s3", ...` → `__flowmake__.storage_directive(ROW, 'NAME', ...)`."""
        toks = self.lines[i].tokens
        row, end = toks[0].start[0], self._block_end(i)
        body = toks[3:] + [t for line in self.lines[i + 1:end] for t in line.tokens]
        if not body:
            raise self.error(f"'storage {toks[1].string}' has no value", row)
        self._replace(toks[0], toks[2], f"__flowmake__.storage_directive({row}, {toks[1].string!r}, ")
        self.edits.append((body[-1].end[0], body[-1].end[1], body[-1].end[1], ")"))
        return end

    def _names_list(self, i: int, end: int, d: str) -> None:
        """`localrules: a, b` and `ruleorder: a > b` name rules with bare words: quote them."""
        body = [t for line in self.lines[i:end] for t in line.tokens][2:]
        sep = "," if d == "localrules" else ">"
        for t in body:
            if t.type == tokenize.NAME:
                self.edits.append((t.start[0], t.start[1], t.end[1], repr(t.string)))
            elif t.string == sep:
                self.edits.append((t.start[0], t.start[1], t.end[1], ","))
            else:
                raise self.error(f"unexpected '{t.string}' in {d}", t.start[0])
        self._call(i, end, f"__flowmake__.{d}({self.lines[i].row}, ")

    # -- modules (flowfile/modules.py does the work) ----------------------------------------

    def _module(self, i: int) -> int:
        """`module NAME:` + `key: value` lines → `__flowmake__.module(ROW, 'NAME', key=(value),)`."""
        toks = self.lines[i].tokens
        row = toks[0].start[0]
        name = toks[1].string if len(toks) == 3 else None
        end = self._block_end(i)
        if end == i + 1:
            raise self.error(f"module '{name or ''}' has no keys", row,
                             hint="a module needs 'snakefile:' (or 'meta_wrapper:')")
        self._replace(toks[0], toks[-1], f"__flowmake__.module({row}, {name!r},")
        # Insertions at one spot apply in reverse order of appending: the module's ")" goes
        # first so that it lands after the last key's "),".
        last = self.lines[end - 1].tokens[-1]
        self.edits.append((last.end[0], last.end[1], last.end[1], ")"))
        seen: set[str] = set()
        k = i + 1
        while k < end:
            line = self.lines[k].tokens
            key, krow = line[0], line[0].start[0]
            if all(t.type == tokenize.STRING for t in line):  # a docstring: ignored, as Snakemake does
                for t in line:
                    self.edits.append((t.start[0], t.start[1], t.end[1], "" if t.start[0] == t.end[0]
                                       else t.string))
                if line[0].start[0] != line[-1].end[0]:
                    raise self.error("a docstring in a module must be on one line", krow)
                k += 1
                continue
            if key.type != tokenize.NAME or len(line) < 2 or line[1].string != ":":
                raise self.error("expected a module key such as 'snakefile:'", krow)
            if key.string == "pathvars":
                raise self.error("'pathvars' is not supported", krow)
            if key.string not in MODULE_KEYS:
                raise self.error(f"unknown key '{key.string}' in module '{name or ''}'", krow,
                                 hint=did_you_mean(key.string, MODULE_KEYS))
            if key.string in seen:
                raise self.error(f"'{key.string}' given twice in module '{name or ''}'", krow)
            seen.add(key.string)
            k_end = self._block_end(k)
            last = self.lines[k_end - 1].tokens[-1]
            self.edits.append((last.end[0], last.end[1], last.end[1], ","))
            self._call(k, k_end, f"{key.string}=(")
            k = k_end
        return end

    def _use_rule(self, i: int) -> int:
        """`use rule a, b from M exclude c as m_* with:` → a builder call, or a class statement
        whose body holds the `with:` block's directives (like a rule's)."""
        toks = self.lines[i].tokens
        row = toks[0].start[0]
        rules, module, exclude, pattern, has_with = _parse_use_rule(toks, lambda m: self.error(m, row))
        end = self._block_end(i)
        call = (f"__flowmake__.use_rule({row}, {tuple(rules)!r}, {module!r}, {tuple(exclude)!r}, "
                f"{pattern!r}, {self.file_id})")
        if not has_with:
            if end != i + 1:
                raise self.error("unexpected indented block after 'use rule' without 'with:'", row)
            self._replace(toks[0], toks[-1], call + "()")
            return end
        if end == i + 1:
            raise self.error("'with:' has no directives", row)
        self._replace(toks[0], toks[-1], f"class ___(metaclass={call}):")
        label = ", ".join(rules)
        seen: dict[str, int] = {}
        k = i + 1
        while k < end:
            line = self.lines[k].tokens
            if all(t.type == tokenize.STRING for t in line):
                k += 1  # a docstring, as in a rule
                continue
            d = line[0].string
            if d in ACTIONS:
                raise self.error(f"'{d}' cannot be changed by 'use rule ... with:'",
                                 line[0].start[0], hint="the used rule keeps its action")
            if d == "name":
                raise self.error(f"'{d}' cannot be changed by 'use rule ... with:'",
                                 line[0].start[0], hint="name the rule with 'as'")
            k, _ = self._rule_directive(k, row, label, seen, None)
        return end

    # -- edits -------------------------------------------------------------------------------

    def _call(self, k: int, end: int, prefix: str) -> None:
        """`name: EXPR...` → `prefix EXPR...)`, the closing paren after the body's last token."""
        toks = self.lines[k].tokens
        body = toks[2:] + [t for line in self.lines[k + 1:end] for t in line.tokens]
        if not body:
            raise self.error(f"'{toks[0].string}' has no value", toks[0].start[0])
        self._replace(toks[0], toks[1], prefix)
        last = body[-1]
        self.edits.append((last.end[0], last.end[1], last.end[1], ")"))

    def _replace(self, first: tokenize.TokenInfo, last: tokenize.TokenInfo, text: str) -> None:
        if first.start[0] != last.end[0]:
            raise self.error("a directive name and its ':' must be on one line", first.start[0])
        self.edits.append((first.start[0], first.start[1], last.end[1], text))

    def _apply(self) -> str:
        lines = list(self.src_lines)
        # Right to left within a line so earlier columns stay valid.
        for row, start, end, text in sorted(self.edits, key=lambda e: (e[0], e[1]), reverse=True):
            line = lines[row - 1]
            lines[row - 1] = line[:start] + text + line[end:]
        return "".join(lines)


def _is_fstring(body: list[tokenize.TokenInfo]) -> bool:
    if not body:
        return False
    t = body[0]
    if getattr(tokenize, "FSTRING_START", None) == t.type:  # Python >= 3.12
        return True
    return t.type == tokenize.STRING and "f" in t.string[:3].split("'")[0].split('"')[0].lower()


def _is_rule_header(toks: list[tokenize.TokenInfo]) -> bool:
    if toks[0].string not in ("rule", "checkpoint") or len(toks) < 2:
        return False
    if toks[1].string == ":":
        return True
    return len(toks) >= 3 and toks[1].type == tokenize.NAME and toks[2].string == ":"


def _looks_like_misspelt_directive(toks: list[tokenize.TokenInfo]) -> bool:
    """`NAME: "string"` at column 0 (a bare annotation) whose NAME is close to a top-level directive.

    Column 0 only: inside a class, `field: "Type"` is an ordinary forward-reference annotation.
    """
    return (len(toks) == 3 and toks[0].start[1] == 0 and toks[0].type == tokenize.NAME
            and toks[1].string == ":"
            and toks[2].type == tokenize.STRING and toks[0].string not in TOP_DIRECTIVES
            and did_you_mean(toks[0].string, TOP_DIRECTIVES) is not None)


def _is_use_rule(toks: list[tokenize.TokenInfo]) -> bool:
    return len(toks) >= 2 and toks[0].string == "use" and toks[1].string == "rule"


def _is_module(toks: list[tokenize.TokenInfo]) -> bool:
    """`module NAME:` or `module:` (the name given by a `name:` key), then a block."""
    if toks[0].string != "module" or toks[0].type != tokenize.NAME:
        return False
    if len(toks) == 2:
        return toks[1].string == ":"
    return len(toks) == 3 and toks[1].type == tokenize.NAME and toks[2].string == ":"


def _parse_use_rule(toks: list[tokenize.TokenInfo], error: Callable[[str], FlowfileError],
                    ) -> tuple[list[str], str | None, list[str], str | None, bool]:
    """The parts of a `use rule` line, with Snakemake's grammar: rules, from, exclude, as, with."""
    words = [t.string for t in toks[2:]]
    rules: list[str] = []
    k = 0
    while True:
        if k >= len(words) or words[k] in ("from", "as", "with", "exclude", ":"):
            raise error("expected rule names (or '*') after 'use rule'")
        if words[k] == "*":
            rules.append("*")
        elif toks[2 + k].type == tokenize.NAME:
            rules.append(words[k])
        else:
            raise error(f"unexpected '{words[k]}' in the rule names of 'use rule'")
        k += 1
        if k < len(words) and words[k] == ",":
            k += 1
            continue
        break
    module = None
    exclude: list[str] = []
    if k < len(words) and words[k] == "from":
        if k + 1 >= len(words) or toks[3 + k].type != tokenize.NAME:
            raise error("expected a module name after 'from'")
        module, k = words[k + 1], k + 2
        if k < len(words) and words[k] == "exclude":
            k += 1
            while k < len(words) and toks[2 + k].type == tokenize.NAME and words[k] not in ("as", "with"):
                exclude.append(words[k])
                k += 1
                if k < len(words) and words[k] == ",":
                    k += 1
            if not exclude:
                raise error("expected rule names after 'exclude'")
    elif "*" in rules:
        raise error("'use rule *' needs 'from MODULE'")
    pattern = None
    if k < len(words) and words[k] == "as":
        k += 1
        parts: list[str] = []
        while k < len(words) and words[k] not in ("with", ":"):
            parts.append(words[k])
            k += 1
        pattern = "".join(parts)
        if not re.fullmatch(r"[A-Za-z_*][\w*-]*", pattern or "-"):
            raise error(f"invalid name after 'as': '{pattern}'")
    has_with = k < len(words) and words[k] == "with"
    if has_with:
        if words[k + 1:] != [":"]:
            raise error("expected ':' after 'with' (and nothing else)")
        if "*" in rules:
            raise error("'with:' cannot be combined with 'use rule *'")
    elif k < len(words):
        raise error(f"unexpected '{words[k]}' in 'use rule'; expected 'as', 'with' or the end of the line")
    if module is None and pattern is None:
        raise error("'use rule' without 'from MODULE' needs 'as NEW_NAME'")
    return rules, module, exclude, pattern, has_with


def translate(source: str, path: str, file_id: int = 0) -> Translation:
    """Translate a rule file's text; FlowfileError (with file:line) for rule-syntax mistakes."""
    return _Translator(source, path, file_id).translate()
