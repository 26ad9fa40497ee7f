"""``--default-resources``, ``--set-resources`` and ``--set-threads``: Snakemake's resource overrides.

Applied to the rules once the rule file is loaded, before the graph is grown, in Snakemake's order:
default resources, then the rule's own ``resources:``, then ``--set-resources RULE:NAME=VALUE``;
``--set-threads RULE=N`` replaces a rule's ``threads:``.

A value is read as Snakemake reads it: a whole number; for ``mem``/``disk`` a size with a unit
(``4GB``, ``500MiB``, stored as ``mem_mb``/``disk_mb`` like Snakemake 9 does) and for ``runtime`` a
timespan (``2h``, ``30m``, stored in minutes); else a Python expression over ``input``,
``wildcards``, ``threads`` and ``attempt`` (``2*1024``, ``attempt*60``, ``f"{attempt}h"``,
``min(max(2*input.size_mb, 1000), 8000)``); else, when the text is no expression or names something
unknown (``debug``, ``gpu:1``, ``--nice=10``), the text itself. Snakemake ``eval``s the text with
all of Python; flowmake evaluates only arithmetic, comparisons, conditionals, f-strings, those four
names and ``min max int float round str abs len``, so a profile cannot run code. An expression
that uses anything else is an error naming where it came from.

``--default-resources`` with no values, or any values, starts from Snakemake's defaults
(``mem_mb=min(max(2*input.size_mb, 1000), 8000)``, ``disk_mb=max(2*input.size_mb, 1000) if input
else 50000``, ``tmpdir=system_tmpdir``); Snakemake also uses them when a cluster executor (here:
slurm) runs without the flag. Without either, rules keep exactly their own resources.
"""

from __future__ import annotations

import ast
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from flowmake.errors import ConfigError, FlowmakeError

FULL_DEFAULTS = (
    "mem_mb=min(max(2*input.size_mb, 1000), 8000)",
    "disk_mb=max(2*input.size_mb, 1000) if input else 50000",
    "tmpdir=system_tmpdir",
)
_NAME = re.compile(r"[A-Za-z_]\w*\Z")
_SIZED = ("mem", "disk")
_FUNCS: dict[str, Callable[..., Any]] = {
    "min": min, "max": max, "int": int, "float": float, "round": round, "str": str, "abs": abs,
    "len": len,
}
_NAMES = ("input", "wildcards", "threads", "attempt", "system_tmpdir")
_NUMERIC = ("mem_mb", "disk_mb", "mem_mib", "disk_mib", "runtime", "_threads", "cpus_per_task", "nodes",
            "tasks")


def _tmpdir() -> str:
    import tempfile  # only when a value names system_tmpdir: most runs never import it

    return tempfile.gettempdir()


class _Unknown(Exception):
    """The text names something flowmake cannot know: like Snakemake's NameError, it is a string."""


@dataclass(frozen=True)
class Expr:
    """A resource or threads value computed per job."""

    text: str
    tree: ast.Expression
    name: str  # the resource it sets ("_threads" for --set-threads)
    source: str  # where it was written, for errors
    # Its value follows from the step's wildcards, inputs, threads and attempt, nothing else
    # (system_tmpdir is computed when parsed): rules with it may keep a graph memo (Rule.override).
    foreseeable = True

    def __call__(self, wildcards: Any, input: Any, threads: int = 1, attempt: int = 1) -> Any:
        env = {"input": _Input(input), "wildcards": wildcards, "threads": threads,
               "attempt": attempt, "system_tmpdir": _tmpdir()}
        try:
            value = _eval(self.tree.body, env)
        except FlowmakeError:
            raise
        except Exception as exc:  # e.g. a wildcard that is not there, a division by zero
            raise ConfigError(f"{self.source}: {self.name}={self.text} failed: "
                              f"{type(exc).__name__}: {exc}") from None
        return _normalized_value(self.name, value, self.source)


