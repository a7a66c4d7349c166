"""The ``snapshots/`` tree of an OverlaySnapshotter root: paths, creation, recovery, orphans.

``snapshots/<id>/fs`` is a snapshot's upper directory (0755), ``work`` the
overlay workdir of an ACTIVE one (0711). A create makes them in a temporary
``new-*`` directory and renames it into place; a remove renames to ``rm-*``.
The callers hold the write transaction that records the change (see
pysnap.overlay), so nothing here races a cleanup().

Durability (issue 14): a durable call syncs its LMDB transaction only (two
flushes, as a bolt commit). A new snapshot's directories are empty, so they
are not synced: recovery remakes them instead. When a snapshot is next used
(mounts, a prepare or view on it, commit), directories a power loss lost are
recreated exactly as prepare made them for an ACTIVE or VIEW record, or for a
COMMITTED one whose stored usage says it was empty; any other COMMITTED record
without its directory is CorruptStoreError, never an empty layer. Nothing
scans the records at open.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
import uuid
from collections.abc import Sequence

from . import storage
from .errors import CorruptStoreError
from .fsutil import remove_tree
from .metastore import Txn
from .types import Kind

log = logging.getLogger(__name__)

# The names pysnap makes under snapshots/: an id (ASCII, no leading zero: str.isdigit
# would take Arabic-Indic and superscript digits), a create's temporary directory, a remove's.
_ID_NAME = re.compile(r"[1-9][0-9]*")
_OWN_NAME = re.compile(r"[1-9][0-9]*|new-.*|rm-.*", re.DOTALL)

#: Characters of lowerdir values kept before they are emptied.
_LOWERDIRS_MAX = 8 << 20


class SnapshotDirs:
    """The directories under ``snapshots`` (the path of a root's ``snapshots/``)."""

    def __init__(self, snapshots: str) -> None:
        self.path = snapshots
        self._lowerdirs: dict[int, str] = {}  # top parent id -> lowerdir value
        self._lowerdir_chars = 0

    def dir(self, sid: int) -> str:
        return f"{self.path}/{sid}"

    def upper(self, sid: int) -> str:
        return f"{self.path}/{sid}/fs"

    def present(self, sid: int, kind: Kind) -> bool:
        d = self.dir(sid)
        return os.path.isdir(f"{d}/fs") and (kind == Kind.VIEW or os.path.isdir(f"{d}/work"))

    def ids(self) -> list[str]:
        """The names of the id directories, sorted by id. FileNotFoundError without the tree."""
        return sorted((n for n in os.listdir(self.path) if _ID_NAME.fullmatch(n)), key=int)

    def lowerdir(self, parents: tuple[int, ...]) -> str:
        """The upper directories of ``parents`` joined with ":", kept by the top id.

        Never stale: a committed snapshot's parents never change and its id is
        never reused. A chain one layer deeper than a kept one costs one
        concatenation, not one path per layer (prepare on a 1,000-deep chain).
        """
        top = parents[0]
        kept = self._lowerdirs.get(top)
        if kept is not None:
            return kept
        below = self._lowerdirs.get(parents[1]) if len(parents) > 1 else ""
        if below is None:
            kept = ":".join([f"{self.path}/{p}/fs" for p in parents])
        else:
            kept = f"{self.path}/{top}/fs" + (":" + below if below else "")
        self._lowerdir_chars += len(kept)
        if self._lowerdir_chars > _LOWERDIRS_MAX:
            self._lowerdirs.clear()
            self._lowerdir_chars = len(kept)
        self._lowerdirs[top] = kept
        return kept

    def make(
        self, sid: int, kind: Kind, owner: os.stat_result | None, undo: contextlib.ExitStack
    ) -> str:
        """``snapshots/<sid>`` made in a temporary directory, then renamed into place."""
        tmp = tempfile.mkdtemp(prefix="new-", dir=self.path)
        undo.callback(remove_tree, tmp)
        _fill(tmp, kind, owner)
        path = self.dir(sid)
        remove_tree(path)  # leftover of a create that crashed before its commit
        os.rename(tmp, path)
        return path

    def owner(self, tx: Txn, parent: str, parent_ids: Sequence[int]) -> os.stat_result | None:
        """The stat of the immediate parent's fs (a new fs is owned alike); restored if lost."""
        if not parent_ids:
            return None
        try:
            return os.stat(self.upper(parent_ids[0]))
        except FileNotFoundError:
            self.restore(tx, parent)
            return os.stat(self.upper(parent_ids[0]))

    def restore(self, tx: Txn, key: str) -> None:
        """Recreate the directories of ``key`` and of its ancestors that a power loss lost.

        Called in a write transaction (no remove or cleanup can run meanwhile).
        An ACTIVE or VIEW snapshot, or a COMMITTED one whose stored usage says
        its upper directory was empty, gets them back exactly as prepare made
        them (a COMMITTED one was made ACTIVE: fs and work).

        Raises:
            NotFoundError: no snapshot ``key``.
            CorruptStoreError: a COMMITTED snapshot with files lost its directory.
        """
        lost: list[tuple[int, Kind, str]] = []  # (id, kind, parent name), tip first
        while key:
            sid, info, usage = storage.get_info(tx, key)
            if self.present(sid, info.kind):
                break
            if info.kind == Kind.COMMITTED and usage.inodes > 1:
                if not os.path.isdir(self.upper(sid)):
                    raise CorruptStoreError(
                        f"snapshot {key!r}: its upper directory {self.upper(sid)} is missing, "
                        f"but its stored usage counts {usage.inodes} inodes: the layer's files "
                        "are lost (remove the snapshot, or restore the root from a backup)"
                    )
            lost.append((sid, info.kind, info.parent))
            key = info.parent
        for sid, kind, parent in reversed(lost):  # the base first: owners come from parents
            owner = os.stat(self.upper(storage.get_info(tx, parent)[0])) if parent else None
            log.warning("snapshot %d: recreating its directories, lost by a power loss", sid)
            if os.path.isdir(self.dir(sid)):
                _fill(self.dir(sid), kind, owner)
            else:
                with contextlib.ExitStack() as undo:
                    self.make(sid, kind, owner, undo)
                    undo.pop_all()

    def orphans(self, live: set[str], dry_run: bool) -> list[tuple[str, str]]:
        """``(path as found, path to remove)`` of the names no id in ``live`` owns.

        Call it in a write transaction: no create can be in flight. Only names
        pysnap makes are taken; others are logged and left. Unless
        ``dry_run``, a leftover id directory is renamed out of the way first.
        """
        orphans: list[tuple[str, str]] = []
        for name in sorted(os.listdir(self.path)):
            if name in live:
                continue
            path = doomed = os.path.join(self.path, name)
            if not _OWN_NAME.fullmatch(name):
                log.warning("cleanup: leaving %s: pysnap never makes that name", path)
                continue
            if _ID_NAME.fullmatch(name) and not dry_run:
                # A crashed create's id was never committed, so the next
                # create takes it again: move the leftover out of its way
                # before the lock is released, then delete it at leisure.
                doomed = os.path.join(self.path, f"rm-{name}-{uuid.uuid4().hex[:12]}")
                try:
                    os.rename(path, doomed)
                except FileNotFoundError:  # a remove() finished it meanwhile
                    continue
            orphans.append((path, doomed))
        return orphans


def _fill(path: str, kind: Kind, owner: os.stat_result | None) -> None:
    """In ``path``, those of ``fs`` (0755, owned like ``owner``) and, unless
    ``kind`` is VIEW, ``work`` (0711) that are missing, as prepare makes them."""
    fs = os.path.join(path, "fs")
    if not os.path.isdir(fs):
        os.mkdir(fs)
        os.chmod(fs, 0o755)  # whatever the umask
        if owner is not None:
            os.lchown(fs, owner.st_uid, owner.st_gid)
    work = os.path.join(path, "work")
    if kind != Kind.VIEW and not os.path.isdir(work):
        os.mkdir(work)
        os.chmod(work, 0o711)
