"""Path patterns with wildcards: the bridge from a target path to a rule's bindings and back.

Three spellings of a wildcard:

* ``{name}``: Snakemake's untyped wildcard, ``.+`` (greedy, may cross ``/``), value is a ``str``;
* ``{name,regex}``: Snakemake's constrained wildcard, value is a ``str``;
* ``{name:TYPE}``: a typed wildcard. Built-in types are ``str`` (one path segment), ``int``,
  ``float``, ``date`` (ISO ``YYYY-MM-DD``, a real calendar date) and ``path`` (one or more segments,
  relative, no ``..``). A rule file declares more with ``wildcard_type(name, regex, convert)``.

``Pattern.match`` returns ``Bindings`` (typed values) or ``None`` (or refuses a value, see Safety);
``Pattern.format`` writes back the *raw* spelling, so ``lanes/007.txt`` round-trips although
``wildcards.lane == 7``. Values of the built-in numeric/date types are subclasses whose ``str()`` is
the raw spelling, so ``f"lanes/{wildcards.lane}.txt"`` in an input function gives the same path.

Safety: values come from target names and file names, which anyone may choose, so a value is checked
where it is bound, before any rule function, command, message or script sees it. A value with shell
syntax (``; | & $ ` < > ( ) ' "``) or a control character is refused (``UnsafeWildcardError``)
unless the wildcard's own regex names that character literally (``{name,[\\w.;]+}``, a
``wildcard_constraints`` entry, a ``wildcard_type``); ``.``, classes such as ``\\w``/``\\s``, ranges
and negated sets name nothing, so ``{name}``, ``{name,[^/]+}``, ``str`` and ``path`` refuse them all.
A value that is absolute or has a ``..`` segment is always refused — or, when the whole path lies
outside the working directory (no rule can make it), simply does not match.

Speed: regexes are compiled once; a literal prefix/suffix check rejects most paths before the regex.
"""

from __future__ import annotations

import functools
import re
import sys
from dataclasses import dataclass
from datetime import date
from typing import Any, Callable, Iterator, Mapping

from flowmake.errors import UnsafeWildcardError, WildcardError

if sys.version_info >= (3, 11):
    import re._parser as _sre  # type: ignore[import-not-found, unused-ignore]  # what a regex names
else:  # pragma: no cover - Python 3.10
    import sre_parse as _sre

# {name}, {name,constraint} (constraint may nest one level of braces: {n,\d{3}}), {name:type}.
WILDCARD_RE = re.compile(
    r"""\{
        (?=(\s*(?P<name>\w+)
            (?:\s*:\s*(?P<type>\w+)
             |\s*,\s*(?P<constraint>(?:[^{}]+|\{\d+(?:,\d+)?\})*)
            )?\s*
        ))\1
    \}""",
    re.VERBOSE,
)


class _RawInt(int):
    """An int that remembers how it was spelled in the path (``007``)."""

    raw: str

    def __str__(self) -> str:
        return self.raw

    def __format__(self, spec: str) -> str:
        return self.raw if not spec else int.__format__(self, spec)


class _RawFloat(float):
    raw: str

    def __str__(self) -> str:
        return self.raw

    def __format__(self, spec: str) -> str:
        return self.raw if not spec else float.__format__(self, spec)


class _RawDate(date):
    raw: str

    def __str__(self) -> str:
        return self.raw

    def __format__(self, spec: str) -> str:
        return self.raw if not spec else date.__format__(self, spec)


def _to_int(raw: str) -> int:
    v = _RawInt(raw)
    v.raw = raw
    return v


def _to_float(raw: str) -> float:
    v = _RawFloat(raw)
    v.raw = raw
    return v


def _to_date(raw: str) -> date:
    d = date.fromisoformat(raw)  # ValueError for 2024-02-30: no match
    v = _RawDate(d.year, d.month, d.day)
    v.raw = raw
    return v


@dataclass(frozen=True)
class WildcardType:
    """A wildcard type: what it matches (``regex``) and what value it becomes (``convert``).

    ``convert`` raising ``ValueError``/``TypeError`` means "does not match".
    """

    name: str
    regex: str
    convert: Callable[[str], Any] | None = None


