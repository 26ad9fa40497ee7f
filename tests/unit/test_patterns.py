"""Patterns: matching paths to typed bindings and formatting them back."""

from __future__ import annotations

import datetime

import pytest

from flowmake.errors import UnsafeWildcardError, WildcardError
from flowmake.patterns import Bindings, Pattern, make_type


def test_untyped_wildcard_is_greedy_and_crosses_slashes() -> None:
    p = Pattern("results/{sample}.txt")
    assert p.wildcards == ("sample",)
    assert p.match("results/a/b.txt") == {"sample": "a/b"}
    assert p.match("results/.txt") is None
    assert p.match("other/a.txt") is None


def test_two_wildcards_greedy_like_snakemake() -> None:
    b = Pattern("{a}.{b}.txt").match("x.y.z.txt")
    assert b == {"a": "x.y", "b": "z"}


def test_inline_constraint_with_braces() -> None:
    p = Pattern(r"s/{id,\d{3}}.txt")
    assert p.match("s/123.txt") == {"id": "123"}
    assert p.match("s/12.txt") is None


def test_rule_constraints_apply_to_untyped_only_when_no_inline() -> None:
    p = Pattern(r"{a}/{b,x+}.txt", constraints={"a": r"[a-z]+", "b": r"\d+"})
    assert p.match("abc/xx.txt") == {"a": "abc", "b": "xx"}
    assert p.match("ab1/xx.txt") is None


def test_str_type_is_one_segment() -> None:
    p = Pattern("{s:str}/out.txt")
    assert p.match("a/out.txt") == {"s": "a"}
    assert p.match("a/b/out.txt") is None


def test_int_type_keeps_raw_spelling() -> None:
    p = Pattern("lanes/{lane:int}.txt")
    b = p.match("lanes/007.txt")
    assert b is not None
    assert b["lane"] == 7 and b["lane"] + 1 == 8
    assert b.raw("lane") == "007"
    assert str(b["lane"]) == "007" and f"{b['lane']}" == "007" and f"{b['lane']:d}" == "7"
    assert p.format(b) == "lanes/007.txt"
    assert p.match("lanes/x.txt") is None


def test_float_type() -> None:
    b = Pattern("t/{x:float}").match("t/0.50")
    assert b is not None and b["x"] == 0.5 and str(b["x"]) == "0.50"
    assert Pattern("t/{x:float}").match("t/abc") is None


def test_date_type_requires_real_calendar_date() -> None:
    p = Pattern("day/{day:date}.csv")
    b = p.match("day/2024-02-29.csv")
    assert b is not None
    assert isinstance(b["day"], datetime.date) and b["day"].isoweekday() == 4
    assert str(b["day"]) == "2024-02-29"
    assert p.match("day/2024-02-30.csv") is None
    assert p.match("day/2024-2-3.csv") is None


def test_path_type_several_segments_relative() -> None:
    p = Pattern("in/{p:path}.gz")
    assert p.match("in/a/b/c.gz") == {"p": "a/b/c"}
    assert p.match("in//a.gz") is None


def test_paths_outside_the_workdir_never_match() -> None:
    p = Pattern("{x}.txt")
    assert p.match("../etc/passwd.txt") is None
    assert p.match("/abs/file.txt") is None
    assert p.match("a..b.txt") == {"x": "a..b"}  # '..' inside a name is fine


def refusal(p: Pattern, path: str) -> str:
    with pytest.raises(UnsafeWildcardError) as e:
        p.match(path)
    return e.value.message


def test_path_escapes_inside_a_path_are_refused() -> None:
    p = Pattern("out/{x}.txt")
    assert refusal(p, "out/a/../../b.txt") == "wildcard 'x' would be 'a/../../b', which has a '..' segment"
    assert refusal(p, "out//etc/x.txt") == "wildcard 'x' would be '/etc/x', which is an absolute path"
    # No regex takes a path escape back.
    assert refusal(Pattern("out/{x,.*[./].*}.txt"), "out/../b.txt").endswith("a '..' segment")


HOSTILE = [";", "|", "&", "$", "`", "<", ">", "(", ")", "'", '"', "\n", "\t", "\r", "\x1b", "\x7f",
           "\x85"]


@pytest.mark.parametrize("bad", HOSTILE)
@pytest.mark.parametrize("spelling", ["out/{x}.txt", "out/{x:str}.txt", "out/{x:path}.txt",
                                      "out/{x,[^/]+}.txt", "out/{x,.+}.txt", "out/{x,[\\w\\W]+}.txt",
                                      "out/{x,[ -~\\x00-\\x1f\\x7f-\\x9f]+}.txt"])
def test_shell_syntax_and_control_characters_are_refused(bad: str, spelling: str) -> None:
    p = Pattern(spelling)
    kind = "shell syntax" if bad.isprintable() else "a control character"
    assert refusal(p, f"out/a{bad}b.txt") == (
        f"wildcard 'x' would be {'a' + bad + 'b'!r}, which contains {bad!r} ({kind})")


