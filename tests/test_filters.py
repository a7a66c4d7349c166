"""containerd's filter syntax (pysnap.filters), on plain Info objects.

The cases follow containerd's filters/filter_test.go and the adaptor of
metadata/snapshot.go, with the rules DESIGN.md adds (``!=`` true on an absent
field, a bad pattern matches nothing, lower-case kinds).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from pysnap.errors import InvalidArgumentError
from pysnap.filters import FilterSyntaxError, Selector, compile_filters, parse
from pysnap.types import Info, Kind

C, A, V = Kind.COMMITTED, Kind.ACTIVE, Kind.VIEW

CORPUS = [
    Info(kind=C, name="base", labels={"foo": "true"}),
    Info(kind=C, name="layer-1", parent="base", labels={"foo": "present", "a.b": "dotted"}),
    Info(kind=C, name="layer-2", parent="layer-1", labels={"more complex label": "x y"}),
    Info(kind=A, name="build", parent="layer-2", labels={'with \\ and "': "present"}),
    Info(kind=V, name="ro", parent="layer-2", labels={"foo": "omg_asdf.asdf-qwer"}),
    Info(kind=A, name="scratch", labels={"env": "too complex, yo", "é": "ünï"}),
    Info(kind=V, name="Caps", parent="base"),
]


def names(*filters: str) -> list[str]:
    match = compile_filters(*filters)
    return [info.name for info in CORPUS if match(info)]


ALL = [info.name for info in CORPUS]

CASES: list[tuple[tuple[str, ...], list[str] | None]] = [
    # empty: everything
    ((), ALL),
    (("",), ALL),
    (("", ""), ALL),
    (("   ",), ALL),
    (("", "name==base"), ALL),  # an empty filter is Always, OR'd with the rest
    # presence
    (("name",), ALL),
    (("parent",), ALL),  # parent is always present, "" for a base
    (("kind",), ALL),
    (("labels.foo",), ["base", "layer-1", "ro"]),
    (("labels",), []),  # no label has the empty key
    (("nosuchfield",), []),
    (("labels.foo,name",), ["base", "layer-1", "ro"]),
    # equality
    (("name==base",), ["base"]),
    (("name == base",), ["base"]),  # spaces between tokens are skipped
    (('name=="base"',), ["base"]),
    (("name==caps",), []),  # names are case-sensitive
    (("parent==base",), ["layer-1", "Caps"]),
    (('parent==""',), ["base", "scratch"]),
    (("labels.foo==true",), ["base"]),
    (("labels.foo==omg_asdf.asdf-qwer",), ["ro"]),  # bare values take . and -
    (('labels.env=="too complex, yo"',), ["scratch"]),
    (("labels.nosuch==x",), []),
    (("nosuchfield==x",), []),
    # kinds: lower-case names, compared without regard to case
    (("kind==committed",), ["base", "layer-1", "layer-2"]),
    (("kind==active",), ["build", "scratch"]),
    (("kind==view",), ["ro", "Caps"]),
    (("kind==COMMITTED",), ["base", "layer-1", "layer-2"]),
    (("kind!=Committed",), ["build", "ro", "scratch", "Caps"]),
    (("kind==3",), []),  # the number is not the name
    (("kind~=^c",), ["base", "layer-1", "layer-2"]),
    (("kind~=iew$",), ["ro", "Caps"]),
    # inequality: true when absent
    (("name!=base",), [n for n in ALL if n != "base"]),
    (("labels.foo!=true",), [n for n in ALL if n != "base"]),
    (('labels.foo!=""',), ALL),
    (("nosuchfield!=x",), ALL),
    (("parent!=layer-2",), ["base", "layer-1", "layer-2", "scratch", "Caps"]),
    # regular expressions: unanchored search, compiled once
    (("name~=layer",), ["layer-1", "layer-2"]),
    (("name~=^l.*2$",), ["layer-2"]),
    (("name~=a",), ["base", "layer-1", "layer-2", "scratch", "Caps"]),
    (("name~=/[abc]{1,2}/",), ["base", "layer-1", "layer-2", "build", "scratch", "Caps"]),
    (("name~=|^(ro\\|build)$|",), ["build", "ro"]),  # \| escapes the delimiter
    (("name~=|^(ro|build)$|",), None),  # the | ends the literal: malformed
    (("name~=(?i)^caps$",), ["Caps"]),
    (("labels.foo~=^p",), ["layer-1"]),
    (("labels.nosuch~=x",), []),
    (("labels.nosuch~=^$",), ALL),  # an absent field reads as "" (containerd)
    (("name~=[",), []),  # does not compile: matches nothing, no error
    (("name~=(",), []),
    (("name~=[,name==base",), []),
    (("name~=[", "name==base"), ["base"]),
    (('name~=/[abc]{0,1}"\\//',), []),  # valid syntax, matches nothing
    (('labels.env~="complex, y"',), ["scratch"]),
    # label keys with dots: labels.a.b is labels."a.b"
    (("labels.a.b",), ["layer-1"]),
    (('labels."a.b"',), ["layer-1"]),
    (('labels."a".b==dotted',), ["layer-1"]),
    (('labels."a.b"==dotted',), ["layer-1"]),
    (("labels.a",), []),
    (('labels."more complex label"',), ["layer-2"]),
    (('labels."more complex label"=="x y"',), ["layer-2"]),
    (('labels."with \\\\ and \\""==present',), ["build"]),
    (('labels."\\u00e9"=="\\u00fcn\\u00ef"',), ["scratch"]),
    (('labels."\\xc3\\xa9"',), ["scratch"]),  # \x escapes are bytes, joined as UTF-8
    (('labels."\\303\\251"',), ["scratch"]),  # octal too
    (('"labels"."foo"==true',), ["base"]),
    (('"name"==base',), ["base"]),
    # AND within one filter, OR across filters
    (("kind==committed,labels.foo",), ["base", "layer-1"]),
    (("kind==committed,labels.foo,name!=base",), ["layer-1"]),
    (("name==base,labels.foo==wrong",), []),
    (("name==base", "name==ro"), ["base", "ro"]),
    (("kind==view", "labels.foo==true"), ["base", "ro", "Caps"]),
    (("kind==view,parent==base", "name~=^layer-1$"), ["layer-1", "Caps"]),
    (("name==nothing", "name==nothing-else"), []),
    # bare values: anything but a comma or space, = and ! included
    (("labels.foo==a=b",), []),
    (("name!=a!b",), ALL),
]


@pytest.mark.parametrize(("filters", "expected"), CASES, ids=[repr(c[0]) for c in CASES])
def test_filter_table(filters: tuple[str, ...], expected: list[str] | None) -> None:
    if expected is None:
        with pytest.raises(InvalidArgumentError):
            compile_filters(*filters)
    else:
        assert names(*filters) == expected


PARSED = [
    ("name", (Selector(("name",), "?"),)),
    ("name==x", (Selector(("name",), "==", "x"),)),
    ("labels.a.b!=x", (Selector(("labels", "a", "b"), "!=", "x"),)),
    ('labels."a.b"~=x', (Selector(("labels", "a.b"), "~=", "x"),)),
    ("name~=/a\\/b/", (Selector(("name",), "~=", "a/b"),)),
    ("name~=|a\\|b|", (Selector(("name",), "~=", "a|b"),)),
    ('name~=/a"|b/', (Selector(("name",), "~=", 'a"|b'),)),
    ('name=="\\a\\b\\f\\n\\r\\t\\v\\\\\\""', (Selector(("name",), "==", '\a\b\f\n\r\t\v\\"'),)),
    ('name=="\\U0001F600"', (Selector(("name",), "==", "\U0001f600"),)),
    ('name=="\\ud800"', (Selector(("name",), "==", "\ufffd"),)),  # as Go's EncodeRune
    ('name==""', (Selector(("name",), "==", ""),)),
    ("a , b", (Selector(("a",), "?"), Selector(("b",), "?"))),
    ("labels.1-2_x==v.w", (Selector(("labels", "1-2_x"), "==", "v.w"),)),
    ("name==é", (Selector(("name",), "==", "é"),)),
    ('name==a"b', (Selector(("name",), "==", 'a"b'),)),
]


@pytest.mark.parametrize(("text", "expected"), PARSED, ids=[p[0] for p in PARSED])
def test_parse(text: str, expected: tuple[Selector, ...]) -> None:
    assert parse(text) == expected


MALFORMED = [
    # (filter, position of the fault)
    ("name==foo,", 10),  # trailing comma
    (",name==foo", 0),
    ("name==foo,,kind", 10),
    ("labels.", 7),  # trailing field separator
    ("labels..foo", 7),
    (".name", 0),
    ("name==", 6),  # missing value
    ("name==,kind", 6),
    ("image~=,id?=?fbaq", 7),
    ("name===x", 4),  # unsupported operators
    ("name=x", 4),
    ("name!x", 4),
    ("name~x", 4),
    ("name=!x", 4),
    ("name<x", 4),
    ("name==foo bar", 10),  # two values
    ("name foo", 5),
    ("name==foo kind==view", 10),
    ("labels.?x", 7),  # not a field character
    ("labels.é==x", 7),  # fields are ASCII unless quoted
    ("labels.|foo|==x", 7),  # / and | quote only regular expressions
    ("labels./foo/", 7),
    ("name==/x/", 6),
    ("name!=|x|", 6),
    ('name=="abc', 6),  # not terminated
    ('name=="a\nb"', 6),
    ("name~=/abc", 6),
    ('name=="\\q"', 7),  # illegal escapes
    ('name=="\\/"', 7),  # only the delimiting quote may be escaped
    ("name~=/\\|/", 7),
    ('name=="\\x4"', 7),
    ('name=="\\xzz"', 7),
    ('name=="\\u12"', 7),
    ('name=="\\12"', 7),
    ('name=="\\400"', 7),
    ('name=="\\U00110000"', 7),
    ('"name', 0),
    ("name\0==x", 4),
    ('name=="a\0"', 8),
    ("==x", 0),
    ("name,", 5),
]


@pytest.mark.parametrize(("text", "position"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed(text: str, position: int) -> None:
    with pytest.raises(InvalidArgumentError) as excinfo:
        compile_filters(text)
    err = excinfo.value
    assert isinstance(err, FilterSyntaxError)
    assert err.filter == text
    assert err.position == position
    assert repr(text) in str(err)
    assert f"position {position}" in str(err)


def test_every_filter_is_checked() -> None:
    # an empty filter makes the OR true, but a malformed one still fails
    with pytest.raises(InvalidArgumentError):
        compile_filters("", "name==")
    with pytest.raises(InvalidArgumentError):
        compile_filters("name==ok", "labels.")


def test_regex_compiled_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import re2

    calls: list[bytes] = []
    real = re2.compile

    def counting(pattern: bytes, options: object = None) -> object:
        calls.append(pattern)
        return real(pattern, options)

    monkeypatch.setattr(re2, "compile", counting)
    match = compile_filters("name~=^lay", "labels.foo~=x")
    assert calls == [b"^lay", b"x"]
    for info in CORPUS * 10:
        match(info)
    assert calls == [b"^lay", b"x"]


def test_upper_case_kind_value_in_regex() -> None:
    # ~= searches the lower-case name, so an upper-case pattern misses
    assert names("kind~=VIEW") == []
    assert names("kind~=(?i)VIEW") == ["ro", "Caps"]


def test_predicate_on_info_with_times() -> None:
    info = Info(kind=Kind.COMMITTED, name="x", created_ns=1, updated_ns=2)
    assert compile_filters("kind==committed,name==x")(info)
    assert not compile_filters("kind==active")(info)


def test_error_is_invalid_argument_with_code() -> None:
    with pytest.raises(InvalidArgumentError) as excinfo:
        compile_filters("name==")
    assert excinfo.value.code == "invalid_argument"
    assert excinfo.value.exit_code == 6


@pytest.mark.parametrize("bad", [None, b"name==a", 5])
def test_filter_not_a_str_is_invalid_argument(bad: object) -> None:
    with pytest.raises(InvalidArgumentError, match="must be a str"):
        compile_filters(bad)  # type: ignore[arg-type]


# Go's regexp syntax (RE2), not Python's: containerd users write these.
GO_SYNTAX = [
    (r"name~=^\pL+$", ["base", "build", "ro", "scratch", "Caps"]),  # Unicode classes
    (r"name~=^[[:lower:]]+-\d$", ["layer-1", "layer-2"]),  # POSIX classes
    (r"name~=b(?=a)", []),  # a lookahead is Python-only: does not compile in Go
    (r"name~=(a)\1", []),  # so is a backreference
    (r"name~=\C", []),  # RE2 accepts \C (any byte), Go rejects it
    (r"name~=[\C]", []),
    (r"name~=\Q\C\E", ["odd\\Cname"]),  # literal text: no \C escape in it
    (r"name~=\\C", ["odd\\Cname"]),  # an escaped backslash, then C
    (r'name~="\xff"', []),  # not UTF-8: Go's Compile fails
]


@pytest.mark.parametrize(("text", "expected"), GO_SYNTAX, ids=[g[0] for g in GO_SYNTAX])
def test_go_regexp_syntax(text: str, expected: list[str]) -> None:
    corpus = [*CORPUS, Info(kind=C, name="odd\\Cname")]
    match = compile_filters(text)
    assert [i.name for i in corpus if match(i)] == expected


def test_bad_pattern_writes_nothing_to_stderr(capfd: pytest.CaptureFixture[str]) -> None:
    # RE2 logs compile errors to fd 2 unless told not to
    for text in ("name~=(", "name~=[", "name~=a{1001}", "name~=\\C", "name~=b(?=a)"):
        assert not [i for i in CORPUS if compile_filters(text)(i)]
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")


def test_pathological_pattern_is_linear(tmp_path: pytest.TempPathFactory) -> None:
    """``^(a+)+$`` against a 40-character name that fails at its end: a
    backtracking engine tries ~2**40 ways (hours; 33 characters took minutes),
    RE2 one pass. Run through walk() in a child, so a hang is a timeout there
    and not a stuck suite; the walk holds a read transaction all along."""
    code = textwrap.dedent(
        f"""
        import pysnap
        with pysnap.OverlaySnapshotter({str(tmp_path)!r}, sync=False) as sn:
            sn.prepare("a" * 40 + "!")
            sn.commit("a" * 39 + "!", "a" * 40 + "!")
            print([i.name for i in sn.walk("name~=^(a+)+$", "name~=^a+!$")])
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == repr(["a" * 39 + "!"])
