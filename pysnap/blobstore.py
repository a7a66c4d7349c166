"""Layer blobs kept under a snapshotter's root, so an export can reuse them.

Layout under the root::

    blobs/sha256/<hex>            a layer blob as unpacked (verified by digest)
    blobs/ingest/<owner>-<rand>   a copy being written (owner: pysnap.owner token)

A blob is kept while some snapshot's ``pysnap.io/blob.digest`` label names it.
The writer labels its snapshot before the blob takes its place (the prepare
of an ``extract-*`` key carries the label), and ``OverlaySnapshotter.cleanup``
lists and moves unreferenced blobs aside while it holds the write
transaction, so a blob is never reaped between its rename and its commit.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable, Iterable

from . import owner
from .types import Info

__all__ = [
    "BLOB_DIGEST_LABEL",
    "BLOB_MEDIA_TYPE_LABEL",
    "BLOB_SIZE_LABEL",
    "Ingest",
    "blob_path",
    "reap",
    "referenced",
]

BLOB_DIGEST_LABEL = "pysnap.io/blob.digest"
BLOB_MEDIA_TYPE_LABEL = "pysnap.io/blob.media-type"
BLOB_SIZE_LABEL = "pysnap.io/blob.size"


def _blobs(root: str) -> str:
    return os.path.join(root, "blobs")


def blob_path(root: str, digest: str) -> str:
    """Where the blob ``digest`` (``alg:hex``, already validated) lives under ``root``."""
    alg, _, hex_ = digest.partition(":")
    return os.path.join(_blobs(root), alg, hex_)


class Ingest:
    """A blob being written: ``write()`` the bytes, then ``commit(digest)`` or ``abort()``.

    The caller verifies the digest; commit only moves the file into place
    (a blob already there has the same bytes, and is replaced atomically).
    The writes are unbuffered: every byte is in the kernel when the write
    returns, so the durable apply's syncfs of the root, which runs after the
    blob's last read and before the commit, flushes the copy too (a buffered
    file's last block would reach the kernel only at close, after it).
    """

    def __init__(self, root: str) -> None:
        self._root = root
        ingest = os.path.join(_blobs(root), "ingest")
        os.makedirs(ingest, mode=0o700, exist_ok=True)
        name = f"{owner.current()}-{secrets.token_hex(6)}"
        self.path = os.path.join(ingest, name)
        # closed by commit() or abort()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    def commit(self, digest: str) -> str:
        """Move the copy into place as ``digest``; its path."""
        os.close(self._fd)
        final = blob_path(self._root, digest)
        os.makedirs(os.path.dirname(final), mode=0o700, exist_ok=True)
        os.rename(self.path, final)
        return final

    def abort(self) -> None:
        os.close(self._fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def referenced(infos: Iterable[Info]) -> set[str]:
    """The blob digests the labels of ``infos`` name."""
    return {d for i in infos if (d := i.labels.get(BLOB_DIGEST_LABEL))}


def reap(
    root: str, infos: Callable[[], Iterable[Info]], *, dry_run: bool = False
) -> list[tuple[str, str]]:
    """Move aside every blob no label of ``infos()`` names, and dead owners' copies.

    ``infos`` (every snapshot) is read only if there is a blob store. Call this
    while holding the metadata write transaction (see the module docstring);
    delete the returned paths after releasing it. Returns (the path as found,
    the path to delete) pairs; ``dry_run`` moves nothing.
    """
    blobs = _blobs(root)
    doomed: list[tuple[str, str]] = []

    def doom(path: str) -> None:
        if dry_run:
            doomed.append((path, path))
            return
        aside = os.path.join(blobs, f"rm-{secrets.token_hex(8)}")
        with contextlib.suppress(FileNotFoundError):  # gone meanwhile
            os.rename(path, aside)
            doomed.append((path, aside))

    try:
        names = os.listdir(blobs)
    except FileNotFoundError:
        return doomed
    keep = referenced(infos())
    for name in sorted(names):
        path = os.path.join(blobs, name)
        if name.startswith("rm-"):  # a reap that did not finish
            doomed.append((path, path))
        elif name == "ingest":
            for copy in sorted(os.listdir(path)):
                who = owner.Owner.parse(copy.rpartition("-")[0])
                if who is None or not who.alive():
                    doom(os.path.join(path, copy))
        else:
            for hex_ in sorted(os.listdir(path)):
                if f"{name}:{hex_}" not in keep:
                    doom(os.path.join(path, hex_))
    return doomed
