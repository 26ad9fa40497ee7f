"""``Paramspace``: a pandas data frame as a space of parameters, one path per row (Snakemake's
``snakemake.utils.Paramspace``).

``wildcard_pattern`` is ``col1~{col1}/col2~{col2}`` (one folder level per column, the last
ones joined into the file name when ``filename_params`` says so), ``instance_patterns`` the
same with each row's values, and ``instance(wildcards)`` the row a step's wildcards name, with
the column types restored. pandas is not a dependency: without it, a clear error.
"""

from __future__ import annotations

from typing import Any, Iterator

from flowmake.errors import FlowfileError


def _pandas() -> Any:
    try:
        import pandas
    except ImportError:
        raise FlowfileError("Paramspace needs pandas, which is not installed",
                            hint="pip install pandas") from None
    return pandas


class Paramspace:
    def __init__(self, dataframe: Any, filename_params: Any = None, param_sep: str = "~",
                 filename_sep: str = "_", single_wildcard: str | None = None) -> None:
        _pandas()
        self.param_sep = param_sep
        self.filename_sep = filename_sep
        self.single_wildcard = single_wildcard
        columns = list(dataframe.columns)
        if not filename_params:
            in_name: list[str] = []
        else:
            in_name = columns if isinstance(filename_params, str) and filename_params == "*" \
                else list(filename_params)
            unknown = [p for p in in_name if p not in columns]
            if unknown:
                raise FlowfileError(f"Paramspace: filename_params {unknown} are not columns of "
                                    "the data frame")
            if len(set(in_name)) != len(in_name):
                raise FlowfileError("Paramspace: filename_params must be unique")
        # Folder levels first, in the frame's order, then the file name's columns in theirs.
        self.ordered_columns = [c for c in columns if c not in in_name] + in_name
        folders = len(columns) - len(in_name) + (1 if in_name else 0)
        slots = "/".join(["{}"] * folders)
        self.pattern = filename_sep.join([slots] + ["{}"] * (len(in_name) - 1)) if in_name else slots
        self.dataframe = dataframe[self.ordered_columns]

    def _fill(self, parts: Iterator[str]) -> str:
        return self.pattern.format(*parts)

    @property
    def wildcard_pattern(self) -> str:
        if self.single_wildcard:
            return f"{{{self.single_wildcard}}}"
        return self._fill(f"{c}{self.param_sep}{{{c}}}" for c in self.ordered_columns)

    @property
    def instance_patterns(self) -> Iterator[str]:
        pd = _pandas()
        for row in self.dataframe.itertuples(index=False):
            yield self._fill(f"{name}{self.param_sep}{'NA' if pd.isna(v) else v}"
                             for name, v in zip(self.ordered_columns, row))

    def instance(self, wildcards: Any) -> dict[str, Any]:
        """The row (column → value, with the column's type) the wildcards name."""
        if self.single_wildcard:
            value = wildcards.get(self.single_wildcard)
            if value is None:
                raise FlowfileError(f"Paramspace: the rule has no wildcard '{self.single_wildcard}'")
            from flowmake.patterns import Pattern

            pattern = Pattern(self._fill(f"{c}{self.param_sep}{{{c}}}" for c in self.ordered_columns))
            b = pattern.match(str(value))
            if b is None:
                raise FlowfileError(f"Paramspace: {self.single_wildcard}={value} does not match "
                                    f"{pattern.text}")
            raw = {c: b.raw(c) for c in pattern.wildcards}
        else:
            raw = {k: v for k, v in wildcards.items() if k in self.ordered_columns}
        return {k: self._typed(k, v) for k, v in raw.items()}

    def _typed(self, name: str, value: Any) -> Any:
        pd = _pandas()
        dtype = self.dataframe.dtypes[name]
        if value == "NA":
            return pd.NA
        if dtype == bool:
            return False if value == "False" else bool(value)  # astype(bool) calls "False" true
        return pd.Series([value]).astype(dtype)[0]

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "dataframe":
            raise AttributeError(name)
        ret = getattr(self.dataframe, name)
        return Paramspace(ret) if isinstance(ret, _pandas().DataFrame) else ret

    def __getitem__(self, key: Any) -> Any:
        ret = self.dataframe[key]
        return Paramspace(ret) if isinstance(ret, _pandas().DataFrame) else ret
