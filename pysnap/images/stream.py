"""Streams of blobs: verified while they are read, or sliced out of an archive.

``VerifiedReader`` checks a blob's size and digest as it streams (and tees
it into the blob store), or only its size where the consumer hashes what it
reads (a layer apply does, for its ``Layer.digest``; hashing a gzip blob
twice cost a seventh of the CPU time of decompressing it); ``Slice``
reads one member of a tar archive with pread, so several layers of one
archive can stream at once.
"""

from __future__ import annotations

import hashlib
import io
import os
from typing import Any

from ..errors import InvalidArgumentError

__all__ = ["Slice", "VerifiedReader"]

_CHUNK = 1 << 20


class VerifiedReader(io.RawIOBase):
    """A blob's bytes, checked while they stream: size, then digest at the end.

    ``expected`` is the descriptor's digest, or None where none is known
    (a legacy docker layer: ``digest`` is then what was read). Each chunk is
    also handed to ``tee`` (a copy into the blob store). A mismatch raises
    InvalidArgumentError from the ``read`` that reaches the end, and is kept
    in ``error``: a consumer that swallows or wraps it cannot hide it, as
    ``finish()`` raises it again. ``hashing=False``: the consumer hashes
    every byte it reads with the expected digest's algorithm and hands the
    result to ``finish(digest)``, which checks it; a read past the size or
    a short blob still raise here.
    """

    def __init__(
        self,
        raw: io.RawIOBase,
        size: int,
        expected: str | None,
        what: str,
        tee: Any = None,
        *,
        hashing: bool = True,
    ) -> None:
        self._raw, self._left, self._size = raw, size, size
        self._expected, self._what, self._tee = expected, what, tee
        alg = expected.partition(":")[0] if expected else "sha256"
        self._hash = hashlib.new(alg) if hashing else None
        self.digest: str | None = None
        self.error: InvalidArgumentError | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        if self.error is not None:
            raise self.error
        want = min(len(buf), self._left)
        if want == 0:
            if self._hash is not None:
                self._end(f"{self._hash.name}:{self._hash.hexdigest()}")
            return 0
        n = self._raw.readinto(memoryview(buf)[:want])
        if not n:
            self.error = InvalidArgumentError(
                f"{self._what}: truncated: {self._size - self._left} of {self._size} bytes"
            )
            raise self.error
        chunk = memoryview(buf)[:n]
        if self._hash is not None:
            self._hash.update(chunk)
        if self._tee is not None:
            self._tee.write(chunk)
        self._left -= n
        return n

    def _end(self, actual: str) -> None:
        if self.digest is not None:
            return
        if self._expected is not None and actual != self._expected:
            self.error = InvalidArgumentError(
                f"{self._what}: digest mismatch: expected {self._expected}, the content is {actual}"
            )
            raise self.error
        self.digest = actual

    def finish(self, digest: str | None = None) -> str:
        """Read what the consumer left, verify, and return the digest (or raise).

        ``digest``: of a reader made with ``hashing=False``, what the consumer
        computed; it must have read the blob to its end.
        """
        if self.error is not None:
            raise self.error
        if self._hash is None:
            if digest is None or self._left:
                self.error = InvalidArgumentError(
                    f"{self._what}: the consumer stopped {self._left} bytes before the end"
                )
                raise self.error
            self._end(digest)
        while self.read(_CHUNK):
            pass
        assert self.digest is not None
        return self.digest

    def close(self) -> None:
        self._raw.close()
        super().close()


class Slice(io.RawIOBase):
    """``size`` bytes at ``offset`` of a shared file descriptor, read with pread."""

    def __init__(self, fd: int, offset: int, size: int) -> None:
        self._fd, self._pos, self._end = fd, offset, offset + size

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        n = min(len(buf), self._end - self._pos)
        if n <= 0:
            return 0
        got = os.preadv(self._fd, [memoryview(buf)[:n]], self._pos)  # into buf: no copy
        self._pos += got
        return got
