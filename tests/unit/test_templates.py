"""template_engine: rules: yte (where installed) and the errors a rule file can cause."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from flowmake.errors import FlowfileError
from flowmake.flowfile import load_workflow


def _load(tmp_path: Path, engine: str) -> None:
    (tmp_path / "Flowfile").write_text(
        f'rule r:\n    input: "t"\n    output: "o"\n    template_engine: "{engine}"\n')
    load_workflow(str(tmp_path / "Flowfile"))


def test_unknown_engine_is_refused_at_the_rule(tmp_path: Path) -> None:
    with pytest.raises(FlowfileError) as err:
        _load(tmp_path, "mako")
    assert "template_engine must be 'jinja2' or 'yte', not 'mako'" in str(err.value)
    assert "Flowfile:1" in str(err.value)


def test_yte_renders_with_params_and_wildcards(flow: Any) -> None:
    pytest.importorskip("yte")
    flow.write('rule all:\n    input: "x.yaml"\n\n'
               'rule r:\n    input: "t.yaml"\n    output: "{name}.yaml"\n    params: n=3\n'
               '    template_engine: "yte"\n')
    flow.file("t.yaml", "?if params.n > 2:\n  big: ?wildcards.name\n?else:\n  small: 1\n")
    flow.ok("-c", "1")
    assert flow.read("x.yaml").strip() == "big: x"
