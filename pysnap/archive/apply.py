"""Apply an OCI layer into an ACTIVE snapshot's upper directory (containerd's overlay apply).

The snapshotter checks the key; this module does the rest: the mounted-upper
check, the lock and the mark (guard.py), the pipeline (a thread reads and
decompresses, another hashes, the calling thread runs snapcore's compiled
apply loop on each piece), the diff-ID check, and the clean-up after a failure: an
upper that was empty before the call is emptied again, one that was not is
reported as partly applied.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import logging
import os
import stat
from collections.abc import Callable, Iterator
from typing import BinaryIO

from snapcore import fsops

from .. import mountinfo
from ..errors import FailedPreconditionError, InvalidArgumentError
from ..fsutil import remove_tree
from . import compression, guard, implied
from .layer import Layer
from .pipeline import BATCH, Consumer, Producer

log = logging.getLogger(__name__)

LayerSource = str | os.PathLike[str] | BinaryIO
_OPAQUE = "trusted.overlay.opaque"
_KERNEL_REFUSED_HINT = (
    "the kernel refused an overlay whiteout (a character device 0/0) or a trusted.* xattr: "
    "this happens in a user namespace or an unprivileged container (Docker in Docker); "
    "apply as real root, or in a container with CAP_MKNOD and CAP_SYS_ADMIN"
)


@contextlib.contextmanager
def _opened(layer: LayerSource) -> Iterator[BinaryIO]:
    if isinstance(layer, str | os.PathLike):
        with open(layer, "rb", buffering=0) as f:
            yield f
    else:
        yield layer


def _is_empty(upper: str) -> bool:
    with os.scandir(upper) as it:
        if next(it, None) is not None:
            return False
    try:
        os.getxattr(upper, _OPAQUE)
        return False
    except OSError:
        return True


def _empty(upper: str) -> None:
    """Remove everything an apply put in ``upper`` (which was empty before it)."""
    for name in os.listdir(upper):
        remove_tree(os.path.join(upper, name))
    with contextlib.suppress(OSError):
        os.removexattr(upper, _OPAQUE)


def apply_to_snapshot(
    key: str,
    snapshot_dir: str,
    lowers: list[str],
    layer: LayerSource,
    *,
    diff_id: str | None,
    sync: bool,
    force: bool,
    still_active: Callable[[], None],
) -> Layer:
    """Apply ``layer`` into ``snapshot_dir/fs`` (lowers nearest first): OverlaySnapshotter.apply.

    ``still_active`` raises unless the snapshot is still the ACTIVE one read
    before: it runs once the lock is held, so a commit or remove that came
    in between is seen, and a committed layer is never written.
    """
    upper = f"{snapshot_dir}/fs"
    if not force:
        users = mountinfo.users_of(upper)
        if users:
            raise FailedPreconditionError(
                f"apply {key!r}: the upper directory is mounted at {users[0].mount_point!r}; "
                "unmount it first, or pass force=True (overlayfs does not expect changes "
                "to an upper directory while it is mounted)"
            )
    with guard.exclusive(snapshot_dir, "apply", key):
        still_active()
        guard.refuse_interrupted(snapshot_dir, "apply", key)
        was_empty = _is_empty(upper)
        with guard.marked(snapshot_dir):
            try:
                # Without lowers, the implied parents get their metadata at commit(parent=).
                directories: dict[str, bool] | None = None if lowers else {}
                result = apply_stream(
                    upper,
                    lowers,
                    layer,
                    diff_id=diff_id,
                    what=f"apply {key!r}",
                    directories=directories,
                )
                if directories is not None:
                    implied.record(snapshot_dir, directories)
                if sync:
                    fd = os.open(upper, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                    try:
                        fsops.syncfs(fd)
                    finally:
                        os.close(fd)
            except BaseException as e:
                if was_empty:
                    _empty(upper)
                    implied.discard(snapshot_dir)
                    e.add_note(f"apply {key!r}: the upper directory was emptied again")
                else:
                    e.add_note(f"apply {key!r}: the snapshot is partly applied")
                raise
    return result


def _may_stall(f: BinaryIO) -> bool:
    """Whether reads of ``f`` may wait for good: a pipe, a socket, a device (not a
    regular file, nor bytes in memory)."""
    if isinstance(f, io.BytesIO):
        return False
    try:
        return not stat.S_ISREG(os.fstat(f.fileno()).st_mode)
    except (OSError, AttributeError, ValueError):  # io.UnsupportedOperation is both
        return True


def apply_stream(
    upper: str,
    lowers: list[str],
    layer: LayerSource,
    *,
    diff_id: str | None = None,
    what: str = "apply",
    directories: dict[str, bool] | None = None,
) -> Layer:
    """Apply a layer blob into the directory ``upper``; the Layer it was.

    ``what`` starts error messages (the operation and the key).
    ``directories``, if given, gets ``{path: implied}`` of the directories
    the layer made (implied: only as a parent of other entries).

    Raises InvalidArgumentError (a refused stream or entry, a diff ID that
    does not match), OSError (from the kernel; filename is the entry).
    """
    applier = fsops.Applier(upper, lowers)
    digests: _Digests | None = None
    try:
        with _opened(layer) as f:
            head = f.read(8) or b""
            media_type = compression.detect(head)
            digests = _Digests(compressed=media_type != compression.MEDIA_TAR)

            def pieces() -> Iterator[bytes]:
                for piece in compression.decoded(f, head, media_type, digests.blob):
                    digests.tar(piece)
                    yield piece

            ended = False
            with Producer(pieces(), stalls=_may_stall(f)) as stream:
                for piece in stream:
                    if not ended:
                        ended = applier.feed(piece)
            entries = applier.finish()
            if directories is not None:
                directories.update(applier.directories)
        digest, size, actual = digests.finish()
        for entry, xattr, reason in applier.warnings:
            log.warning("layer entry %r: xattr %s not applied: %s", entry, xattr, reason)
    except fsops.TarError as e:
        raise InvalidArgumentError(f"{what}: invalid layer: {e}") from e
    except InvalidArgumentError as e:  # from the decompressor, in the reader thread
        raise InvalidArgumentError(f"{what}: {e}") from None
    except OSError as e:
        if e.errno in (errno.EPERM, errno.EOPNOTSUPP) and _kernel_refused(e):
            e.add_note(_KERNEL_REFUSED_HINT)
        raise
    finally:
        applier.close()
        if digests is not None:
            digests.abort()
    if diff_id is not None and diff_id != actual:
        raise InvalidArgumentError(
            f"{what}: the layer's diff ID is {actual}, not the expected {diff_id}"
        )
    return Layer(actual, digest, size, media_type, entries)


class _Digests:
    """sha256 of the blob and of the tar it decodes to, hashed in a thread of their own.

    ``blob`` and ``tar`` are called in the reader thread, in stream order.
    """

    def __init__(self, *, compressed: bool) -> None:
        self._blob = hashlib.sha256()
        self._tar = hashlib.sha256() if compressed else None
        self._size = 0
        self._batch: list[tuple[bool, bytes]] = []
        self._batched = 0
        self._hashing = Consumer(self._hash)

    def _hash(self, batch: list[tuple[bool, bytes]]) -> None:
        for of_tar, data in batch:
            (self._tar if of_tar and self._tar is not None else self._blob).update(data)

    def _add(self, of_tar: bool, data: bytes) -> None:
        self._batch.append((of_tar, data))
        self._batched += len(data)
        if self._batched >= BATCH:
            self._hashing.put(self._batch, self._batched)
            self._batch, self._batched = [], 0

    def blob(self, data: bytes) -> None:
        self._size += len(data)
        self._add(False, data)

    def tar(self, piece: bytes) -> None:
        if self._tar is not None:  # of an uncompressed blob, the blob's digest
            self._add(True, piece)

    def finish(self) -> tuple[str, int, str]:
        """(the blob's digest, its size, the diff ID), once everything is hashed."""
        self._hashing.put(self._batch, self._batched)
        self._hashing.finish()
        digest = "sha256:" + self._blob.hexdigest()
        diff_id = digest if self._tar is None else "sha256:" + self._tar.hexdigest()
        return digest, self._size, diff_id

    def abort(self) -> None:
        """Stop the hashing thread (after finish(), it has already ended)."""
        self._hashing.abort()


def _kernel_refused(e: OSError) -> bool:
    notes = " ".join(getattr(e, "__notes__", ()))
    return "whiteout" in notes or "opaque" in notes
