"""Snakemake's ``snakemake.ioutils`` helpers a rule file names without importing them.

``input.NAME`` and friends outside a run block (the deferred rule items), ``prepend_param``,
``as_py_module``, ``parse_input`` and ``extract_checksum``. Each takes a value or a function of
the step (an input function, a deferred rule item) and, given a function, returns one with the
same parameters, so params and input evaluation pass it the arguments it names.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Any, Callable, TextIO

from flowmake.errors import FlowfileError


class ItemProxy:
    """``input.NAME`` / ``input[i]`` outside a run block: a function of the step's ``input``
    (or output, resources) that params and resources can use, as Snakemake's RuleItemProxy."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, key: str) -> Callable[..., Any]:
        if key.startswith("__"):
            raise AttributeError(key)
        return self.deferred(lambda item: getattr(item, key))

    def __getitem__(self, key: Any) -> Callable[..., Any]:
        return self.deferred(lambda item: item[key])

    def deferred(self, get: Callable[[Any], Any]) -> Callable[..., Any]:
        """``get`` applied to the whole item of the step (all its input, say)."""
        # The parameter is named after the directive: params functions get arguments by name.
        if self._name == "input":
            return lambda wildcards, input: get(input)
        if self._name == "output":
            return lambda wildcards, output: get(output)
        return lambda wildcards, resources: get(resources)


def _is_function(value: Any) -> bool:
    return callable(value) and not isinstance(value, (str, os.PathLike, ItemProxy))


def _lift(value: Any, do: Callable[[Any], Any]) -> Any:
    """``do(value)`` now, or, for a function or a rule item, a function doing it per step."""
    if isinstance(value, ItemProxy):
        return value.deferred(do)
    if _is_function(value):
        # Same signature as the wrapped function, so params get the arguments it names.
        @functools.wraps(value)
        def inner(*args: Any, **kwargs: Any) -> Any:
            return do(value(*args, **kwargs))
        return inner
    return do(value)


def prepend_param(prefix: str, paths_or_func: Any, space: bool = True) -> Any:
    """Each path with ``prefix`` before it, joined by spaces: ``prepend_param("-I", input)``
    gives ``-I a -I b`` (``-Ia -Ib`` with ``space=False``)."""
    def single(path: Any) -> str:
        if not isinstance(path, (str, Path)):
            raise FlowfileError("prepend_param takes paths (or a function returning them), "
                                f"got {path!r}")
        return f"{prefix}{' ' if space else ''}{os.fspath(path)}"

    def do(paths: Any) -> str:
        items = list(paths) if isinstance(paths, (list, tuple)) else [paths]
        return " ".join(single(p) for p in items)
    return _lift(paths_or_func, do)


def _module_name(path: Any) -> str:
    p = Path(os.fspath(path))
    if not p.name.endswith(".py"):
        raise FlowfileError(f"as_py_module: {p} is not a .py file, so cannot run as a module")
    parts = [*p.parts[:-1], p.name[:-3]]
    if not all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", part) for part in parts):
        raise FlowfileError(f"as_py_module: {p} does not translate to a Python module name")
    return ".".join(parts)


def _one_module(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise FlowfileError(f"as_py_module needs exactly one .py file, got {list(value)!r}")
        value = value[0]
    return _module_name(value)


def as_py_module(path_or_func: Any = ItemProxy("input").script) -> Any:
    """The module name ``python -m`` takes for a ``.py`` file relative to the working directory
    (``pkg/sub/mod.py`` is ``pkg.sub.mod``), so its relative imports work; default
    ``input.script``."""
    return _lift(path_or_func, _one_module)


def parse_input(infile: Any, parser: Callable[..., Any] | None = None, **kwargs: Any) -> Any:
    """A params function: the input file ``infile`` (a path, or a function of the step such as
    ``input.NAME``) read by ``parser(handle, **kwargs)``, or its stripped text without one."""
    def parse(wildcards: Any, input: Any) -> Any:
        path = infile(wildcards, input) if callable(infile) else infile
        with open(os.fspath(path)) as fh:
            return fh.read().strip() if parser is None else parser(fh, **kwargs)
    return parse


def extract_checksum(infile: str | os.PathLike[str] | TextIO, file: str | None = None,
                     **kwargs: Any) -> str:
    """The checksum of ``file`` in an md5sum/sha256sum listing (``<sum>  <name>`` lines; a
    leading ``./`` in names is ignored). Snakemake reads the listing with pandas; plain lines
    serve the same, without the dependency."""
    if isinstance(infile, (str, os.PathLike)):
        with open(os.fspath(infile)) as fh:
            return extract_checksum(fh, file=file)
    wanted = (file or "").removeprefix("./")
    for line in infile:
        checksum, sep, name = line.rstrip("\n").partition("  ")
        if sep and name.removeprefix("./") == wanted:
            return checksum
    raise FlowfileError(f"extract_checksum: no checksum for {file!r} in "
                        f"{getattr(infile, 'name', infile)}")


class _QueueInput:
    """``from_queue(q, finish_sentinel=s)``: an input function whose files are the items put on
    ``q`` until ``s``. Snakemake adds jobs as items arrive; flowmake plans the whole graph first,
    so the function waits for the sentinel and then gives every item (the same outputs, made once
    the queue is finished rather than while it fills). Each item is marked done on the queue, so
    a producer waiting in ``q.join()`` goes on."""

    def __init__(self, queue: Any, finish_sentinel: Any) -> None:
        self._queue = queue
        self._sentinel = finish_sentinel
        self._items: list[str] | None = None

    def __call__(self, wildcards: Any) -> list[str]:
        if self._items is None:  # asked again (planning, the graph memo): the same answer
            items = []
            while True:
                item = self._queue.get()
                self._queue.task_done()
                if item is self._sentinel:
                    break
                items.append(os.fspath(item))
            self._items = items
        return list(self._items)


def from_queue(queue: Any, finish_sentinel: Any = None) -> Callable[[Any], list[str]]:
    """Input files taken from a ``queue.Queue`` until ``finish_sentinel`` comes (see _QueueInput)."""
    if finish_sentinel is None:
        raise FlowfileError("from_queue needs finish_sentinel=: the item that ends the queue")
    return _QueueInput(queue, finish_sentinel)
