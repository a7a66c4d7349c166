"""Building layer tars for the tests, with Python's tarfile (the oracle, never the hot path)."""

from __future__ import annotations

import io
import tarfile
from typing import Any

Member = tuple[tarfile.TarInfo, bytes | None]
MTIME = 1_700_000_000


def _info(name: str, type_: bytes, **kw: Any) -> tarfile.TarInfo:
    t = tarfile.TarInfo(name)
    t.type = type_
    t.mtime = kw.pop("mtime", MTIME)
    t.uid = kw.pop("uid", 0)
    t.gid = kw.pop("gid", 0)
    for k, v in kw.items():
        setattr(t, k, v)
    return t


def file(name: str, data: bytes = b"", mode: int = 0o644, **kw: Any) -> Member:
    t = _info(name, tarfile.REGTYPE, mode=mode, **kw)
    t.size = len(data)
    return t, data


def dir_(name: str, mode: int = 0o755, **kw: Any) -> Member:
    return _info(name, tarfile.DIRTYPE, mode=mode, **kw), None


def symlink(target: str, name: str, **kw: Any) -> Member:
    return _info(name, tarfile.SYMTYPE, linkname=target, mode=0o777, **kw), None


def link(target: str, name: str, **kw: Any) -> Member:
    return _info(name, tarfile.LNKTYPE, linkname=target, mode=0o644, **kw), None


def node(name: str, type_: bytes, major: int = 0, minor: int = 0, mode: int = 0o644) -> Member:
    return _info(name, type_, devmajor=major, devminor=minor, mode=mode), None


def whiteout(name: str) -> Member:
    parent, _, base = name.rpartition("/")
    return file(f"{parent}/.wh.{base}" if parent else f".wh.{base}")


def opaque(directory: str) -> Member:
    return file(f"{directory}/.wh..wh..opq")


def tar(*members: Member, format: int = tarfile.PAX_FORMAT) -> bytes:
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode="w", format=format) as t:
        for info, data in members:
            t.addfile(info, io.BytesIO(data) if data is not None else None)
    return b.getvalue()
