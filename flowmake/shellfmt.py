"""Rendering shell commands from ``{input}``-style templates, safely, and running them from run blocks.

Formatting follows Snakemake (``{input}``, ``{input.reads}``, ``{input[0]}``, ``{params.p[key]}``,
``{x:q}``, ``{{``/``}}``), with one difference made for safety: wildcard values come from target
names, which anyone may choose, so every value that carries them (input, output, log, wildcards)
is quoted with ``shlex.quote`` when it is not plainly safe (``^[\\w@%+=:,./-]+$``), element-wise for
lists. (A wildcard value with shell syntax or a control character never gets here: ``patterns``
refuses it when it is bound. Quoting covers the rest: spaces, ``#``, ``*``, and paths an input
function returned.) Plain paths stay unquoted, so printed commands look like Snakemake's. params,
threads and resources are the rule author's own and are inserted verbatim as in Snakemake (``extra="-m 4G"``
stays two words) — unless a value contains an unsafe wildcard value, which is then quoted. An empty value renders as nothing
(``params: extra=""`` is common and must not become an empty argument); ``{x:q}`` always quotes;
``{x:raw}`` (ours) inserts a value verbatim, for params that are deliberately shell fragments.
A field the user already put inside quotes (``-R '{params.rg}'``) is escaped for those quotes
instead, which keeps existing Snakefiles working and is just as safe.
"""

from __future__ import annotations

import _string  # type: ignore[import-not-found]  # str.format's own "a.b[c]" parser; no stubs
import contextlib
import contextvars
import functools
import os
import re
import shlex
import string
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

from flowmake.backend import INLINE_MAX
from flowmake.namedlist import Wildcards

_SAFE = re.compile(r"[\w@%+=:,./-]+")
STRICT_MODE = "set -euo pipefail; "


@dataclass
class ShellSettings:
    executable: str = "bash"
    prefix: str = ""
    suffix: str = ""


# The names an f-string ``shell:`` command sees as the job's (Snakemake's run-function arguments).
FSTRING_FIELDS = ("input", "output", "params", "wildcards", "threads", "resources", "log", "rule")


class DeferredCommand(str):
    """A ``shell:`` command given as an f-string: Snakemake evaluates it in the job's function,
    where ``input``, ``output``, ... are the job's, so ``func`` takes them and gives the command
    template (formatted as any other). The string itself is the f-string's source: what the rule's
    fingerprint and error messages show."""

    func: Callable[..., str]

    def __new__(cls, source: str, func: Callable[..., str]) -> DeferredCommand:
        s = str.__new__(cls, source)
        s.func = func
        return s

    def __reduce__(self) -> Any:
        return (str, (str(self),))


def _elements(value: Any) -> list[Any]:
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def is_safe(text: str) -> bool:
    return text == "" or _SAFE.fullmatch(text) is not None


def safe_word(text: str) -> str:
    if text == "" or _SAFE.fullmatch(text):
        return text
    return shlex.quote(text)


class _ShellFormatter(string.Formatter):
    def format_field(self, value: Any, format_spec: str) -> str:
        if format_spec == "raw":  # the user's explicit choice: a shell fragment, verbatim
            return " ".join(str(v) for v in _elements(value))
        if format_spec == "q":
            return " ".join(shlex.quote(str(v)) for v in _elements(value))
        if format_spec:
            return safe_word(format(value, format_spec))
        if type(value) is str:  # the common cases: one path, or a list of one
            return safe_word(value)
        if isinstance(value, list) and len(value) == 1:
            return safe_word(str(value[0]))
        return " ".join(safe_word(str(v)) for v in _elements(value))


_FORMATTER = _ShellFormatter()


VERBATIM = frozenset({"params", "threads", "resources", "rule", "config"})


def _verbatim(value: Any, tainted: tuple[str, ...]) -> str | None:
    """A rule author's value as Snakemake inserts it, or None when a wildcard value hides in it."""
    words = [str(v) for v in _elements(value)]
    if any(t in w for t in tainted for w in words):
        return None
    return " ".join(words)


