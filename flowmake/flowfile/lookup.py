"""Snakemake 9's input-function helpers: ``lookup``, ``branch``, ``evaluate``, ``exists``.

Each returns a value at once when it needs nothing from a step, or an input function of the
step's wildcards when it does (a ``{wildcard}`` in a query or dpath, a function among its
arguments), exactly when Snakemake's do. Their failures are ordinary exceptions, so an input
function reports them at its rule and a load-time call at its line, like any user error.
"""

from __future__ import annotations

import builtins
import fnmatch
import os
import string
from typing import Any, Callable, Mapping

_NODEFAULT: Any = object()


class LookupError(builtins.LookupError):  # Snakemake's name (snakemake.exceptions.LookupError)
    pass


def _format(text: str, namespace: Mapping[str, Any]) -> str:
    return string.Formatter().vformat(text, (), dict(namespace))


def _names(text: Any) -> list[str]:
    if not isinstance(text, str):
        return []
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(text) if f]
    except ValueError:
        return []
    return [f.split(".")[0].split("[")[0] for f in fields]


def lookup(query: str | None = None, dpath: str | None = None, cols: Any = None,
           is_nrows: int | None = None, within: Any = None, default: Any = _NODEFAULT,
           **namespace: Any) -> Any:
    """Values of a mapping at a dpath (``"samples/{sample}/reads"``, ``*`` globs a level), or the
    rows of a pandas DataFrame/Series that match a query (``DataFrame.query``)."""
    if within is None:
        raise LookupError("lookup: give the mapping or data frame to search with within=")
    if cols is not None and not isinstance(cols, (str, list)):
        raise LookupError("lookup: cols must be a str or a list of str")
    if is_nrows is not None and not isinstance(is_nrows, int):
        raise LookupError("lookup: is_nrows must be an int")
    if query is not None and dpath is not None:
        raise LookupError("lookup: give query or dpath, not both")
    if query is not None and isinstance(within, Mapping):
        query, dpath = None, query  # a positional query on a mapping is a dpath, as in Snakemake
    if dpath is not None:
        if not isinstance(within, Mapping):
            raise LookupError("lookup: dpath= searches a mapping (a dict such as config)")
        return _deferred(dpath, namespace, [],
                         lambda expr, ns: _dpath_get(within, expr, default))
    if query is None:
        raise LookupError("lookup: give query= (a data frame) or dpath= (a mapping)")
    frame = _as_frame(within)
    col_texts = cols if isinstance(cols, list) else [cols] if cols is not None else []

    def do_query(expr: str, ns: Mapping[str, Any]) -> Any:
        c = cols
        if cols is not None and ns:
            c = [_format(x, ns) for x in cols] if isinstance(cols, list) else _format(cols, ns)
        return _query(frame, expr, c, is_nrows, default)

    return _deferred(query, namespace, col_texts, do_query)


def _deferred(expr: Any, namespace: Mapping[str, Any], more: list[str],
              apply: Callable[[str, Mapping[str, Any]], Any]) -> Any:
    """``apply`` now if the expression names only namespace values, else an input function."""
    needs = callable(expr) or any(n not in namespace for t in [expr, *more] for n in _names(t)) \
        or any(callable(v) for v in namespace.values())
    if not needs:
        return apply(_format(expr, namespace) if namespace else expr, namespace)

    def inner(wildcards: Any) -> Any:
        ns = {k: v(wildcards) if callable(v) else v for k, v in namespace.items()}
        for k, v in wildcards.items():
            ns.setdefault(k, v)  # an explicit namespace value wins over a wildcard
        text = expr(wildcards) if callable(expr) else expr
        return apply(_format(text, ns), ns)

    return inner


def _dpath_get(within: Mapping[str, Any], path: str, default: Any) -> Any:
    """dpath's ``get`` (one match) falling back to ``values`` (a glob matching several)."""
    found = _dpath_search(within, [s for s in path.split("/") if s])
    if not found:
        if default is not _NODEFAULT:
            return default
        raise LookupError(f"lookup: dpath '{path}' not found")
    return found[0] if len(found) == 1 else found


def _dpath_search(node: Any, segments: list[str]) -> list[Any]:
    if not segments:
        return [node]
    head, rest = segments[0], segments[1:]
    if isinstance(node, Mapping):
        keys = [k for k in node if fnmatch.fnmatchcase(str(k), head)]
        return [v for k in keys for v in _dpath_search(node[k], rest)]
    if isinstance(node, (list, tuple)):
        idx = [i for i in range(len(node)) if fnmatch.fnmatchcase(str(i), head)]
        return [v for i in idx for v in _dpath_search(node[i], rest)]
    return []


def _as_frame(within: Any) -> Any:
    try:
        import pandas as pd
    except ImportError:
        raise LookupError("lookup: query= needs pandas (pip install pandas), or search a mapping "
                          "with dpath=") from None
    if isinstance(within, pd.Series):
        return within.to_frame()
    if not isinstance(within, pd.DataFrame):
        raise LookupError(f"lookup: query= searches a pandas DataFrame or Series, not "
                          f"{type(within).__name__}")
    return within


def _query(frame: Any, expr: str, cols: Any, is_nrows: int | None, default: Any) -> Any:
    try:
        res = frame.query(expr)
    except Exception as e:  # pandas' own message says what is wrong with the query
        raise LookupError(f"lookup: query {expr!r} failed: {type(e).__name__}: {e}") from None
    if is_nrows is not None:
        return is_nrows == len(res)
    if len(res) == 0 and default is not _NODEFAULT:
        return default
    if cols is not None:
        res = res[cols]
        if not isinstance(cols, list):
            return res.to_list()  # one column: its values
    rows = list(res.itertuples(index=cols is None))
    return rows[0] if len(rows) == 1 else rows  # one row: the row itself, as Snakemake


def branch(condition: Any, then: Any = None, otherwise: Any = None,
           cases: Mapping[Any, Any] | None = None) -> Any:
    """``then`` if the condition holds, else ``otherwise``; or ``cases[condition]``. A function
    anywhere makes the result an input function; None becomes an empty list."""
    if cases is not None and then is not None:
        raise ValueError("branch: cases cannot be combined with then")

    def value(v: Any, wc: Any) -> Any:
        return (v(wc) if callable(v) else v) or []

    def decide(wc: Any) -> Any:
        if cases is None:
            return value(then, wc) if value(condition, wc) else value(otherwise, wc)
        key = value(condition, wc)
        if key in cases:
            return value(cases[key], wc)
        if otherwise is not None:
            return value(otherwise, wc)
        raise KeyError(f"branch: {key!r} is not one of the cases")

    if any(callable(v) for v in (condition, then, otherwise)):
        return decide
    return decide(None)


def evaluate(expr: str) -> Callable[[Any], Any]:
    """An input function: ``expr`` with each ``{wildcard}`` replaced by repr(value), evaluated.
    Only builtins are in scope, as in Snakemake."""
    def inner(wildcards: Any) -> Any:
        text = expr.format(**{k: repr(v) for k, v in wildcards.items()})
        try:
            return eval(text, {"__builtins__": builtins})  # the rule file's own expression
        except Exception as e:
            raise ValueError(f"evaluate: {expr!r} (as {text!r}) failed: {type(e).__name__}: "
                             f"{e}") from None
    return inner


def exists_in(workdir: Callable[[], str]) -> Callable[[Any], bool]:
    def exists(path: Any) -> bool:
        """True if the file or folder exists, relative to the working directory."""
        return os.path.exists(os.path.join(workdir(), os.fspath(path)))
    return exists