class _ThreadsExpr(Expr):
    def __call__(self, wildcards: Any, input: Any, attempt: int = 1) -> Any:  # type: ignore[override]
        return super().__call__(wildcards, input, 1, attempt)


class _Input:
    """``input`` in an expression: the rule's input list plus its total size (``input.size_mb``)."""

    def __init__(self, files: Any) -> None:
        self._files = list(files) if files is not None else []

    def __len__(self) -> int:
        return len(self._files)

    def __bool__(self) -> bool:
        return bool(self._files)

    @property
    def size(self) -> int:
        # An input an upstream step has not made yet counts 0: flowmake sizes a job when it plans it.
        total = 0
        for f in self._files:
            try:
                total += os.stat(f).st_size
            except OSError:
                pass
        return total

    @property
    def size_kb(self) -> float:
        return self.size / 1e3

    @property
    def size_mb(self) -> float:
        return self.size / 1e6

    @property
    def size_gb(self) -> float:
        return self.size / 1e9


# ---- parsing --------------------------------------------------------------------------------------


def parse_value(name: str, text: str, source: str, *, threads: bool = False) -> Any:
    """One ``NAME=VALUE``'s value: an int, a string, or an ``Expr`` evaluated per job."""
    text = os.path.expanduser(os.path.expandvars(text))
    try:
        value = int(text)
    except ValueError:
        pass
    else:
        if value < 0:
            raise ConfigError(f"{source}: {name}={text}: resources must not be negative")
        return value
    human = _human(name, text, source)
    if human is not None:
        return human
    try:
        tree = ast.parse(text.strip(), mode="eval")
        _check(tree.body, text, name, source)
    except (SyntaxError, _Unknown):
        if name in _NUMERIC:
            raise ConfigError(f"{source}: {name}={text} is neither a number nor an expression "
                              f"flowmake evaluates", hint="e.g. 2*1024, attempt*60, "
                              "min(max(2*input.size_mb, 1000), 8000)") from None
        return _normalized_value(name, text, source)
    if not _uses_names(tree):  # a constant (2*1024, system_tmpdir): computed once, here
        return _normalized_value(name, _eval(tree.body, {"system_tmpdir": _tmpdir()}), source)
    return (_ThreadsExpr if threads else Expr)(text, tree, name, source)


def _normalized_value(name: str, value: Any, source: str) -> Any:
    if isinstance(value, str):
        human = _human(name, value, source)
        if human is not None:
            return human
        if name in _NUMERIC:  # Snakemake refuses a string here; a number in one is surely meant
            if value.strip().isdecimal():
                return int(value)
            raise ConfigError(f"{source}: {name} must be a number, got {value!r}")
    return value


def _human(name: str, text: str, source: str) -> int | None:
    """Sizes for ``mem``/``disk`` (and ``*_mb``), timespans for ``runtime``, as Snakemake parses them."""
    base = name[:-3] if name.endswith("_mb") else name
    stripped = text.strip().strip("'\"")
    if base in _SIZED:
        if name == base or not stripped.isdecimal():
            mb = size_mb(stripped)
            if mb is None:
                if re.fullmatch(r"[\d.]+\s*[A-Za-z]+", stripped):
                    raise ConfigError(f"{source}: {name}={text} is not a size (e.g. 4GB, 500MB)")
                return None
            return mb
    if name == "runtime":
        minutes = runtime_minutes(stripped)
        if minutes is None and re.fullmatch(r"[\d.]+\s*[A-Za-z]+", stripped):
            raise ConfigError(f"{source}: runtime={text} is not a timespan (e.g. 90m, 2h, 1d)")
        return minutes
    return None


_SIZE_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9,
               "t": 1e12, "tb": 1e12, "p": 1e15, "pb": 1e15, "kib": 2**10, "mib": 2**20,
               "gib": 2**30, "tib": 2**40, "pib": 2**50}
