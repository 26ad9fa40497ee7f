"""Step keys: every field counts, diff_fields names it, params render deterministically."""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import blake3
import pytest

from flowmake.digest import DIGEST_BYTES
from flowmake.keys import (
    FIELDS,
    KEY_VERSION,
    canonical,
    diff_fields,
    diff_inputs,
    digests_of,
    key_of_values,
    key_values,
)


def key_texts(**kwargs: Any) -> dict[str, str]:
    return dict(zip(FIELDS, key_values(**kwargs)))


def step_key_fields(**kwargs: Any) -> dict[str, str]:
    """Per-field digests, as a trace keeps them."""
    return digests_of(key_texts(**kwargs))


def step_key(**kwargs: Any) -> str:
    return key_of_values(key_values(**kwargs))


def key_of_texts(texts: dict[str, str]) -> str:
    """The key's framing written out field by field: what key_of_values' one format call must equal."""
    framed = "".join(f"{k}\1{len(v)}\1{v}" for k, v in texts.items())
    return blake3.blake3(framed.encode("utf-8", "surrogateescape")).hexdigest(DIGEST_BYTES)

BASE: dict[str, Any] = dict(
    rule="align",
    action="bwa mem ref.fa in.fq > out.bam",
    params=canonical({"k": 19}),
    env={"LC_ALL": "C"},
    image=None,
    inputs=[("in.fq", "a" * 32), ("ref.fa", "b" * 32)],
)


def test_fields_are_listed_and_key_is_stable() -> None:
    fields = step_key_fields(**BASE)
    assert tuple(fields) == FIELDS
    assert fields["version"] == str(KEY_VERSION)
    assert step_key(**BASE) == step_key(**BASE)
    assert len(step_key(**BASE)) == 32


@pytest.mark.parametrize(
    "field, change",
    [
        ("rule", {"rule": "align2"}),
        ("action", {"action": "bwa mem -t 1 ref.fa in.fq > out.bam"}),
        ("params", {"params": canonical({"k": 21})}),
        ("env", {"env": {"LC_ALL": "en_US.UTF-8"}}),
        ("image", {"image": "sha256:" + "c" * 64}),
        ("inputs", {"inputs": [("in.fq", "d" * 32), ("ref.fa", "b" * 32)]}),
        ("inputs", {"inputs": [("ref.fa", "b" * 32), ("in.fq", "a" * 32)]}),  # order matters
        ("version", {"version": KEY_VERSION + 1}),
    ],
)
def test_each_field_changes_the_key_and_is_named(field: str, change: dict[str, Any]) -> None:
    old = step_key_fields(**BASE)
    new = step_key_fields(**{**BASE, **change})
    assert step_key(**BASE) != step_key(**{**BASE, **change})
    assert diff_fields(old, new) == [field]


def test_env_order_does_not_matter() -> None:
    a = step_key_fields(**{**BASE, "env": {"A": "1", "B": "2"}})
    b = step_key_fields(**{**BASE, "env": {"B": "2", "A": "1"}})
    assert a == b


def test_diff_fields_reports_added_and_removed_fields() -> None:
    old = {"rule": "x", "legacy": "y"}
    new = {"rule": "x", "extra": "z"}
    assert diff_fields(old, new) == ["extra", "legacy"]


def test_diff_inputs_names_paths() -> None:
    old = [("a", "1"), ("b", "2"), ("c", "3")]
    assert diff_inputs(old, [("a", "1"), ("b", "9"), ("d", "4")]) == ["b", "d", "c"]
    assert diff_inputs(old, [("b", "2"), ("a", "1"), ("c", "3")]) == ["b", "a", "c"]
    assert diff_inputs(old, old) == []


class Color(enum.Enum):
    RED = 1


@dataclass
class Opts:
    depth: int
    name: str


class Opaque:
    pass


def test_canonical_renderings() -> None:
    assert canonical({"b": 1, "a": [1, 2.5, None, True]}) == '{"a":[1,2.5,null,true],"b":1}'
    assert canonical((1, 2)) == canonical([1, 2])
    assert canonical({3, 1, 2}) == "set[1,2,3]"
    assert canonical(1) != canonical(1.0) != canonical("1") != canonical(True)
    assert canonical(Path("a/b")) == canonical(PurePosixPath("a/b")) == 'path"a/b"'
    assert canonical(Path("a")) != canonical("a")
    assert canonical(dt.date(2024, 1, 2)) == "date(2024-01-02)"
    assert canonical(dt.datetime(2024, 1, 2, 3, 4)) == "datetime(2024-01-02T03:04:00)"
    assert canonical(Color.RED) == "Color.RED"
    assert canonical(Opts(3, "x")) == 'Opts(depth=3,name="x")'
    assert canonical({1: "a", "1": "b"}) == '{"1":"b",1:"a"}'
    assert canonical(b"\x00\xff") == "bytes(00ff)"
    assert canonical('q"uote\n') == '"q\\"uote\\n"'


def test_canonical_unknown_objects_are_stable_across_instances() -> None:
    assert canonical(Opaque()) == canonical(Opaque())
    assert "0x" not in canonical(Opaque())


def test_canonical_is_insensitive_to_dict_insertion_order() -> None:
    a = {"x": {"q": 1, "p": [1, {"z": 0, "y": 1}]}, "w": None}
    b = {"w": None, "x": {"p": [1, {"y": 1, "z": 0}], "q": 1}}
    assert canonical(a) == canonical(b)


def test_env_encoding_is_unambiguous() -> None:
    a = step_key_fields(**{**BASE, "env": {"A": "1\nB", "C": "2"}})
    b = step_key_fields(**{**BASE, "env": {"A": "1", "B\nC": "2"}})
    assert a["env"] != b["env"]


@pytest.mark.parametrize("action", ["cp {input} {output}", "a}\n{0}\1b", "", "é \udcff"])
def test_key_of_values_is_key_of_texts_of_the_same_fields(action: str) -> None:
    # The planner hashes the tuple form in one format call; the framing written out gives the same key.
    kw = {**BASE, "action": action, "image": "sha256:" + "c" * 64}
    assert key_of_values(key_values(**kw)) == key_of_texts(key_texts(**kw)) == step_key(**kw)
    assert tuple(key_texts(**kw)) == FIELDS
