"""Pure-Python twins of snapcore: the test oracle and the benchmark baseline.

Each function here computes exactly what its compiled counterpart computes,
the plain way (os.scandir, struct), so tests can compare the two and
benchmarks can show what the compiled core gains.
"""


# ---- key and record codecs: twins of snapcore.keys ----------------------------

import errno as _errno
import os as _os
import stat as _stat
import struct as _struct
from collections.abc import Callable as _Callable
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

_MAX_TIME = 2**63 - 1  # times are int64 Timestamps on the wire


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
    if max(created_ns, updated_ns) > _MAX_TIME:
        raise OverflowError("a time past 2**63 - 1 nanoseconds (year 2262)")
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
        raise _bad(f"truncated {what}")
    (n,) = _BE32.unpack_from(data, off)
    off += 4
    if n > len(data) - off:
        raise _bad(f"{what} runs past the end")
    try:
        return data[off : off + n].decode(), off + n
    except UnicodeDecodeError:
        raise _bad(f"{what} is not valid UTF-8") from None


def _read_head(data: bytes) -> tuple[int, int, int, int, int, int, int]:
    """``(kind, id, created, updated, size, inodes, parent length)``, checked."""
    if len(data) < _HEAD.size + 4:
        raise _bad(f"truncated ({len(data)} bytes)")
    version, *head = _HEAD.unpack_from(data)
    if version != RECORD_VERSION:
        raise _bad(f"unknown format version {version}")
    if not 1 <= head[0] <= 3:
        raise _bad(f"invalid kind {head[0]}")
    if max(head[2], head[3]) > _MAX_TIME:
        raise _bad("a time past 2**63 - 1 nanoseconds")
    return tuple(head)


def decode_record(data: bytes) -> tuple[int, int, str, dict[str, str], int, int, int, int]:
    """``(id, kind, parent, labels, created_ns, updated_ns, size, inodes)``."""
    kind, id, created, updated, size, inodes, _ = _read_head(data)
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


def decode_link(data: bytes) -> tuple[int, bytes]:
    """``(id, parent name as UTF-8 bytes)`` from the head of a record."""
    _, id, _, _, _, _, plen = _read_head(data)
    if plen > len(data) - _HEAD.size - 4:
        raise _bad("parent name runs past the end")
    return id, data[_HEAD.size : _HEAD.size + plen]


def decode_info(name: str, data: bytes) -> tuple[int, _Info, _Usage]:
    """``(id, Info, Usage)`` of a record stored under ``name``."""
    id, kind, parent, labels, created, updated, size, inodes = decode_record(data)
    info = tuple.__new__(_Info, (_Kind(kind), name, parent, labels, created, updated))
    return id, info, tuple.__new__(_Usage, (size, inodes))


def decode_stat(name: str, data: bytes) -> _Info:
    """The Info alone of a record stored under ``name``."""
    return decode_info(name, data)[1]


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


# ---- disk usage: twin of snapcore.du ------------------------------------------

_OPEN_DIR = _os.O_RDONLY | _os.O_DIRECTORY | _os.O_NOFOLLOW | _os.O_CLOEXEC
_VANISHED = (_errno.ENOENT, _errno.ESTALE)


class _DuDir:
    """A directory with subdirectories still to walk (the parent chain gives paths)."""

    __slots__ = ("fd", "name", "parent", "subdirs")

    def __init__(self, fd: int, name: str | bytes, parent: "_DuDir | None") -> None:
        self.fd = fd
        self.name = name
        self.parent = parent
        self.subdirs: list[str] = []

    def path(self, name: str | None = None) -> str | bytes:
        """Full path of this directory (or of `name` in it), typed like the root."""
        parts: list[str | bytes] = [] if name is None else [name]
        d: _DuDir | None = self
        while d is not None:
            parts.append(d.name)
            d = d.parent
        parts.reverse()
        if isinstance(parts[0], bytes):
            return _os.path.join(parts[0], *(_os.fsencode(p) for p in parts[1:]))
        return _os.path.join(parts[0], *(_os.fsdecode(p) for p in parts[1:]))


def disk_usage(
    *roots: str | bytes | _os.PathLike[str] | _os.PathLike[bytes],
    apparent: bool = False,
    progress: _Callable[[int, int], object] | None = None,
) -> tuple[int, int]:
    """(size, inodes) of the trees at roots, each (st_dev, st_ino) once: snapcore.du's twin.

    The plain way: os.scandir on directory fds, DirEntry.stat (fstatat), a
    Python set of every inode, an explicit stack (any depth). Entries that
    vanish (ENOENT, ESTALE) are skipped; other errors raise OSError with the
    entry's full path; a missing root raises FileNotFoundError.
    """
    seen: set[tuple[int, int]] = set()
    size = inodes = looked = 0
    paths = [_os.fspath(r) for r in roots]
    for root, st in [(p, _os.lstat(p)) for p in paths]:
        key = (st.st_dev, st.st_ino)
        if key in seen:
            continue
        seen.add(key)
        inodes += 1
        size += st.st_size if apparent else st.st_blocks * 512
        if not _stat.S_ISDIR(st.st_mode):
            continue
        top = _DuDir(_os.open(root, _OPEN_DIR), root, None)
        stack = [top]
        todo: _DuDir | None = top
        try:
            size, inodes, looked = _du_walk(
                stack, todo, seen, apparent, progress, size, inodes, looked
            )
        finally:
            for d in stack:
                _os.close(d.fd)
    return size, inodes


def _du_walk(
    stack: list[_DuDir],
    todo: _DuDir | None,
    seen: set[tuple[int, int]],
    apparent: bool,
    progress: _Callable[[int, int], object] | None,
    size: int,
    inodes: int,
    looked: int,
) -> tuple[int, int, int]:
    """The walk of one root directory; closes the fds of the frames it pops."""
    while True:
        if todo is not None:
            d = todo
            todo = None
            with _os.scandir(d.fd) as it:
                for e in it:
                    try:
                        est = e.stat(follow_symlinks=False)
                    except OSError as err:
                        if err.errno in _VANISHED:
                            continue
                        raise OSError(err.errno, err.strerror, d.path(e.name)) from None
                    looked += 1
                    if progress is not None and looked % 4096 == 0:
                        progress(inodes, size)
                    key = (est.st_dev, est.st_ino)
                    if key in seen:
                        continue
                    seen.add(key)
                    inodes += 1
                    size += est.st_size if apparent else est.st_blocks * 512
                    if _stat.S_ISDIR(est.st_mode):
                        d.subdirs.append(e.name)
        if not stack:
            return size, inodes, looked
        d = stack[-1]
        # Off the stack before closing: an interrupt raised as os.close()
        # returns must not let disk_usage's finally close the fd again.
        if not d.subdirs:
            stack.pop()
            _os.close(d.fd)
            continue
        name = d.subdirs.pop()
        try:
            fd = _os.open(name, _OPEN_DIR, dir_fd=d.fd)
        except OSError as err:
            if err.errno in _VANISHED:
                continue
            raise OSError(err.errno, err.strerror, d.path(name)) from None
        todo = _DuDir(fd, name, d)
        stack.append(todo)
        if not d.subdirs:  # that was the last: a chain keeps two fds open, not one a level
            del stack[-2]
            _os.close(d.fd)