def test_a_regex_that_names_a_character_allows_it() -> None:
    assert Pattern(r"out/{x,[\w;|]+}.txt").match("out/a;b|c.txt") == {"x": "a;b|c"}
    assert Pattern(r"out/{x,[\w;]+|a&b}.txt").match("out/a&b.txt") == {"x": "a&b"}  # in any branch
    assert Pattern(r"out/{x,a\;b}.txt").match("out/a;b.txt") == {"x": "a;b"}  # however escaped
    assert Pattern(r"out/{x,a\x3bb}.txt").match("out/a;b.txt") == {"x": "a;b"}
    assert Pattern(r"out/{x,[\w\t]+}.txt").match("out/a\tb.txt") == {"x": "a\tb"}
    assert Pattern("out/{x}.txt", {"x": r"[\w$]+"}).match("out/a$b.txt") == {"x": "a$b"}
    types = {"cmd": make_type("cmd", r"[\w()]+"), "any": make_type("any", r".+")}
    assert Pattern("out/{x:cmd}.txt", types=types).match("out/f(1).txt") == {"x": "f(1)"}
    # Only what is named: '.', classes, ranges and negated sets name nothing.
    assert refusal(Pattern(r"out/{x,[\w;].*}.txt"), "out/a;b|c.txt").endswith("contains '|' (shell syntax)")
    assert refusal(Pattern("out/{x:any}.txt", types=types), "out/f(1).txt").endswith("'(' (shell syntax)")
    assert refusal(Pattern(r"out/{x,[\w\s]+}.txt"), "out/a\nb.txt").endswith("a control character)")
    assert Pattern(r"out/{x,[\w\s]+}.txt").match("out/a b.txt") == {"x": "a b"}
    assert Pattern(r"out/{x,[^;]+}.txt").match("out/a;b.txt") is None


def test_benign_odd_values_still_match() -> None:
    p = Pattern("out/{x}.txt")
    for value in ["a b", "a#b", "a=b", "a+b", "a,b", "a@b", "a%b", "a:b", "é", "ß", "日本", "a*b", "~a",
                  "a{b}", "a\\b", "a!b"]:
        assert p.match(f"out/{value}.txt") == {"x": value}


def test_refusal_names_the_wildcard_and_says_how_to_allow() -> None:
    with pytest.raises(UnsafeWildcardError) as e:
        Pattern("out/{name}.txt").match("out/a$(b).txt")
    assert (e.value.wildcard, e.value.value, e.value.path) == ("name", "a$(b)", "out/a$(b).txt")
    assert e.value.hint == ("choose another name, or let the wildcard take '$' by naming it in its "
                            r"regex, e.g. {name,[\w.\$]+}")


def test_repeated_wildcard_must_match_same_value() -> None:
    p = Pattern("{s}/{s}.txt")
    assert p.wildcards == ("s",)
    assert p.match("a/a.txt") == {"s": "a"}
    assert p.match("a/b.txt") is None
    assert p.format({"s": "q"}) == "q/q.txt"


def test_static_pattern() -> None:
    p = Pattern("a/b.txt")
    assert p.is_static and p.wildcards == ()
    assert p.match("a/b.txt") == {}
    assert p.match("a/c.txt") is None


def test_format_from_plain_dict_and_missing_wildcard() -> None:
    p = Pattern("{a}/{b:int}.txt")
    assert p.format({"a": "x", "b": 3}) == "x/3.txt"
    with pytest.raises(WildcardError) as e:
        p.format({"a": "x"})
    assert e.value.message == "wildcard 'b' in '{a}/{b:int}.txt' cannot be determined"


def test_unknown_type_is_an_error() -> None:
    with pytest.raises(WildcardError) as e:
        Pattern("{a:nosuch}")
    assert e.value.message == "unknown wildcard type 'nosuch' in pattern '{a:nosuch}'"


def test_custom_type() -> None:
    t = make_type("sample_id", r"S\d+", lambda s: int(s[1:]))
    p = Pattern("{id:sample_id}.bam", types={"sample_id": t})
    b = p.match("S12.bam")
    assert b is not None and b["id"] == 12 and b.raw("id") == "S12"
    assert p.format(b) == "S12.bam"
    assert p.match("X12.bam") is None


def test_converter_error_means_no_match() -> None:
    def conv(s: str) -> int:
        raise ValueError("no")

    p = Pattern("{a:t}", types={"t": make_type("t", r"\w+", conv)})
    assert p.match("abc") is None


def test_make_type_validation() -> None:
    with pytest.raises(WildcardError):
        make_type("x", "(")
    with pytest.raises(WildcardError):
        make_type("x", r"(?P<n>a)")


def test_bindings_from_raw() -> None:
    p = Pattern("{a}/{n:int}.txt")
    b = p.bindings_from_raw({"a": "x", "n": "05"})
    assert b["n"] == 5 and b.raw("n") == "05"
    with pytest.raises(WildcardError):
        p.bindings_from_raw({"a": "x", "n": "five"})


def test_bindings_equality_and_hash() -> None:
    a = Bindings({"x": 1}, {"x": "01"})
    b = Bindings({"x": 1}, {"x": "01"})
    assert a == b and hash(a) == hash(b)
    assert a != Bindings({"x": 1}, {"x": "1"})


def test_typed_pattern_hit_and_miss() -> None:
    # The paths bench/micro.py times (its per-call figures replace a wall-clock bound here).
    p = Pattern("results/{sample}/{lane:int}.bam")
    b = p.match("results/s1/007.bam")
    assert b == {"sample": "s1", "lane": 7} and b.raw("lane") == "007"
    assert p.format(b) == "results/s1/007.bam"
    assert p.match("other/s1/007.txt") is None
