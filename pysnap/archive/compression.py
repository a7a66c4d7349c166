"""Layer compression: detection by magic, and the streams apply and diff use.

gzip goes through python-isal (ISA-L: measured here about 2x zlib's
decompression and 15x its level-6 compression at a similar size; zlib-ng
was in between), the stdlib's zlib when isal is not installed; zstd through
``zstandard``. Both release the GIL, so they run beside the compiled apply
loop on another core.

Readers decode to the end of the blob: every gzip member (eStargz layers are
many), every zstd frame (skippable frames are skipped by libzstd). zstd
frames whose window exceeds 32 MiB are refused (InvalidArgumentError), so
memory stays flat whatever the layer (``zstd --long=31`` layers would need
2 GiB).
"""

from __future__ import annotations

import types
import zlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:
    from typing_extensions import Buffer

from ..errors import InvalidArgumentError

_gzip_lib: types.ModuleType
try:  # the layers extra
    from isal import isal_zlib as _gzip_lib

    _GZIP_LEVELS = range(4)
except ImportError:  # pragma: no cover - without the extra
    _gzip_lib = zlib
    _GZIP_LEVELS = range(10)
_LEVELS = {"gzip": _GZIP_LEVELS, "zstd": range(1, 23)}

MEDIA_TAR = "application/vnd.oci.image.layer.v1.tar"
MEDIA_GZIP = MEDIA_TAR + "+gzip"
MEDIA_ZSTD = MEDIA_TAR + "+zstd"
CHUNK = 1 << 20
ZSTD_MAX_WINDOW = 32 << 20
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

COMPRESSIONS: dict[str | None, str] = {None: MEDIA_TAR, "gzip": MEDIA_GZIP, "zstd": MEDIA_ZSTD}


def _zstd() -> Any:
    try:
        import zstandard
    except ImportError:  # pragma: no cover - without the extra
        raise InvalidArgumentError(
            "zstd layers need the zstandard package (pip install 'pysnap[layers]')"
        ) from None
    return zstandard


def detect(head: bytes) -> str:
    """The OCI media type of a blob that starts with ``head`` (at least 6 bytes if it has them)."""
    if head.startswith(_GZIP_MAGIC):
        return MEDIA_GZIP
    # a zstd frame, or a skippable frame (magic 0x184D2A5?) before one
    if head.startswith(_ZSTD_MAGIC) or (
        len(head) >= 4 and head[0] & 0xF0 == 0x50 and head[1:4] == b"\x2a\x4d\x18"
    ):
        return MEDIA_ZSTD
    if head.startswith(b"BZh") or head.startswith(b"\xfd7zXZ\x00"):
        raise InvalidArgumentError("bzip2 and xz layers are not OCI layer media types")
    return MEDIA_TAR


# Compressed bytes per read: the output (about 3x) is still in the cache when
# the hashing thread and the apply read it (1 MiB reads decoded 10-25% slower).
_COMPRESSED_READ = 64 << 10


def decoded(
    f: BinaryIO, head: bytes, media_type: str, seen: Callable[[bytes], object]
) -> Iterator[bytes]:
    """The uncompressed bytes of the blob ``head`` + ``f``, in pieces of at most about CHUNK.

    ``seen`` is called with each piece of the blob as it is read (to hash it).
    """
    raw = _Raw(f, head, seen)
    if media_type == MEDIA_TAR:
        while data := raw.read(CHUNK):
            yield data
    elif media_type == MEDIA_GZIP:
        yield from _gunzip(raw)
    else:
        yield from _unzstd(raw)


class _Raw:
    """The blob's bytes, each read handed to ``seen``."""

    def __init__(self, f: BinaryIO, head: bytes, seen: Callable[[bytes], object]) -> None:
        self._f = f
        self._head = head
        self._seen = seen

    def read(self, n: int = CHUNK) -> bytes:
        if self._head:
            data, self._head = self._head[:n], self._head[n:]
        else:
            data = self._f.read(n) or b""
        if data:
            self._seen(data)
        return data


def _gunzip(raw: _Raw) -> Iterator[bytes]:
    d = _gzip_lib.decompressobj(31)
    pending = b""
    member = False  # inside a member
    while True:
        if not pending:
            pending = raw.read(_COMPRESSED_READ)
            if not pending:
                break
        if not member:
            if not pending.lstrip(b"\0"):  # zero padding after the last member
                pending = b""
                continue
            if not pending.startswith(_GZIP_MAGIC[: len(pending)]):
                raise InvalidArgumentError("gzip layer: garbage after a gzip member")
            member = True
        try:
            out = d.decompress(pending, CHUNK)
        except (zlib.error, _gzip_lib.error, OSError) as e:  # isal's IsalError is its own
            raise InvalidArgumentError(f"gzip layer: {e}") from None
        pending = d.unconsumed_tail
        if out:
            yield out
        if d.eof:
            pending = d.unused_data + pending
            d = _gzip_lib.decompressobj(31)
            member = False
    if member:
        raise InvalidArgumentError("gzip layer: truncated (the stream ends inside a member)")


def _unzstd(raw: _Raw) -> Iterator[bytes]:
    zstandard = _zstd()
    dctx = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW)
    reader = dctx.stream_reader(raw, read_size=2 * _COMPRESSED_READ, read_across_frames=True)
    try:
        while True:
            try:
                out = reader.read(CHUNK // 4)
            except zstandard.ZstdError as e:
                hint = " (windows over 32 MiB are refused)" if "memory" in str(e) else ""
                raise InvalidArgumentError(f"zstd layer: {e}{hint}") from None
            if not out:
                break
            yield out
    finally:
        reader.close()


def compressor(compression: str | None, level: int | None) -> Callable[[Buffer], bytes] | None:
    """A function compressing successive pieces; called with b"" last, to flush. None: none.

    gzip levels are ISA-L's 0-3 (default 2; zlib's 0-9 without isal), zstd's 1-22 (3).
    Raises ValueError for a level out of range, or one given without compression.
    """
    if level is not None:
        levels = _LEVELS.get(compression or "")
        if levels is None or type(level) is not int or level not in levels:
            takes = "no level" if levels is None else f"levels {levels[0]} to {levels[-1]}"
            raise ValueError(f"{compression or 'no compression'} takes {takes}")
    if compression is None:
        return None
    if compression == "gzip":
        c = _gzip_lib.compressobj(2 if level is None else level, zlib.DEFLATED, 31)
    elif compression == "zstd":
        c = _zstd().ZstdCompressor(level=3 if level is None else level).compressobj()
    else:
        raise InvalidArgumentError(
            f"compression {compression!r}: use 'gzip', 'zstd' or None (uncompressed)"
        )

    def step(data: Buffer) -> bytes:
        out: bytes = c.compress(data) if data else c.flush()
        return out

    return step
