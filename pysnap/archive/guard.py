"""One key's apply excludes its commit and remove; a killed apply leaves a mark.

The directory ``snapshots/<id>`` itself is locked with ``flock(LOCK_NB)``
(no file to create, so remove works on a full file system) by apply (exclusive),
commit, remove and diff (shared: they do not exclude each other) of the snapshot:
across threads and processes, whichever comes second is refused at once
(FailedPreconditionError), never made to wait behind a long apply.
``snapshots/<id>/applying`` exists while an apply runs; one
that is still there when no apply holds the lock was left by a killed
apply: commit and apply then refuse the snapshot until it is removed. The
mark is made durable (the file and its directory fsynced) before the apply
writes anything, so a power loss cannot keep applied files and lose the mark.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator

from ..errors import FailedPreconditionError

MARK = "applying"


@contextlib.contextmanager
def exclusive(snapshot_dir: str, op: str, key: str, *, shared: bool = False) -> Iterator[None]:
    """Hold the snapshot's lock for ``op`` (apply: not shared); FailedPreconditionError if busy."""
    try:
        fd = os.open(snapshot_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:  # the snapshot directory is gone: the record decides
        yield
        return
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            running = "an apply" if shared else "an apply, commit, remove or diff"
            raise FailedPreconditionError(
                f"{op} {key!r}: the snapshot is busy ({running} of it is running)"
            ) from None
        yield
    finally:
        os.close(fd)


def refuse_interrupted(snapshot_dir: str, op: str, key: str) -> None:
    """FailedPreconditionError when a killed apply left its mark (call with the lock held)."""
    if os.path.lexists(f"{snapshot_dir}/{MARK}"):
        raise FailedPreconditionError(
            f"{op} {key!r}: an apply of this snapshot was interrupted and left it partly "
            "applied; remove the snapshot"
        )


@contextlib.contextmanager
def marked(snapshot_dir: str) -> Iterator[None]:
    """The apply mark, present while the block runs (left behind only if the process dies)."""
    path = f"{snapshot_dir}/{MARK}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.fsync(fd)
        # a new file's name is durable once its directory is fsynced
        dfd = os.open(snapshot_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except BaseException:
        os.unlink(path)
        raise
    finally:
        os.close(fd)
    try:
        yield
    finally:
        os.unlink(path)