BUILTIN_TYPES: Mapping[str, WildcardType] = {
    "str": WildcardType("str", r"[^/]+"),
    "int": WildcardType("int", r"[-+]?\d+", _to_int),
    "float": WildcardType("float", r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?", _to_float),
    "date": WildcardType("date", r"\d{4}-\d{2}-\d{2}", _to_date),
    "path": WildcardType("path", r"[^/]+(?:/[^/]+)*"),
}


SHELL_SYNTAX = frozenset(";|&$`<>()'\"")
CONTROL = frozenset(map(chr, [*range(0x20), *range(0x7F, 0xA0)]))
REFUSED = SHELL_SYNTAX | CONTROL


def named_chars(regex: str) -> frozenset[str]:
    """The characters a regex names one by one (``;`` in ``[\\w;]`` or ``a\\;b``), not those it
    merely admits through ``.``, a class escape, a range or a negated set."""
    try:
        tree = _sre.parse(regex)
    except re.error:
        return frozenset()
    found: set[str] = set()
    todo: list[Any] = [tree]
    while todo:
        for op, av in todo.pop():
            if op is _sre.LITERAL:
                found.add(chr(av))
            elif op is _sre.IN and not (av and av[0][0] is _sre.NEGATE):
                found.update(chr(v) for o, v in av if o is _sre.LITERAL)
            elif op is _sre.BRANCH:
                todo.extend(av[1])
            elif op is _sre.SUBPATTERN or op in _REPEATS:
                todo.append(av[-1])
            elif op is _sre.ASSERT:  # a lookahead that must hold; ASSERT_NOT names what is excluded
                todo.append(av[1])
    return frozenset(found)


_REPEATS = tuple(getattr(_sre, n) for n in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT")
                 if hasattr(_sre, n))


@functools.lru_cache(maxsize=256)
def _refusal_search(allowed: frozenset[str]) -> Callable[[str], "re.Match[str] | None"]:
    """``search`` of a regex that finds what makes a value unsafe: a leading ``/``, a ``..``
    segment, or a refused character that ``allowed`` does not take back."""
    chars = "".join(f"\\x{ord(c):02x}" for c in sorted(REFUSED - allowed))
    return re.compile(r"^/|(?:^|/)\.\.(?:/|$)" + (f"|[{chars}]" if chars else "")).search


def _refusal(pattern: str, path: str, name: str, value: str, found: re.Match[str]) -> UnsafeWildcardError:
    bad = found.group()
    if bad == "/":
        why, hint = "which is an absolute path", "a wildcard value never starts with '/'"
    elif bad not in REFUSED:
        why, hint = "which has a '..' segment", "a wildcard value never has a '..' segment"
    else:
        kind = "shell syntax" if bad in SHELL_SYNTAX else "a control character"
        example = re.escape(bad) if bad in SHELL_SYNTAX else f"\\x{ord(bad):02x}"
        why = f"which contains {bad!r} ({kind})"
        hint = (f"choose another name, or let the wildcard take {bad!r} by naming it in its regex, "
                f"e.g. {{{name},[\\w.{example}]+}}")
    return UnsafeWildcardError(f"wildcard '{name}' would be {value!r}, {why}", wildcard=name,
                               value=value, path=path, pattern=pattern, hint=hint)


def _outside(path: str) -> bool:
    """Whether a path lies outside the working directory on its face (absolute, or starts with ..)."""
    return path[:1] == "/" or path == ".." or path[:3] == "../"


class Bindings(Mapping[str, Any]):
    """Wildcard name → typed value; ``raw(name)`` is the spelling from the path."""

    __slots__ = ("_values", "_raw")

    def __init__(self, values: Mapping[str, Any], raw: Mapping[str, str] | None = None) -> None:
        self._values = dict(values)
        self._raw = dict(raw) if raw is not None else {k: str(v) for k, v in self._values.items()}

    @classmethod
    def _fast(cls, values: dict[str, Any], raw: dict[str, str]) -> Bindings:
        b = cls.__new__(cls)
        b._values = values
        b._raw = raw
        return b

    def raw(self, name: str) -> str:
        return self._raw[name]

    def raw_dict(self) -> dict[str, str]:
        return dict(self._raw)

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Bindings):
            return self._raw == other._raw
        return isinstance(other, Mapping) and dict(self._values) == dict(other)

    def __hash__(self) -> int:
        return hash(frozenset(self._raw.items()))

    def __repr__(self) -> str:
        return f"Bindings({self._raw!r})"