def render(template: str, namespace: Mapping[str, Any], args: tuple[Any, ...] = (),
           tainted: tuple[str, ...] | None = None) -> str:
    """Format ``template`` with ``namespace``; KeyError/AttributeError/IndexError for unknown names.

    ``tainted``: the step's wildcard values that are not plainly safe; when given, params, threads
    and resources are inserted verbatim unless they contain one of them. When None (``shell()`` in
    a run block, where names are the user's own locals), everything not plainly safe is quoted.

    A field the user already wrapped in quotes (``'{params.rg}'``, as Snakemake users must) is
    inserted verbatim when the value cannot break out of those quotes; quoting it again would
    change its meaning.
    """
    out: list[str] = []
    auto = 0
    for literal, field, path, spec, conversion, quote, plain in _compile(template):
        out.append(literal)
        if plain:  # "{input}": the common case, without the general path's calls
            value = namespace[field]  # type: ignore[index]  # a plain field always has a name
            if tainted is None or field not in VERBATIM:
                if type(value) is str:
                    out.append(value if value == "" or _SAFE.fullmatch(value) else shlex.quote(value))
                elif type(value) is Wildcards:  # "{wildcards}": "a=1,b=x", sorted, as Snakemake
                    out.append(safe_word(",".join(f"{k}={v}" for k, v in sorted(value.items()))))
                elif isinstance(value, list):  # input, output, log: space-separated words
                    if len(value) == 1:  # most often one path: no list to build and join
                        (v,) = value
                        out.append(v if type(v) is str and _SAFE.fullmatch(v) else safe_word(str(v)))
                    else:
                        out.append(" ".join([safe_word(str(v)) for v in value]))
                else:
                    out.append(_FORMATTER.format_field(value, ""))
                continue
            verbatim = _verbatim(value, tainted)
            out.append(verbatim if verbatim is not None else _FORMATTER.format_field(value, ""))
            continue
        if field is None:
            continue
        if field == "":  # "{}" takes the next positional argument, like str.format
            value = args[auto]
            auto += 1
        else:
            value = _lookup(field, path, args, namespace)
        if conversion:
            value = _FORMATTER.convert_field(value, conversion)
        if tainted is not None and not spec and not quote and field in VERBATIM:
            verbatim = _verbatim(value, tainted)
            if verbatim is not None:
                out.append(verbatim)
                continue
        out.append(_inside_quotes(value, quote) if quote and spec not in ("q", "raw") else
                   _FORMATTER.format_field(value, spec or ""))
    return "".join(out)


# (literal, field root, attribute/index path, spec, conversion, enclosing quote, plain); plain: a
# bare name ("{input}"), by far the most common field.
_Part = tuple[str, "str | None", tuple[tuple[bool, Any], ...], str, "str | None", str, bool]


@functools.lru_cache(maxsize=4096)
def _compile(template: str) -> tuple[_Part, ...]:
    """Parse a template once (a rule's command is rendered for every one of its steps)."""
    parsed = list(_FORMATTER.parse(template))
    parts: list[_Part] = []
    for i, (literal, field, spec, conversion) in enumerate(parsed):
        if field is None:
            parts.append((literal, None, (), "", None, "", False))
            continue
        after = parsed[i + 1][0] if i + 1 < len(parsed) else ""
        quote = literal[-1:] if literal[-1:] in ("'", '"') and after[:1] == literal[-1:] else ""
        path: tuple[tuple[bool, Any], ...] = ()
        root = field
        if field:
            root, rest = _string.formatter_field_name_split(field)
            path = tuple(rest)
        name = field if field == "" else str(root)
        plain = bool(name) and not name.isdigit() and not path and not spec and not conversion and not quote
        parts.append((literal, name, path, spec or "", conversion, quote, plain))
    return tuple(parts)


def field_names(template: str) -> frozenset[str]:
    """The names a template looks up (``{input[0]}`` and ``{input.x}`` both name ``input``)."""
    return frozenset(part[1] for part in _compile(template) if part[1])


@functools.lru_cache(maxsize=4096)
def uses_verbatim(template: str) -> bool:
    """Whether the template inserts a field verbatim (params, threads, ...): only then must a
    step's unsafe wildcard values be known before rendering."""
    return any(part[1] in VERBATIM for part in _compile(template))


