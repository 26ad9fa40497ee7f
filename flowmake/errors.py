"""Every error a user can see, in one place.

Each class carries where the problem is (Flowfile and line, rule, target) and a hint; its class decides
the exit code. The CLI prints ``str(error)`` and exits with ``error.exit_code``: users never see a
traceback for their own mistakes. Anything else that escapes is a bug and is reported as one.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from typing import Any, Iterable, Sequence


@dataclass(frozen=True)
class Location:
    file: str
    line: int | None = None

    def __str__(self) -> str:
        name = _shown(self.file)
        return f"{name}:{self.line}" if self.line else name


def _shown(path: str) -> str:
    """A path as the user typed it: relative when it lies under the current directory."""
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return path if rel.startswith("..") else rel


class FlowmakeError(Exception):
    """Base of all user-facing errors. Exit code 2: workflow or usage error."""

    exit_code = 2
    title = "error"

    def __init__(
        self,
        message: str,
        *,
        location: Location | None = None,
        rule: str | None = None,
        target: str | None = None,
        hint: str | None = None,
        details: Sequence[str] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.location = location
        self.rule = rule
        self.target = target
        self.hint = hint
        self.details = list(details)

    def __str__(self) -> str:
        head = f"{self.location}: " if self.location else ""
        lines = [f"{head}{self.title}: {self.message}"]
        if self.rule:
            lines.append(f"  rule: {self.rule}")
        if self.target:
            lines.append(f"  target: {self.target}")
        lines.extend(f"  {d}" for d in self.details)
        if self.hint:
            lines.append(f"  hint: {self.hint}")
        return "\n".join(lines)


class UsageError(FlowmakeError):
    title = "usage error"


class FlowfileError(FlowmakeError):
    """The rule file cannot be read: syntax, unknown directive, bad include, error while executing it."""

    title = "Flowfile error"


class ConfigError(FlowmakeError):
    title = "config error"


class WildcardError(FlowmakeError):
    """A wildcard value is malformed, of the wrong type, or unsafe (leaves the workdir, injects)."""

    title = "wildcard error"


class UnsafeWildcardError(WildcardError):
    """A wildcard value taken from a path (a target, a file name) holds shell syntax, a control
    character or a path escape, and its wildcard does not allow it: refused where it is bound, so
    nothing formats it. ``path`` is the path it was taken from; ``pattern`` the pattern it matched."""

    title = "unsafe wildcard value"

    def __init__(self, message: str, *, wildcard: str, value: str, path: str, pattern: str,
                 **kw: Any) -> None:
        super().__init__(message, **kw)
        self.wildcard, self.value, self.path, self.pattern = wildcard, value, path, pattern

    def for_target(self, target: str, chain: Sequence[str] = ()) -> UnsafeWildcardError:
        """This refusal as the error of ``target``, which needed ``self.path`` through ``chain``."""
        details = [] if self.path == target else [f"path: {printable(self.path)}", *chain]
        return UnsafeWildcardError(self.message, wildcard=self.wildcard, value=self.value,
                                   path=self.path, pattern=self.pattern, location=self.location,
                                   rule=self.rule, target=printable(target), hint=self.hint,
                                   details=details)


def printable(text: str) -> str:
    """``text`` for an error line: as is, or as a Python literal when it holds control characters."""
    return text if text.isprintable() else repr(text)


class UnsafePathError(FlowmakeError):
    title = "unsafe path"


class NoRuleError(FlowmakeError):
    title = "no rule to produce"


class MissingInputError(FlowmakeError):
    title = "missing input"


class AmbiguousRuleError(FlowmakeError):
    title = "ambiguous rules"


class CycleError(FlowmakeError):
    title = "dependency cycle"


class BackendError(FlowmakeError):
    """A backend is unknown, misconfigured, or its service cannot be reached."""

    title = "backend error"


class WrapperError(FlowmakeError):
    """A ``wrapper:`` cannot be found, fetched, or is not one flowmake runs."""

    title = "wrapper error"


class DeploymentError(FlowmakeError):
    """Software a run was asked to use (conda, env modules, jupyter) is missing or fails."""

    title = "deployment error"


class StorageError(FlowmakeError):
    """An object in storage (S3) cannot be read or written: credentials, endpoint, the server."""

    title = "storage error"


class CacheError(FlowmakeError):
    """The shared cache cannot be opened, read or written (a bad URL, the server, credentials)."""

    title = "cache error"


class StoreError(FlowmakeError):
    title = "store error"


class JobFailedError(FlowmakeError):
    """One or more jobs failed. Exit code 1."""

    exit_code = 1
    title = "job failed"


class Interrupted(FlowmakeError):
    exit_code = 130
    title = "interrupted"


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """A hint naming the closest choices, or None when nothing is close."""
    close = difflib.get_close_matches(word, list(choices), n=3, cutoff=0.6)
    if not close:
        return None
    return "did you mean " + " or ".join(repr(c) for c in close) + "?"
