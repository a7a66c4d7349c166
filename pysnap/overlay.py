"""OverlaySnapshotter: containerd's overlay snapshotter on LMDB and snapcore.

Layout under the root::

    metadata.lmdb          the metadata store (pysnap.metastore)
    snapshots/<id>/fs      the snapshot's upper directory (0755)
    snapshots/<id>/work    overlay's workdir, ACTIVE snapshots only (0711)

Directories are made, renamed and listed for cleanup while the write
transaction that records the change is held (as containerd's overlay.go
does), so a cleanup() in another thread or process never reaps a create that
is in flight. Long work, the usage walk of commit, runs outside any write
transaction and is re-checked inside it.

One class, the whole public contract of the snapshotter (as containerd's
overlay.go is one file). The snapshots/ tree, with the recovery of directories
a power loss took (issue 14: a new snapshot's are not synced), is
pysnap.snapdirs; file and policy work is in storage, overlayopts, archive, fsutil.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType

from snapcore import du, fsops

from . import blobstore, kernel, overlayopts, storage
from .archive import Layer, guard, implied
from .archive.apply import LayerSource, apply_to_snapshot
from .archive.diff import LayerTarget, diff_upper
from .errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
)
from .filters import MATCH_ALL, compile_filters
from .fsutil import remove_tree
from .metastore import DEFAULT_MAP_SIZE, MetaStore
from .mounts import Mount
from .snapdirs import SnapshotDirs
from .types import Info, Kind, Usage

log = logging.getLogger(__name__)

UPPERDIR_LABEL = "containerd.io/snapshot/overlay.upperdir"

Labels = Mapping[str, str] | None
Progress = Callable[[int, int], object] | None


class OverlaySnapshotter:
    """A snapshotter keeping layers as overlayfs directories (containerd's ``overlay``).

    Thread-safe; many processes may open one root at once (LMDB's locking).
    Use it as a context manager, or call ``close()`` (twice is harmless).
    ``map_size`` is the metadata store's address-space limit in bytes (the
    file is sparse); a store that fills it raises MapFullError.

    ``adopt_layers``: containerd's remote-snapshot protocol (its
    docs/snapshotters/remote-snapshotter.md). A ``prepare`` or ``view``
    labelled ``containerd.io/snapshot.ref=T`` raises AlreadyExistsError when
    a COMMITTED snapshot labelled so sits on the requested parent, and
    creates nothing; containerd then finds that snapshot with ``walk`` and
    takes it as the layer, applying nothing.

    Raises (opening):
        InvalidArgumentError: a root path overlay options cannot carry.
        FailedPreconditionError: ``snapshots/`` is a symlink; the metadata
            store is missing, empty or has no meta record while ``snapshots/``
            holds snapshot directories; no d_type.
        CorruptStoreError: the metadata store's data file is damaged.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        sync: bool = True,
        async_remove: bool = False,
        mount_options: Sequence[str] = (),
        upperdir_label: bool = False,
        map_size: int = DEFAULT_MAP_SIZE,
        adopt_layers: bool = False,
    ) -> None:
        self.root = os.path.abspath(os.fspath(root))
        overlayopts.check_root(self.root)  # its paths go into overlay options as they are
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        self._snapshots = os.path.join(self.root, "snapshots")
        self._dirs = SnapshotDirs(self._snapshots)
        if os.path.islink(self._snapshots):
            raise FailedPreconditionError(
                f"open {self.root!r}: {self._snapshots} is a symlink; pysnap never follows it "
                "(cleanup() would empty the directory it points to)"
            )
        new_root = not os.path.isdir(self._snapshots)
        if new_root and not kernel.supports_d_type(self.root):
            # Probed once, when the root is created: snapshots/ records that it
            # passed, so opening an existing root writes nothing (a full disk
            # still opens). In the root, as containerd's probe: under
            # snapshots/ a cleanup() in another process would reap it.
            raise FailedPreconditionError(
                f"open {self.root!r}: the filesystem does not report d_type, "
                "which overlayfs needs (containerd refuses it too)"
            )
        # The meta record is written before snapshots/ exists: a store without
        # one next to snapshot directories is a lost store, never a new one.
        self._ms = MetaStore(
            self.root,
            sync=sync,
            map_size=map_size,
            on_new_store=self._refuse_lost_store,
            on_new_refs=storage.build_ref_index,
        )
        if new_root:
            with contextlib.suppress(FileExistsError):
                os.mkdir(self._snapshots, 0o700)
        self._async_remove = async_remove
        self._sync = sync  # apply()'s default: syncfs once at the end of a durable apply
        self._upperdir_label = upperdir_label
        self._adopt_layers = adopt_layers
        self._options = overlayopts.default_options(mount_options)

    def _refuse_lost_store(self, found: str) -> None:
        try:
            names = self._dirs.ids()
        except FileNotFoundError:
            return
        if names:
            some = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
            raise FailedPreconditionError(
                f"open {self.root!r}: {found}, but {self._snapshots} holds {len(names)} "
                f"snapshot directories ({some}); their records are lost: move snapshots/ "
                "aside or restore data.mdb"
            )

    # -- lifecycle ----------------------------------------------------------

    def close(self) -> None:
        """Close the metadata store once the calls in flight on other threads are done.

        Every call after it raises ClosedError; calling it again does nothing.
        """
        self._ms.close()  # idempotent and thread-safe itself

    def sync(self) -> None:
        """Flush metadata to disk now (for a snapshotter opened with ``sync=False``)."""
        self._ms.sync()

    def __enter__(self) -> OverlaySnapshotter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- reading ------------------------------------------------------------

    def stat(self, key: str) -> Info:
        """Info of the snapshot ``key``, of any kind. Raises NotFoundError."""
        if not self._upperdir_label:
            return storage.stat(self._ms, key)
        with self._ms.transaction() as tx:  # the label needs the id
            sid, info, _ = storage.get_info(tx, key)
        return self._labelled(sid, info)

    def usage(self, key: str, progress: Progress = None) -> Usage:
        """Disk usage of ``key``: stored for COMMITTED, walked now for ACTIVE, 0 for VIEW.

        ``progress(entries, bytes)`` is called now and then during an ACTIVE walk.
        """
        with self._ms.transaction() as tx:
            sid, info, usage = storage.get_info(tx, key)
        if info.kind != Kind.ACTIVE:
            return usage
        try:
            return Usage(*du.disk_usage(self._dirs.upper(sid), progress=progress))
        except FileNotFoundError:
            raise NotFoundError(f"usage {key!r}: snapshot was removed during the walk") from None

    def mounts(self, key: str) -> list[Mount]:
        """The mounts of an ACTIVE or VIEW snapshot.

        Raises NotFoundError, or FailedPreconditionError for a COMMITTED one
        (view it instead).
        """
        with self._ms.transaction() as tx:
            snap = storage.get_snapshot(tx, key)
        if snap.kind == Kind.COMMITTED:
            raise FailedPreconditionError(
                f"mounts {key!r}: snapshot is committed; create a view of it to mount it"
            )
        if not self._dirs.present(snap.id, snap.kind):
            with self._ms.transaction(write=True) as tx:
                self._dirs.restore(tx, key)
                snap = storage.get_snapshot(tx, key)  # the record as it is now
        return self._mounts(snap)

    def walk(self, *filters: str) -> list[Info]:
        """Infos of all snapshots matching any of ``filters`` (containerd's syntax).

        Read in one read transaction. Raises InvalidArgumentError for a
        malformed filter.
        """
        match = compile_filters(*filters)
        with self._ms.transaction() as tx:
            infos = storage.walk_info(tx)
            if match is not MATCH_ALL:
                infos = [i for i in infos if match(i)]
            if not self._upperdir_label:
                return infos
            ids = {name: sid for sid, name in storage.id_map(tx).items()}
        # As containerd's Walk: filters see the stored labels, then the label is added.
        return [self._labelled(ids[i.name], i) for i in infos]

    # -- writing ------------------------------------------------------------

    def prepare(self, key: str, parent: str = "", labels: Labels = None) -> list[Mount]:
        """Create an ACTIVE snapshot ``key`` on the COMMITTED ``parent``; its mounts.

        Raises AlreadyExistsError (key taken; with ``adopt_layers``, also a
        committed snapshot on ``parent`` with this ``containerd.io/snapshot.ref``
        label), NotFoundError (no parent), InvalidArgumentError (bad key or
        labels; parent not committed).
        """
        return self._create(Kind.ACTIVE, key, parent, labels)

    def view(self, key: str, parent: str = "", labels: Labels = None) -> list[Mount]:
        """Create a read-only VIEW ``key`` of the COMMITTED ``parent``; its mounts."""
        return self._create(Kind.VIEW, key, parent, labels)

    def commit(
        self, name: str, key: str, *, labels: Labels = None, parent: str | None = None
    ) -> None:
        """Commit the ACTIVE snapshot ``key`` as the COMMITTED snapshot ``name``.

        The upper directory's usage is computed and stored. ``parent`` sets
        the parent of a snapshot prepared without one (containerd 2.2's
        rebase, for parallel unpack); the one it has already is accepted.
        At a rebase, the directories an apply made implicitly (parents the
        layer lacks) take the metadata of the first lower that has them, as
        an apply on that parent would have given them (pysnap.archive.implied).
        Raises, in this order: NotFoundError (no key), AlreadyExistsError
        (name taken), FailedPreconditionError (key is not ACTIVE), then for
        ``parent``: InvalidArgumentError ("cannot change parent"),
        NotFoundError (no such parent), FailedPreconditionError (parent not
        committed).
        """
        # Checked before the walk, so bad input never costs one.
        storage.validate_key(name, "name")
        if parent:
            storage.validate_key(parent, "parent")
        storage.validate_labels(labels)
        with self._ms.transaction() as tx:
            sid, info, _ = storage.get_info(tx, key)  # one record, not the parent chain
        # no apply of it meanwhile, nor after a killed one
        with guard.exclusive(self._dirs.dir(sid), "commit", key, shared=True):
            if info.kind == Kind.ACTIVE:
                guard.refuse_interrupted(self._dirs.dir(sid), "commit", key)
                if parent and not info.parent:
                    self._rebase_implied(name, sid, parent)
            self._commit(name, key, labels, sid, info, parent or "")
        implied.discard(self._dirs.dir(sid))  # of no use once committed

    def _rebase_implied(self, name: str, sid: int, parent: str) -> None:
        """Give the implied directories of ``sid``'s upper their metadata in ``parent``.

        Skipped when the commit is going to fail (name taken, parent missing or
        not committed), so a refused commit changes nothing.
        """
        paths = implied.read(self._dirs.dir(sid))
        if not paths:
            return
        with self._ms.transaction() as tx:
            try:
                storage.get_info(tx, name)
                return  # name taken
            except NotFoundError:
                pass
            try:
                snap = storage.get_snapshot(tx, parent)
            except NotFoundError:
                return
        if snap.kind != Kind.COMMITTED:
            return
        lowers = [self._dirs.upper(p) for p in (snap.id, *snap.parent_ids)]
        implied.give_lower_metadata(self._dirs.upper(sid), lowers, paths)
        if self._sync:
            fd = os.open(self._dirs.upper(sid), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                fsops.syncfs(fd)
            finally:
                os.close(fd)

    def _commit(
        self, name: str, key: str, labels: Labels, sid: int, info: Info, parent: str
    ) -> None:
        usage = Usage()
        if info.kind == Kind.ACTIVE:
            # The walk runs outside the write transaction; commit_active checks
            # that the same id is still ACTIVE under key.
            try:
                usage = Usage(*du.disk_usage(self._dirs.upper(sid)))
            except FileNotFoundError:
                usage = self._restore_for_commit(key, sid)
        with self._ms.transaction(write=True) as tx:
            storage.commit_active(tx, key, name, usage, labels, sid, parent)

    def update(self, info: Info, *fieldpaths: str) -> Info:
        """Change the labels of ``info.name`` and return its new Info.

        No paths, or ``labels``: the labels become ``info.labels``.
        ``labels.K``: K takes ``info.labels.get(K, "")``; empty deletes it.
        Any other path, or ``info`` not an Info: InvalidArgumentError.
        """
        if not isinstance(info, Info):
            raise InvalidArgumentError(f"update needs an Info, not {type(info).__name__}")
        if not self._upperdir_label:
            with self._ms.transaction(write=True) as tx:
                return storage.update_info(tx, info, *fieldpaths)
        # The upperdir label is added on the way out and never stored, even
        # when the caller hands back an Info that carries it.
        info = info.replace(labels={k: v for k, v in info.labels.items() if k != UPPERDIR_LABEL})
        with self._ms.transaction(write=True) as tx:
            new = storage.update_info(tx, info, *fieldpaths)
            sid = storage.get_info(tx, new.name)[0]  # one record, not the parent chain
        return self._labelled(sid, new)

    def remove(self, key: str) -> None:
        """Remove the snapshot ``key`` of any kind; its directory goes after the record.

        Raises NotFoundError, or FailedPreconditionError ("cannot remove
        snapshot with child").
        """
        while True:
            with self._ms.transaction() as tx:
                sid = storage.get_info(tx, key)[0]
            with (
                guard.exclusive(self._dirs.dir(sid), "remove", key, shared=True),
                self._ms.transaction(write=True) as tx,
            ):
                # The lock is the directory's: a key removed and made again
                # meanwhile is another snapshot, whose lock must be taken.
                if storage.get_info(tx, key)[0] == sid:
                    storage.remove(tx, key)
                    break
        if not self._async_remove:
            self._remove_dirs([self._dirs.dir(sid)])

    def apply(
        self,
        key: str,
        layer: LayerSource,
        *,
        diff_id: str | None = None,
        sync: bool | None = None,
        force: bool = False,
    ) -> Layer:
        """Apply the OCI layer ``layer`` (a path or a binary file) into the ACTIVE ``key``.

        tar, tar+gzip or tar+zstd, detected by magic, unpacked straight into
        the upper directory with containerd's overlay semantics (see
        pysnap.archive.apply). ``diff_id``: the expected one, checked after
        the whole stream was read. ``sync``: syncfs once at the end (None:
        the snapshotter's setting). ``force``: apply although the upper is
        mounted. Raises NotFoundError, FailedPreconditionError (not ACTIVE,
        mounted, busy, interrupted apply), InvalidArgumentError (a refused
        stream or entry, a diff ID that does not match), OSError.
        """
        with self._ms.transaction() as tx:
            snap = storage.get_snapshot(tx, key)
        if snap.kind != Kind.ACTIVE:
            raise FailedPreconditionError(f"apply {key!r}: snapshot is not active")

        def still_active() -> None:
            # Under the lock, which a commit or remove that ran since the read
            # above no longer holds: is it the same ACTIVE snapshot?
            with self._ms.transaction() as tx:
                now = storage.get_snapshot(tx, key)  # NotFoundError once committed
            if now.id != snap.id:  # a key never changes kind: commit makes a new key
                raise FailedPreconditionError(
                    f"apply {key!r}: the snapshot was removed and made again meanwhile"
                )

        lowers = [self._dirs.upper(p) for p in snap.parent_ids]
        sync = self._sync if sync is None else sync
        return apply_to_snapshot(
            key,
            self._dirs.dir(snap.id),
            lowers,
            layer,
            diff_id=diff_id,
            sync=sync,
            force=force,
            still_active=still_active,
        )

    def diff(
        self,
        key: str,
        out: LayerTarget,
        *,
        compression: str | None = "gzip",
        level: int | None = None,
    ) -> Layer:
        """Write the layer of the ACTIVE or COMMITTED ``key`` (its own upper) to ``out``.

        ``out`` is a path (written under a temporary name, renamed at the
        end) or a binary file. ``compression``: "gzip", "zstd" or None.
        Same tree, same pysnap and compression library: same bytes. Raises
        NotFoundError, FailedPreconditionError (a VIEW; an upper written
        with redirect_dir or metacopy; an apply of it running),
        InvalidArgumentError, OSError.
        """
        with self._ms.transaction() as tx:
            snap = storage.get_snapshot(tx, key)
        if snap.kind == Kind.VIEW:
            raise FailedPreconditionError(f"diff {key!r}: a view has no layer of its own")
        # Shared, as commit's: an apply of the snapshot would change the tree under the walk.
        with guard.exclusive(self._dirs.dir(snap.id), "diff", key, shared=True):
            return diff_upper(
                key, self._dirs.upper(snap.id), out, compression_=compression, level=level
            )

    def cleanup(self, *, dry_run: bool = False) -> list[str]:
        """Remove directories no live snapshot owns (crashed creates, unfinished removes).

        Only names pysnap makes are reaped (an id, ``new-*``, ``rm-*``); anything
        else under ``snapshots/`` is logged and left. Also removes layer blobs
        (pysnap.blobstore) that no snapshot's labels name any more, and blob
        copies whose writer is gone. Returns the paths as found, sorted: those
        removed, or with ``dry_run`` those that would be (and nothing changes).
        A removal that fails is logged and left out of the list; the next
        cleanup retries it.
        """
        with self._ms.transaction(write=True) as tx:
            live = {str(i) for i in storage.id_map(tx)}
            # Listed under the write lock: no create can be in flight now.
            orphans = self._dirs.orphans(live, dry_run)  # (the path as found, to remove)
            # layer blobs no label names any more (pysnap.blobstore)
            orphans += blobstore.reap(self.root, lambda: storage.walk_info(tx), dry_run=dry_run)
        if dry_run:
            return sorted(path for path, _ in orphans)
        removed = self._remove_dirs([doomed for _, doomed in orphans])
        return sorted(path for path, doomed in orphans if doomed in removed)

    # -- internals ----------------------------------------------------------

    def _labelled(self, sid: int, info: Info) -> Info:
        # Built as the decoder builds an Info: Info(...)/replace() take keywords
        # and convert every field, which would cost stat more than the read.
        kind, name, parent, labels, created, updated = info
        labels = {**labels, UPPERDIR_LABEL: self._dirs.upper(sid)}
        return tuple.__new__(Info, (kind, name, parent, labels, created, updated))

    def _create(self, kind: Kind, key: str, parent: str, labels: Labels) -> list[Mount]:
        ref = (
            labels.get(storage.REF_LABEL)
            if self._adopt_layers and isinstance(labels, Mapping)
            else None
        )
        if ref:  # bad input stays InvalidArgumentError, whatever the index holds
            storage.validate_key(key)
            storage.validate_labels(labels)
        with self._ms.transaction(write=True) as tx, contextlib.ExitStack() as undo:
            if ref:
                # In the create's own write transaction: no commit of a match can slip
                # between the look-up and the create.
                found = storage.find_committed_by_ref(tx, ref, parent)
                if found is not None:
                    raise AlreadyExistsError(
                        f"{kind.name.lower()} {key!r}: committed snapshot {found!r} on parent "
                        f"{parent!r} has {storage.REF_LABEL}={ref} (a layer to adopt)"
                    )
            snap = storage.create_snapshot(tx, kind, key, parent, labels)
            owner = self._dirs.owner(tx, parent, snap.parent_ids)
            # Not synced (see pysnap.snapdirs): restore() remakes them.
            path = self._dirs.make(snap.id, kind, owner, undo)
            undo.callback(remove_tree, path)
            mounts = self._mounts(snap)
            undo.pop_all()  # about to commit: keep everything
        return mounts

    def _restore_for_commit(self, key: str, sid: int) -> Usage:
        """commit's walk found no upper directory: restore it if ``key`` is still ``sid``."""
        with self._ms.transaction(write=True) as tx:
            if storage.get_info(tx, key)[0] != sid:
                raise NotFoundError(f"commit {key!r}: snapshot was removed during the usage walk")
            self._dirs.restore(tx, key)
        try:
            return Usage(*du.disk_usage(self._dirs.upper(sid)))
        except FileNotFoundError:
            raise NotFoundError(
                f"commit {key!r}: snapshot was removed during the usage walk"
            ) from None

    def _mounts(self, snap: storage.Snapshot) -> list[Mount]:
        parents, dirs = snap.parent_ids, self._dirs
        if not parents:
            mode = "ro" if snap.kind == Kind.VIEW else "rw"
            return [Mount(type="bind", source=dirs.upper(snap.id), options=(mode, "rbind"))]
        if snap.kind == Kind.VIEW and len(parents) == 1:
            return [Mount(type="bind", source=dirs.upper(parents[0]), options=("ro", "rbind"))]
        lowers = dirs.lowerdir(parents)
        if snap.kind == Kind.ACTIVE:
            upper, work = dirs.upper(snap.id), f"{dirs.dir(snap.id)}/work"
            options = overlayopts.build(lowers, upper, work, self._options)
        else:
            options = overlayopts.build(lowers, extra=self._options)
        return [Mount(type="overlay", source="overlay", options=options)]

    def _remove_dirs(self, paths: list[str]) -> set[str]:
        """Remove each tree; the ones removed (a failure is logged; cleanup() retries)."""
        removed = set()
        for path in paths:
            try:
                remove_tree(path)
            except OSError as e:  # the record is gone already; cleanup() retries
                log.warning("removing %s failed (cleanup() will retry): %s", path, e)
            else:
                removed.add(path)
        return removed