def _lookup(root: str, path: tuple[tuple[bool, Any], ...], args: tuple[Any, ...],
            namespace: Mapping[str, Any]) -> Any:
    value = args[int(root)] if root.isdigit() else namespace[root]
    for is_attr, key in path:
        value = getattr(value, key) if is_attr else value[key]
    return value


_DOUBLE_QUOTE_SPECIAL = re.compile(r'([\\"$`])')


def _inside_quotes(value: Any, quote: str) -> str:
    """Escape a value for the inside of the user's own quotes (exact, and cannot break out)."""
    words = [str(v) for v in _elements(value)]
    if quote == "'":
        return " ".join(w.replace("'", "'\"'\"'") for w in words)
    return " ".join(_DOUBLE_QUOTE_SPECIAL.sub(r"\\\1", w) for w in words)


class ShellError(subprocess.CalledProcessError):
    def __str__(self) -> str:
        return f"shell command failed with exit status {self.returncode}: {self.cmd}"


class Shell:
    """The ``shell`` object of a rule file: settings at load time, a command runner in run blocks."""

    def __init__(self, settings: ShellSettings) -> None:
        self._settings = settings

    def executable(self, path: str | None) -> None:
        self._settings.executable = path or "bash"

    def prefix(self, text: str) -> None:
        self._settings.prefix = text

    def suffix(self, text: str) -> None:
        self._settings.suffix = text

    def __call__(self, cmd: str, *args: Any, read: bool = False, iterable: bool = False,
                 **kwargs: Any) -> Any:
        if _RELOADING.get() and not (read or iterable):
            return None  # the run did it while loading (see ``reloading``)
        # Like Snakemake: the caller's globals and locals (run-block variables) are the namespace.
        frame = sys._getframe(1)
        namespace = {**frame.f_globals, **frame.f_locals, **kwargs}
        text = render(cmd, namespace, args)
        return run_command(text, self._settings, read=read, iterable=iterable)


_RELOADING: contextvars.ContextVar[bool] = contextvars.ContextVar("reloading", default=False)


@contextlib.contextmanager
def reloading() -> Iterator[None]:
    """A job process loading the rule file again: its load-time ``shell()`` commands are not
    run a second time. Snakemake loads the file once for a local run, so setup commands there
    (``shell("touch -t ... x")``) happen once, before any job; a job must not redo them, undoing
    what the run prepared (its outputs removed). Commands whose output is read still run."""
    token = _RELOADING.set(True)
    try:
        yield
    finally:
        _RELOADING.reset(token)


def full_script(command: str, settings: ShellSettings) -> str:
    return STRICT_MODE + settings.prefix + command + settings.suffix


# A script longer than backend.INLINE_MAX (the kernel refuses one argument over 128 KiB) goes to the
# shell as a temporary file instead.


def run_command(command: str, settings: ShellSettings, *, read: bool = False,
                iterable: bool = False) -> Any:
    script = full_script(command, settings)
    data = os.fsencode(script)  # a file name that is not UTF-8 keeps its bytes
    if len(data) <= INLINE_MAX:
        return _run_argv([settings.executable, "-c", script], command, read, iterable)
    with tempfile.NamedTemporaryFile("wb", prefix="flowmake-shell-", suffix=".sh") as f:
        f.write(data)
        f.flush()
        result = _run_argv([settings.executable, f.name], command, read, iterable)
        return list(result) if iterable else result


def _run_argv(argv: list[str], command: str, read: bool, iterable: bool) -> Any:
    if iterable:
        return _iterate(argv, command)
    if read:
        done = subprocess.run(argv, stdout=subprocess.PIPE)
        if done.returncode:
            raise ShellError(done.returncode, command)
        return os.fsdecode(done.stdout)  # names printed by the command come back as they were
    sys.stdout.flush()
    sys.stderr.flush()
    done = subprocess.run(argv)
    if done.returncode:
        raise ShellError(done.returncode, command)
    return None


def _iterate(argv: list[str], command: str) -> Iterator[str]:
    with subprocess.Popen(argv, stdout=subprocess.PIPE) as proc:
        for line in proc.stdout or ():
            yield os.fsdecode(line).rstrip("\n")
    if proc.returncode:
        raise ShellError(proc.returncode, command)
