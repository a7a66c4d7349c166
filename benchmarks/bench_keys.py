"""snapcore.keys against its _reference twin and plain struct, side by side per operation.

"struct" is the least a Python codec can do: one precompiled ``struct.Struct``
call with no checks (for records: the fixed head only, so it is a floor, not
an equal). ``extra_info["correct"]`` records that each implementation agrees
with snapcore on the benchmarked input.

Run: pytest benchmarks/bench_keys.py --benchmark-only -p no:cacheprovider
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import pytest

from pysnap import _reference, storage
from snapcore import keys

assert storage  # registers Info/Usage with snapcore.keys

_PK = struct.Struct(">QQ")
_ID = struct.Struct(">Q")
_HEAD = struct.Struct(">BBQQQQQ")

LABELS = {
    "containerd.io/snapshot.ref": "sha256:" + "ab" * 32,
    "containerd.io/gc.root": "2024-01-01T00:00:00Z",
    "org.example/owner": "build-farm",
}
CREATED, UPDATED = 1_700_000_000_123_456_789, 1_700_000_000_987_654_321
ARGS = (123456, 3, "sha256:" + "cd" * 32, LABELS, CREATED, UPDATED, 1 << 30, 4242)
RECORD = keys.encode_record(*ARGS)
NAME = "sha256:" + "ef" * 32


def _struct_encode() -> bytes:
    return _HEAD.pack(1, 3, 123456, CREATED, UPDATED, 1 << 30, 4242)


def _struct_decode() -> tuple[Any, ...]:
    return _HEAD.unpack_from(RECORD)


OPS: dict[str, dict[str, tuple[Callable[..., Any], tuple[Any, ...]]]] = {
    "encode record": {
        "snapcore": (keys.encode_record, ARGS),
        "reference": (_reference.encode_record, ARGS),
        "struct (head only)": (_struct_encode, ()),
    },
    "decode record": {
        "snapcore": (keys.decode_record, (RECORD,)),
        "reference": (_reference.decode_record, (RECORD,)),
        "struct (head only)": (_struct_decode, ()),
    },
    "decode info": {
        "snapcore": (keys.decode_info, (NAME, RECORD)),
        "reference": (_reference.decode_info, (NAME, RECORD)),
    },
    "parent key": {
        "snapcore": (keys.parent_key, (12, 34)),
        "reference": (_reference.parent_key, (12, 34)),
        "struct": (_PK.pack, (12, 34)),
    },
    "id key": {
        "snapcore": (keys.id_key, (12,)),
        "reference": (_reference.id_key, (12,)),
        "struct": (_ID.pack, (12,)),
    },
    "decode id": {
        "snapcore": (keys.decode_id, (b"\0" * 7 + b"\x0c",)),
        "reference": (_reference.decode_id, (b"\0" * 7 + b"\x0c",)),
        "struct": (_ID.unpack, (b"\0" * 7 + b"\x0c",)),
    },
}
CASES = [(op, impl) for op, impls in OPS.items() for impl in impls]


@pytest.mark.parametrize(("op", "impl"), CASES, ids=[f"{o}-{i}" for o, i in CASES])
def test_keys(benchmark: Any, op: str, impl: str) -> None:
    fn, args = OPS[op][impl]
    ours, ours_args = OPS[op]["snapcore"]
    benchmark.group = f"keys: {op}"
    result = fn(*args)
    if impl == "reference":
        benchmark.extra_info["correct"] = result == ours(*ours_args)
    benchmark(fn, *args)