def _literal_prefix(parts: list[str | tuple]) -> str:
    return parts[0] if parts and isinstance(parts[0], str) else ""


class Pattern:
    """A path pattern. ``constraints`` (name → regex) apply to untyped wildcards without an inline one.

    ``types`` maps type names to ``WildcardType`` (defaults to the built-ins).
    """

    __slots__ = ("text", "wildcards", "is_static", "_parts", "_regex", "_prefix", "_suffix",
                 "_converters", "_types_of", "_template", "_checks")

    def __init__(
        self,
        text: str,
        constraints: Mapping[str, str] | None = None,
        types: Mapping[str, WildcardType] | None = None,
    ) -> None:
        self.text = str(text)
        types = BUILTIN_TYPES if types is None else types
        constraints = constraints or {}
        # _parts: literal strings and (name,) tuples, in order; used by format().
        parts: list[str | tuple[str]] = []
        regex: list[str] = []
        names: list[str] = []
        converters: dict[str, Callable[[str], Any]] = {}
        checks: list[tuple[str, Callable[[str], re.Match[str] | None]]] = []
        self._types_of: dict[str, str] = {}
        pos = 0
        for m in WILDCARD_RE.finditer(self.text):
            literal = self.text[pos:m.start()]
            if literal:
                parts.append(literal)
                regex.append(re.escape(literal))
            name = m.group("name")
            parts.append((name,))
            if name in names:
                regex.append(f"(?P={name})")  # a repeated wildcard must match the same value
            else:
                names.append(name)
                wregex = self._wildcard_regex(m, constraints, types, converters)
                regex.append(f"(?P<{name}>{wregex})")
                checks.append((name, _refusal_search(named_chars(wregex) & REFUSED)))
            pos = m.end()
        if pos < len(self.text):
            parts.append(self.text[pos:])
            regex.append(re.escape(self.text[pos:]))
        self._parts = parts
        self.wildcards: tuple[str, ...] = tuple(names)
        self.is_static = not names
        self._converters = converters
        self._checks = tuple(checks)
        # A static pattern matches by string equality: compiling a regex for each of the thousands
        # of plain paths an expand() makes would dominate loading.
        self._regex = re.compile("".join(regex), re.DOTALL) if names else None
        self._prefix = _literal_prefix(parts)
        self._suffix = parts[-1] if parts and isinstance(parts[-1], str) and names else ""
        # str.format_map template for the fast path of format(); None when a name is not a
        # valid keyword field (e.g. all digits).
        self._template: str | None = "".join(
            p.replace("{", "{{").replace("}", "}}") if isinstance(p, str) else "{" + p[0] + "}"
            for p in parts) if all(not n[0].isdigit() for n in names) else None

    def _wildcard_regex(self, m: re.Match, constraints: Mapping[str, str],
                        types: Mapping[str, WildcardType],
                        converters: dict[str, Callable[[str], Any]]) -> str:
        name, type_name, inline = m.group("name"), m.group("type"), m.group("constraint")
        if type_name is not None:
            wtype = types.get(type_name)
            if wtype is None:
                raise WildcardError(
                    f"unknown wildcard type '{type_name}' in pattern '{self.text}'",
                    hint="built-in types are " + ", ".join(BUILTIN_TYPES)
                    + "; declare more with wildcard_type(name, regex, convert)",
                )
            self._types_of[name] = type_name
            if wtype.convert is not None:
                converters[name] = wtype.convert
            return wtype.regex
        if inline is not None:
            return inline
        return constraints.get(name, ".+")

    @property
    def literal_suffix(self) -> str:
        """The text after the last wildcard (all of it for a static pattern)."""
        return self.text if self.is_static else self._suffix

    @property
    def literal_prefix(self) -> str:
        """The text before the first wildcard (all of it for a static pattern)."""
        return self.text if self.is_static else self._prefix

    def type_of(self, name: str) -> str | None:
        """The declared type name of a wildcard, or None for an untyped one."""
        return self._types_of.get(name)

    def match(self, path: str) -> Bindings | None:
        regex = self._regex
        if regex is None:  # a static pattern
            return Bindings._fast({}, {}) if path == self.text else None
        if not path.startswith(self._prefix) or not path.endswith(self._suffix):
            return None
        m = regex.fullmatch(path)
        if m is None:
            return None
        raw = m.groupdict()
        for name, search in self._checks:  # see "Safety" above
            found = search(raw[name])
            if found is not None:
                if _outside(path) and found.group() not in REFUSED:
                    return None  # no rule makes a path outside the working directory
                raise _refusal(self.text, path, name, raw[name], found)
        if not self._converters:
            return Bindings._fast(raw, raw)
        return self._convert(raw)

    def _convert(self, raw: dict[str, str]) -> Bindings | None:
        values = dict(raw)
        for name, convert in self._converters.items():
            try:
                values[name] = convert(raw[name])
            except (ValueError, TypeError, OverflowError):
                return None
        return Bindings._fast(values, raw)

    def bindings_from_raw(self, raw: Mapping[str, str]) -> Bindings:
        """Typed bindings from raw strings (e.g. from another process); WildcardError if they do not fit."""
        raw = {k: str(v) for k, v in raw.items()}
        for name in self.wildcards:
            if name not in raw:
                raise WildcardError(f"wildcard '{name}' of pattern '{self.text}' has no value")
        probe = self.format(Bindings._fast(raw, raw))
        b = self.match(probe)
        if b is None:
            raise WildcardError(
                f"wildcard values {raw!r} do not fit pattern '{self.text}'",
            )
        if b._values == b._raw and any(b._raw[n] != raw[n] for n in b._raw):
            # An ambiguous pattern ({a}{b}) that parses the probe another way: keep the given split.
            return Bindings._fast(dict(raw), dict(raw))
        values = dict(raw)
        values.update(b._values)
        return Bindings._fast(values, {**raw, **b._raw})

    def format_template(self) -> str | None:
        """A ``str.format_map`` template that formats raw values as ``format`` does; None when a
        wildcard's name cannot be a format field."""
        return self._template

    def format(self, bindings: Mapping[str, Any]) -> str:
        if self.is_static:
            return self.text
        raw = bindings._raw if isinstance(bindings, Bindings) else None
        if raw is not None and self._template is not None:
            try:
                return self._template.format_map(raw)
            except KeyError:
                pass  # fall through for the error message
        out: list[str] = []
        for part in self._parts:
            if isinstance(part, str):
                out.append(part)
                continue
            name = part[0]
            try:
                out.append(raw[name] if raw is not None else str(bindings[name]))
            except KeyError:
                raise WildcardError(
                    f"wildcard '{name}' in '{self.text}' cannot be determined",
                    hint="wildcards in input, log and benchmark must appear in the output patterns",
                ) from None
        return "".join(out)

    def __repr__(self) -> str:
        return f"Pattern({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pattern) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)


def wildcard_names(text: str) -> tuple[str, ...]:
    """Wildcard names of a pattern text, in order of first appearance, without compiling it."""
    seen: dict[str, None] = {}
    for m in WILDCARD_RE.finditer(text):
        seen.setdefault(m.group("name"), None)
    return tuple(seen)


def make_type(name: str, regex: str, convert: Callable[[str], Any] | None = None) -> WildcardType:
    """Validate and build a custom wildcard type (the rule file's ``wildcard_type``)."""
    if not re.fullmatch(r"[A-Za-z_]\w*", name):
        raise WildcardError(f"wildcard type name '{name}' is not an identifier")
    try:
        compiled = re.compile(regex)
    except re.error as e:
        raise WildcardError(f"wildcard type '{name}': bad regex {regex!r}: {e}") from None
    if compiled.groupindex:
        raise WildcardError(f"wildcard type '{name}': regex {regex!r} must not use named groups")
    if convert is not None and not callable(convert):
        raise WildcardError(f"wildcard type '{name}': converter must be callable")
    return WildcardType(name, regex, convert)
