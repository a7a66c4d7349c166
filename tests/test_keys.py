"""snapcore.keys against its struct twin in pysnap._reference: layouts, round trips, bad input."""

from __future__ import annotations

import struct
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pysnap import _reference, storage  # storage registers Info/Usage with snapcore.keys
from pysnap.types import Info, Kind, Usage
from snapcore import keys

assert storage  # imported for its side effect

IMPLS = {"snapcore": keys, "reference": _reference}
U64 = st.integers(0, 2**64 - 1)
TIME = st.integers(0, 2**63 - 1)  # a record's times are int64 Timestamps on the wire
# Any Unicode that UTF-8 can encode (lone surrogates cannot, and are refused earlier).
TEXT = st.text(st.characters(blacklist_categories=("Cs",)))
LABELS = st.dictionaries(TEXT, TEXT, max_size=8)
KINDS = st.integers(1, 3)


@pytest.fixture(params=list(IMPLS))
def impl(request: pytest.FixtureRequest) -> ModuleType:
    return IMPLS[request.param]


SAMPLE = (7, 2, "parent-ü", {"a": "b", "ключ": "значение", "e": "🙂"}, 10**18, 10**18 + 5, 4096, 3)


def test_layout_is_documented_one() -> None:
    rec = keys.encode_record(*SAMPLE)
    head = struct.pack(">BBQQQQQ", 1, 2, 7, 10**18, 10**18 + 5, 4096, 3)
    assert rec.startswith(head)
    parent = "parent-ü".encode()
    assert rec[42:46] == struct.pack(">I", len(parent))
    assert rec[46 : 46 + len(parent)] == parent
    assert rec[46 + len(parent) : 50 + len(parent)] == struct.pack(">I", 3)
    assert rec == _reference.encode_record(*SAMPLE)


def test_round_trip(impl: ModuleType) -> None:
    rec = impl.encode_record(*SAMPLE)
    assert impl.decode_record(rec) == SAMPLE
    sid, info, usage = impl.decode_info("name", rec)
    assert sid == 7
    assert type(info) is Info and type(usage) is Usage
    assert info == Info(
        kind=Kind.ACTIVE,
        name="name",
        parent="parent-ü",
        labels=SAMPLE[3],
        created_ns=10**18,
        updated_ns=10**18 + 5,
    )
    assert info.kind is Kind.ACTIVE
    assert usage == Usage(4096, 3)
    stat = impl.decode_stat("name", rec)
    assert stat == info and type(stat) is Info


def test_empty_record(impl: ModuleType) -> None:
    rec = impl.encode_record(1, 3, "", {}, 0, 0)
    assert len(rec) == 50
    assert impl.decode_record(rec) == (1, 3, "", {}, 0, 0, 0, 0)


def test_keys_layout(impl: ModuleType) -> None:
    assert impl.id_key(1) == b"\0" * 7 + b"\1"
    assert impl.parent_key(1, 2**64 - 1) == struct.pack(">QQ", 1, 2**64 - 1)
    assert impl.decode_id(impl.id_key(2**64 - 1)) == 2**64 - 1
    assert impl.decode_parent_key(impl.parent_key(3, 4)) == (3, 4)
    for bad in (b"", b"\0" * 7, b"\0" * 9):
        with pytest.raises(ValueError, match="id key"):
            impl.decode_id(bad)
    with pytest.raises(ValueError, match="parent key"):
        impl.decode_parent_key(b"\0" * 15)


def test_encode_refuses(impl: ModuleType) -> None:
    for kind in (0, 4):
        with pytest.raises(ValueError, match="kind"):
            impl.encode_record(1, kind, "", {}, 0, 0)
    with pytest.raises(OverflowError):
        impl.encode_record(-1, 1, "", {}, 0, 0)
    with pytest.raises(OverflowError):
        impl.encode_record(2**64, 1, "", {}, 0, 0)
    for times in ((2**63, 0), (0, 2**63)):
        with pytest.raises(OverflowError, match="2262"):
            impl.encode_record(1, 1, "", {}, *times)
    with pytest.raises(UnicodeEncodeError):
        impl.encode_record(1, 1, "\udc80", {}, 0, 0)
    with pytest.raises(UnicodeEncodeError):
        impl.encode_record(1, 1, "", {"k": "\ud800"}, 0, 0)
    # struct says struct.error where Cython says OverflowError
    with pytest.raises((OverflowError, struct.error)):
        impl.id_key(2**64)
    with pytest.raises((OverflowError, struct.error)):
        impl.parent_key(-1, 0)


def test_encode_refuses_non_str_labels() -> None:
    with pytest.raises(TypeError):
        keys.encode_record(1, 1, "", {1: "x"}, 0, 0)  # type: ignore[dict-item]
    with pytest.raises(TypeError):
        keys.encode_record(1, 1, "", None, 0, 0)  # type: ignore[arg-type]


def _corrupt(rec: bytes, off: int, value: bytes) -> bytes:
    return rec[:off] + value + rec[off + len(value) :]


