"""Write a snapshot's layer: its own upper directory converted back (overlay's native diff).

One sorted walk of the upper in snapcore (``fsops.write_tar``), no
comparison of two trees: a small change over a big base costs the change.
The walk runs in the calling thread, compression and the writes in another
(pipeline.Consumer), and an uncompressed layer's hash in a third; the
pieces are the walk's own buffers, lent without a copy until the last
stage drops them.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import os
import uuid
from collections.abc import Iterator
from typing import BinaryIO

from snapcore import fsops

from ..errors import FailedPreconditionError, InvalidArgumentError
from . import compression
from .layer import Layer
from .pipeline import Consumer

LayerTarget = str | os.PathLike[str] | BinaryIO


@contextlib.contextmanager
def _target(out: LayerTarget) -> Iterator[BinaryIO]:
    """A path is written under a temporary name, renamed at the end, removed on error."""
    if not isinstance(out, str | os.PathLike):
        yield out
        return
    path = os.fspath(out)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:12]}"
    try:
        with open(tmp, "xb") as f:
            yield f
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def diff_upper(
    key: str, upper: str, out: LayerTarget, *, compression_: str | None, level: int | None
) -> Layer:
    """Write the layer of the directory ``upper`` to ``out``. See OverlaySnapshotter.diff."""
    media_type = compression.COMPRESSIONS.get(compression_)
    if media_type is None:
        raise InvalidArgumentError(
            f"diff {key!r}: compression {compression_!r}: use 'gzip', 'zstd' or None"
        )
    try:
        compress = compression.compressor(compression_, level)
    except (ValueError, TypeError) as e:
        raise InvalidArgumentError(f"diff {key!r}: level {level!r}: {e}") from None
    # Uncompressed: the hash (diff ID = digest) and the writes each in a thread of
    # their own, fed the same pieces: three threads on two cores balance (the
    # walk, then the writes, are the larger; 7% faster than hashing and writing
    # in one thread). Compressed: the compressor and the writes run in the
    # writer thread, both digests in the walking thread (the compressed pieces
    # come back through `done`), so the slower stage, the compressor, has a
    # core to itself.
    uncompressed = hashlib.sha256()
    written = hashlib.sha256() if compress is not None else uncompressed
    done: collections.deque[bytes] = collections.deque()  # written, not yet hashed
    size = 0
    fd = os.open(upper, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with _target(out) as f:

            def write(piece: memoryview) -> None:
                nonlocal size
                if compress is None:
                    size += len(piece)
                    f.write(piece)
                    return
                data = compress(piece)  # b"": flush
                if data:
                    size += len(data)
                    f.write(data)
                    done.append(data)

            def hash_written() -> None:
                while done:
                    written.update(done.popleft())

            stages = [Consumer(write)]
            if compress is None:
                stages.append(Consumer(uncompressed.update))

            def walked(piece: memoryview) -> None:
                if compress is not None:
                    uncompressed.update(piece)
                    hash_written()
                for stage in stages:
                    stage.put(piece)

            try:
                entries = fsops.write_tar(fd, walked)
                if compress is not None:
                    stages[0].put(memoryview(b""))  # flush the compressor
                for stage in stages:
                    stage.finish()
            except BaseException:
                for stage in stages:
                    stage.abort()
                raise
            hash_written()
            f.flush()
    except fsops.UpperError as e:
        raise FailedPreconditionError(f"diff {key!r}: {e}") from e
    finally:
        os.close(fd)
    diff_id = "sha256:" + uncompressed.hexdigest()
    digest = "sha256:" + written.hexdigest()
    return Layer(diff_id, digest, size, media_type, entries)
