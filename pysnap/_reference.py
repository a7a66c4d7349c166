"""Pure-Python twins of snapcore: the test oracle and the benchmark baseline.

Each function here computes exactly what its compiled counterpart computes,
the plain way (os.scandir, struct), so tests can compare the two and
benchmarks can show what the compiled core gains.
"""


# ---- key and record codecs: twins of snapcore.keys ----------------------------

import struct as _struct
from collections.abc import Iterable as _Iterable

from .types import Info as _Info
from .types import Kind as _Kind
from .types import Usage as _Usage

RECORD_VERSION = 1
_BE64 = _struct.Struct(">Q")
_BE32 = _struct.Struct(">I")
_PARENT = _struct.Struct(">QQ")
# version, kind, id, created, updated, size, inodes, parent length
_HEAD = _struct.Struct(">BBQQQQQI")


class RecordError(ValueError):
    """A stored record or key is truncated, oversized or corrupt."""


def id_key(id: int) -> bytes:
    """be64(id)."""
    return _BE64.pack(id)


def parent_key(parent: int, child: int) -> bytes:
    """be64(parent) + be64(child)."""
    return _PARENT.pack(parent, child)


def decode_id(data: bytes) -> int:
    if len(data) != 8:
        raise RecordError(f"corrupt id key: {len(data)} bytes, expected 8")
    return int(_BE64.unpack(data)[0])


def decode_parent_key(data: bytes) -> tuple[int, int]:
    if len(data) != 16:
        raise RecordError(f"corrupt parent key: {len(data)} bytes, expected 16")
    parent, child = _PARENT.unpack(data)
    return parent, child


def _pack_str(s: str) -> bytes:
    b = s.encode()
    if len(b) > 0xFFFFFFFF:
        raise ValueError(f"string too long: {len(b)} bytes")
    return _BE32.pack(len(b)) + b


def encode_record(
    id: int,
    kind: int,
    parent: str,
    labels: dict[str, str],
    created_ns: int,
    updated_ns: int,
    size: int = 0,
    inodes: int = 0,
) -> bytes:
    """The record layout of snapcore.keys, with struct."""
    if not 1 <= kind <= 3:
        raise ValueError(f"invalid snapshot kind {kind}")
    for n in (id, created_ns, updated_ns, size, inodes):
        if not 0 <= n <= 0xFFFFFFFFFFFFFFFF:
            raise OverflowError(f"{n} does not fit in 64 bits")
    parts = [
        _HEAD.pack(RECORD_VERSION, kind, id, created_ns, updated_ns, size, inodes, 0)[:-4],
        _pack_str(parent),
        _BE32.pack(len(labels)),
    ]
    for k, v in labels.items():
        parts.append(_pack_str(k))
        parts.append(_pack_str(v))
    return b"".join(parts)


def _bad(why: str) -> RecordError:
    return RecordError(f"corrupt snapshot record: {why}")


def _take_str(data: bytes, off: int, what: str) -> tuple[str, int]:
    if len(data) - off < 4:
        return _fail(f"truncated {what}")
    (n,) = _BE32.unpack_from(data, off)
    off += 4
    if n > len(data) - off:
        return _fail(f"{what} runs past the end")
    try:
        return data[off : off + n].decode(), off + n
    except UnicodeDecodeError:
        raise _bad(f"{what} is not valid UTF-8") from None


def _fail(why: str) -> tuple[str, int]:
    raise _bad(why)


def decode_record(data: bytes) -> tuple[int, int, str, dict[str, str], int, int, int, int]:
    """``(id, kind, parent, labels, created_ns, updated_ns, size, inodes)``."""
    if len(data) < _HEAD.size + 4:
        raise _bad(f"truncated ({len(data)} bytes)")
    version, kind, id, created, updated, size, inodes, _ = _HEAD.unpack_from(data)
    if version != RECORD_VERSION:
        raise _bad(f"unknown format version {version}")
    if not 1 <= kind <= 3:
        raise _bad(f"invalid kind {kind}")
    parent, off = _take_str(data, _HEAD.size - 4, "parent name")
    if len(data) - off < 4:
        raise _bad("parent name runs past the end")
    (count,) = _BE32.unpack_from(data, off)
    off += 4
    labels: dict[str, str] = {}
    for _ in range(count):
        k, off = _take_str(data, off, "label key")
        v, off = _take_str(data, off, "label value")
        labels[k] = v
    if off != len(data):
        raise _bad(f"{len(data) - off} trailing bytes")
    if len(labels) != count:
        raise _bad("duplicate label key")
    return id, kind, parent, labels, created, updated, size, inodes


def decode_info(name: str, data: bytes) -> tuple[int, _Info, _Usage]:
    """``(id, Info, Usage)`` of a record stored under ``name``."""
    id, kind, parent, labels, created, updated, size, inodes = decode_record(data)
    info = tuple.__new__(_Info, (_Kind(kind), name, parent, labels, created, updated))
    return id, info, tuple.__new__(_Usage, (size, inodes))


def decode_infos(items: _Iterable[tuple[bytes, bytes]]) -> list[_Info]:
    """A list of Info from ``(name bytes, record bytes)`` pairs."""
    out = []
    for k, v in items:
        try:
            name = k.decode()
        except UnicodeDecodeError:
            raise _bad("snapshot name is not valid UTF-8") from None
        out.append(decode_info(name, v)[1])
    return out