@pytest.mark.parametrize(
    ("what", "match"),
    [
        ("version", "version"),
        ("kind0", "kind"),
        ("kind4", "kind"),
        ("trailing", "trailing"),
        ("duplicate", "duplicate"),
        ("utf8-parent", "UTF-8"),
        ("utf8-label", "UTF-8"),
        ("parent-len", "parent"),
        ("label-count", "label"),
        ("label-len", "label"),
        ("created", "2\\*\\*63"),
        ("updated", "2\\*\\*63"),
    ],
)
def test_corrupt_records(impl: ModuleType, what: str, match: str) -> None:
    rec = impl.encode_record(1, 2, "p", {"a": "b"}, 0, 0)
    bad = {
        "version": _corrupt(rec, 0, b"\x02"),
        "kind0": _corrupt(rec, 1, b"\x00"),
        "kind4": _corrupt(rec, 1, b"\x04"),
        "trailing": rec + b"\0",
        "duplicate": _corrupt(rec, 47, b"\0\0\0\2") + rec[51:],
        "utf8-parent": _corrupt(rec, 46, b"\xff"),
        "utf8-label": _corrupt(rec, 55, b"\xc3"),
        "parent-len": _corrupt(rec, 42, b"\xff\xff\xff\xff"),
        "label-count": _corrupt(rec, 47, b"\0\0\0\3"),
        "created": _corrupt(rec, 10, b"\x80"),
        "updated": _corrupt(rec, 18, b"\xff"),
        "label-len": _corrupt(rec, 51, b"\x7f\xff\xff\xff"),
    }[what]
    with pytest.raises(ValueError, match=match) as e:
        impl.decode_record(bad)
    assert type(e.value).__name__ == "RecordError"
    for decode in (impl.decode_info, impl.decode_stat):
        with pytest.raises(ValueError, match=match):
            decode("x", bad)


def test_truncations(impl: ModuleType) -> None:
    rec = impl.encode_record(*SAMPLE)
    for n in range(len(rec)):
        with pytest.raises(ValueError, match="corrupt snapshot record"):
            impl.decode_record(rec[:n])
        for decode in (impl.decode_info, impl.decode_stat):
            with pytest.raises(ValueError, match="corrupt snapshot record"):
                decode("x", rec[:n])


def test_parent_keys_sort_numerically() -> None:
    pairs = [(0, 0), (1, 2**64 - 1), (2, 0), (255, 1), (256, 0), (2**64 - 1, 7)]
    encoded = [keys.parent_key(p, c) for p, c in pairs]
    assert encoded == sorted(encoded)
    assert all(k.startswith(keys.id_key(p)) for k, (p, _) in zip(encoded, pairs, strict=True))


@settings(max_examples=300, deadline=None)
@given(U64, KINDS, TEXT, LABELS, TIME, TIME, U64, U64)
def test_property_round_trip(
    sid: int,
    kind: int,
    parent: str,
    labels: dict[str, str],
    created: int,
    updated: int,
    size: int,
    inodes: int,
) -> None:
    args = (sid, kind, parent, labels, created, updated, size, inodes)
    rec = keys.encode_record(*args)
    assert rec == _reference.encode_record(*args)
    assert keys.decode_record(rec) == args == _reference.decode_record(rec)
    assert keys.decode_info("n", rec) == _reference.decode_info("n", rec)
    assert keys.decode_link(rec) == (sid, parent.encode()) == _reference.decode_link(rec)
    # every strict prefix is refused, by both
    for n in {0, 1, 41, 49, len(rec) // 2, len(rec) - 1} & set(range(len(rec))):
        for impl in IMPLS.values():
            with pytest.raises(ValueError):
                impl.decode_record(rec[:n])


@settings(max_examples=300, deadline=None)
@given(U64, U64)
def test_property_keys(parent: int, child: int) -> None:
    pk = keys.parent_key(parent, child)
    assert pk == _reference.parent_key(parent, child) == struct.pack(">QQ", parent, child)
    assert keys.decode_parent_key(pk) == (parent, child)
    assert keys.id_key(parent) == struct.pack(">Q", parent) == pk[:8]
    assert keys.decode_id(keys.id_key(child)) == child


def _outcome(impl: ModuleType, data: bytes, fn: str = "decode_record") -> object:
    try:
        return getattr(impl, fn)(data)
    except ValueError as e:
        assert type(e).__name__ == "RecordError"
        return "error"


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_property_garbage(data: bytes) -> None:
    for fn in ("decode_record", "decode_link"):
        assert _outcome(keys, data, fn) == _outcome(_reference, data, fn)


@settings(max_examples=300, deadline=None)
@given(TEXT, LABELS, st.data())
def test_property_flipped_bytes(parent: str, labels: dict[str, str], data: st.DataObject) -> None:
    rec = bytearray(keys.encode_record(1, 3, parent, labels, 5, 6, 7, 8))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(rec) - 1))
        rec[i] = data.draw(st.integers(0, 255))
    for fn in ("decode_record", "decode_link"):
        assert _outcome(keys, bytes(rec), fn) == _outcome(_reference, bytes(rec), fn)


def test_decode_info_before_register_types() -> None:
    # a fresh interpreter: storage has registered the types in this one
    import subprocess
    import sys

    code = (
        "from snapcore import keys\n"
        "rec = keys.encode_record(1, 1, '', {}, 0, 0)\n"
        "calls = (lambda: keys.decode_info('a', rec), lambda: keys.decode_stat('a', rec))\n"
        "for call in calls:\n"
        "    try:\n"
        "        call()\n"
        "    except RuntimeError as e:\n"
        "        assert 'register_types' in str(e), e\n"
        "    else:\n"
        "        raise AssertionError('no error')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
