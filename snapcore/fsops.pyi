"""Type stub of snapcore.fsops (the compiled module): the layer codec's per-entry loops."""

import os
from collections.abc import Callable, Iterable
from typing import Self

from typing_extensions import disjoint_base

class TarError(ValueError):
    """A stream that is not a valid tar, or an entry the codec refuses."""

    entry: str | None
    offset: int | None
    def __init__(
        self, message: str, entry: str | None = None, offset: int | None = None
    ) -> None: ...

class UpperError(ValueError):
    """An upper directory that cannot be written as a layer."""

    entry: str | None
    def __init__(self, message: str, entry: str | None = None) -> None: ...

@disjoint_base
class Applier:
    """Apply one tar stream into the directory ``root`` (an overlay upper).

    ``lowers``: the lower layers' directories, nearest first (implied parents
    take their metadata). ``feed()`` buffers of the uncompressed stream (True
    once the end-of-archive blocks were read), then ``finish()``; ``close()``
    frees everything. Raises TarError, OSError (filename: the entry); after
    an error, feed() and finish() raise ValueError.
    """

    entries: int
    def __new__(
        cls, root: str | os.PathLike[str], lowers: Iterable[str | os.PathLike[str]] = ()
    ) -> Self: ...
    def feed(self, data: bytes | bytearray | memoryview) -> bool: ...
    def finish(self) -> int: ...
    def close(self) -> None: ...
    @property
    def warnings(self) -> list[tuple[str, str, str]]: ...
    @property
    def directories(self) -> dict[str, bool]: ...

def write_tar(root_fd: int, sink: Callable[[memoryview], object]) -> int:
    """Write the directory root_fd as a layer tar in ~1 MiB pieces to sink; the entry count.

    The pieces are read-only views of the walk's buffers, each reused once nothing holds it.
    """

def syncfs(fd: int) -> None:
    """syncfs(2) on the file system holding fd."""