_TIME_UNITS = {"s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1, "m": 60, "min": 60,
               "mins": 60, "minute": 60, "minutes": 60, "h": 3600, "hour": 3600, "hours": 3600,
               "d": 86400, "day": 86400, "days": 86400, "w": 604800, "week": 604800,
               "weeks": 604800, "y": 31536000, "year": 31536000, "years": 31536000}


def size_mb(text: str) -> int | None:
    """``4GB`` → 4000, ``1GiB`` → 1074: megabytes (10^6), at least 1, like Snakemake (humanfriendly)."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([A-Za-z]*)", text.strip())
    if m is None or m.group(2).lower() not in _SIZE_UNITS or not m.group(2):
        return None
    return max(int(math.ceil(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()] / 1e6)), 1)


def runtime_minutes(text: Any) -> int | None:
    """A runtime in minutes: a number is minutes already; ``2h`` → 120, ``90s`` → 1 (at least 1)."""
    if isinstance(text, bool):
        return None
    if isinstance(text, (int, float)):
        return int(text)
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([A-Za-z]*)", str(text).strip())
    if m is None:
        return None
    if not m.group(2):
        return int(float(m.group(1)))
    seconds = _TIME_UNITS.get(m.group(2).lower())
    if seconds is None:
        return None
    return max(int(round(float(m.group(1)) * seconds) / 60), 1)


def parse_assignments(items: Iterable[str], what: str, source: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        name, sep, text = str(item).partition("=")
        name = name.strip()
        if not sep or not _NAME.match(name):
            raise ConfigError(f"{source}: {what} expects NAME=VALUE with NAME an identifier, "
                              f"got {item!r}")
        if name == "_cores":
            raise ConfigError(f"{source}: the resource name _cores is reserved (use --set-threads)")
        name, value = _sized_name(name, parse_value(name, text, source))
        out[name] = value
    return out


def _sized_name(name: str, value: Any) -> tuple[str, Any]:
    """``mem``/``mem_mib`` → ``mem_mb`` (Snakemake 9 keeps sizes as megabytes)."""
    for base in _SIZED:
        if name == base:
            return f"{base}_mb", value
        if name == f"{base}_mib" and isinstance(value, (int, float)):
            # Rounded to whole MiB first, then floored to MB, as Snakemake (953.67 MiB is 1000 MB).
            return f"{base}_mb", max(1, math.floor(round(value) * 2**20 / 1e6))
    return name, value


@dataclass
class Overrides:
    """What the three flags ask, parsed; ``args`` keeps their text for the job processes."""

    defaults: dict[str, Any] = field(default_factory=dict)
    per_rule: dict[str, dict[str, Any]] = field(default_factory=dict)
    threads: dict[str, Any] = field(default_factory=dict)
    args: dict[str, list[str]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.defaults or self.per_rule or self.threads)

    def apply(self, workflow: Any, warn: Callable[[str], None] | None = None) -> None:
        known = {r.name for r in workflow.rules}
        for what, names in (("--set-resources", self.per_rule), ("--set-threads", self.threads)):
            for name in names:
                if name not in known and warn is not None:  # Snakemake ignores it without a word
                    warn(f"{what}: no rule named {name!r}; ignored")
        for rule in workflow.rules:
            res = _merged(rule.resource_pairs(), self.defaults, self.per_rule.get(rule.name, {}))
            threads = self.threads.get(rule.name)
            if res is not None or threads is not None:
                rule.override(resources=res, threads=threads)


def _family(name: str | None) -> str | None:
    """``mem``, ``mem_mb``, ``mem_gb``... are one resource (Snakemake keeps sizes as ``mem_mb``)."""
    for base in _SIZED:
        if name is not None and (name == base or name.startswith(base + "_")):
            return base
    return name


def _covers(names: Iterable[str | None], name: str) -> bool:
    """Whether ``names`` already set ``name`` (``mem="4GB"`` covers ``mem_mb``)."""
    return any(n is not None and _family(n) == _family(name) for n in names)


def _merged(own: list[tuple[str | None, Any]], defaults: Mapping[str, Any],
            forced: Mapping[str, Any]) -> list[tuple[str | None, Any]] | None:
    if not defaults and not forced:
        return None
    names = [n for n, _ in own]
    out: list[tuple[str | None, Any]] = [(n, v) for n, v in defaults.items() if not _covers(names, n)]
    out += [(n, forced.get(n, v) if n is not None else v) for n, v in own
            if n is None or n in forced or not _covers(forced, n)]
    out += [(n, v) for n, v in forced.items() if n not in names]
    return out


def default_list(given: list[str] | None, cluster: bool = False) -> list[str] | None:
    """``--default-resources`` as Snakemake completes it: its defaults first, then the values given.
    None (no defaults at all) when the flag is absent and the backend is no cluster."""
    if given is None and not cluster:
        return None
    return [*FULL_DEFAULTS, *(given or [])]


def parse_overrides(defaults: list[str] | None, set_resources: Iterable[str],
                    set_threads: Iterable[str], *, sources: Mapping[str, str] | None = None) -> Overrides:
    """The three flags' values into ``Overrides`` (``defaults`` from ``default_list``).

    ``sources`` names where each flag's value came from (a profile file), for errors.
    """
    src = dict(sources or {})
    ov = Overrides()
    if defaults is not None:
        ov.args["default"] = list(defaults)
        ov.defaults = parse_assignments(defaults, "--default-resources",
                                        src.get("default_resources", "--default-resources"))
    where = src.get("set_resources", "--set-resources")
    for item in set_resources:
        rule, sep, assign = str(item).partition(":")
        if not sep or not _NAME.match(rule.strip()):
            raise ConfigError(f"{where}: --set-resources expects RULE:NAME=VALUE, got {item!r}")
        ov.per_rule.setdefault(rule.strip(), {}).update(
            parse_assignments([assign], "--set-resources", where))
        ov.args.setdefault("set", []).append(str(item))
    where = src.get("set_threads", "--set-threads")
    for item in set_threads:
        rule, sep, text = str(item).partition("=")
        if not sep or not _NAME.match(rule.strip()):
            raise ConfigError(f"{where}: --set-threads expects RULE=THREADS, got {item!r}")
        value = parse_value("_threads", text, where, threads=True)
        if not isinstance(value, (int, Expr)) or isinstance(value, bool):
            raise ConfigError(f"{where}: --set-threads {item!r}: threads must be a whole number "
                              f"or an expression giving one")
        ov.threads[rule.strip()] = value
        ov.args.setdefault("threads", []).append(str(item))
    return ov


def for_options(opts: Any, cluster: bool) -> Overrides:
    """The flags in ``api.Options`` (``cluster``: the backend is one, e.g. slurm)."""
    return parse_overrides(default_list(opts.default_resources, cluster), opts.set_resources,
                           opts.set_threads, sources=opts.sources)


def from_args(args: Mapping[str, list[str]]) -> Overrides:
    """What a job process gets (``Overrides.args``) back into ``Overrides``."""
    return parse_overrides(args.get("default"), args.get("set", []), args.get("threads", []))


# ---- the evaluator --------------------------------------------------------------------------------

_BINOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b, ast.FloorDiv: lambda a, b: a // b, ast.Mod: lambda a, b: a % b,
    ast.Pow: lambda a, b: a ** b,
}
_CMPOPS: dict[type, Callable[[Any, Any], bool]] = {
    ast.Eq: lambda a, b: a == b, ast.NotEq: lambda a, b: a != b, ast.Lt: lambda a, b: a < b,
    ast.LtE: lambda a, b: a <= b, ast.Gt: lambda a, b: a > b, ast.GtE: lambda a, b: a >= b,
}
_ALLOWED = (ast.Constant, ast.Name, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.IfExp,
            ast.Call, ast.Attribute, ast.JoinedStr, ast.FormattedValue, ast.Load, ast.operator,
            ast.unaryop, ast.boolop, ast.cmpop, ast.keyword)


def _check(node: ast.AST, text: str, name: str, source: str) -> None:
    """Refuse what the evaluator does not do, after names: an unknown name makes the text a string."""
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name) and sub.id not in _NAMES and sub.id not in _FUNCS:
            raise _Unknown(sub.id)
    for sub in ast.walk(node):
        bad = None
        if not isinstance(sub, _ALLOWED) or isinstance(sub, (ast.BitAnd, ast.BitOr, ast.BitXor,
                                                            ast.LShift, ast.RShift, ast.MatMult,
                                                            ast.Invert, ast.In, ast.NotIn,
                                                            ast.Is, ast.IsNot)):
            bad = type(sub).__name__
        elif isinstance(sub, ast.Call) and not (isinstance(sub.func, ast.Name) and sub.func.id in _FUNCS):
            bad = "a call of anything but " + ", ".join(_FUNCS)
        elif isinstance(sub, ast.Attribute) and (sub.attr.startswith("_") or not isinstance(sub.value, ast.Name)
                                                 or sub.value.id not in ("input", "wildcards")):
            bad = f"the attribute .{sub.attr}"
        if bad is not None:
            raise ConfigError(f"{source}: {name}={text}: flowmake does not evaluate {bad} in resource "
                              f"values", hint="quote the value to make it a string: "
                              f"{name}=\"'{text}'\"")


def _uses_names(tree: ast.AST) -> bool:
    """Whether the value depends on the job (anything but ``system_tmpdir``)."""
    return any(isinstance(n, ast.Name) and n.id in _NAMES and n.id != "system_tmpdir"
               for n in ast.walk(tree))


def _eval(node: ast.AST, env: Mapping[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return env[node.id] if node.id in env else _FUNCS[node.id]
    if isinstance(node, ast.BinOp):
        left, right = _eval(node.left, env), _eval(node.right, env)
        if isinstance(node.op, ast.Pow) and isinstance(right, (int, float)) and abs(right) > 64:
            raise ValueError("exponent too large")
        if isinstance(node.op, ast.Mult) and (isinstance(left, str) or isinstance(right, str)):
            raise ValueError("strings are not multiplied in resource values")
        return _BINOPS[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp):
        v = _eval(node.operand, env)
        return -v if isinstance(node.op, ast.USub) else +v if isinstance(node.op, ast.UAdd) else not v
    if isinstance(node, ast.BoolOp):
        result: Any = isinstance(node.op, ast.And)
        for value in node.values:
            result = _eval(value, env)
            if isinstance(node.op, ast.And) != bool(result):
                return result
        return result
    if isinstance(node, ast.Compare):
        left = _eval(node.left, env)
        for op, comp in zip(node.ops, node.comparators):
            right = _eval(comp, env)
            if not _CMPOPS[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.IfExp):
        return _eval(node.body, env) if _eval(node.test, env) else _eval(node.orelse, env)
    if isinstance(node, ast.Call):
        fn = _FUNCS[node.func.id]  # type: ignore[attr-defined]  # _check allowed only these names
        return fn(*[_eval(a, env) for a in node.args], **{k.arg: _eval(k.value, env) for k in node.keywords if k.arg})
    if isinstance(node, ast.Attribute):
        return getattr(_eval(node.value, env), node.attr)
    if isinstance(node, ast.JoinedStr):
        return "".join(str(_eval(v, env)) for v in node.values)
    if isinstance(node, ast.FormattedValue):
        spec = _eval(node.format_spec, env) if node.format_spec is not None else ""
        return format(_eval(node.value, env), spec)
    raise ValueError(f"cannot evaluate {type(node).__name__}")  # pragma: no cover - _check refused it
