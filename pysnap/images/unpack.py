"""Unpacking an image into a chain of committed snapshots named by chain ID, as containerd does.

Each layer's snapshot is named by its chain ID (OCI image spec), so a layer
already unpacked, by this image or another, is reused and never applied
again. A layer to apply goes into a fresh ACTIVE snapshot keyed
``extract-<unique> <chainID>`` on the previous chain ID (containerd's
unpacker names them so), whose labels carry the owner (boot id, pid and
start time: pysnap.owner), and is committed under its chain ID. A failure
removes the ``extract-*`` key; a killed unpack's keys are removed by the
next unpack, which finds their owner gone. Two unpacks racing for one chain
ID both apply it; the second commit meets AlreadyExistsError and takes the
first one's snapshot (with ``adopt_layers``, the second's prepare may meet
it first, and the layer is reused without an apply).

The parallel unpack (the default) applies the layers to apply at once, each
into its own parentless extract key (a thread pool sized to the cores, the
largest layers first: the apply loop releases the GIL; a layer starts only
while half a core is idle, admission.py), and commits them in
chain order with ``commit(parent=)`` (containerd 2.2's rebase), which gives
the directories an apply made implicitly the metadata of their first lower:
the tree is the sequential unpack's. A failure in one layer stops all the
others at their next read of the blob (those not begun are not begun) and
removes every extract key of this unpack that is not committed; the layers
below it that were applied already are committed, as a sequential unpack
leaves them.

Each blob is hashed once: by the apply, which returns the digest of what it
read (sha256), checked against the descriptor here; the blob's copy into the
blob store is written from the same reads.

Over 500 lines: the sequential and the parallel unpack share the chain-ID
naming, the reuse and the cleanup of extract keys, which must change together.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from .. import blobstore, owner
from ..archive import Layer
from ..errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    SnapshotError,
)
from ..storage import REF_LABEL
from ..types import Info, Kind
from .admission import Admission
from .layout import ImageSource, LayerBlob
from .oci import chain_ids

if TYPE_CHECKING:
    from ..overlay import OverlaySnapshotter

__all__ = [
    "DIFF_ID_LABEL",
    "ENTRIES_LABEL",
    "OWNER_LABEL",
    "PARENT_CHAIN_LABEL",
    "REF_LABEL",
    "Image",
    "remove_stale_extracts",
    "unpack",
]

# containerd's labels: snapshot.ref (storage.REF_LABEL) on every version; the
# other two are what containerd 2.3+ sends with an unpack's prepare.
DIFF_ID_LABEL = "containerd.io/snapshot/diff-id"
PARENT_CHAIN_LABEL = "containerd.io/snapshot/parent-chain-id"
# Ours: the number of entries the apply wrote, and an extract key's owner.
ENTRIES_LABEL = "pysnap.io/layer.entries"
OWNER_LABEL = "pysnap.io/extract.owner"

EXTRACT_PREFIX = "extract-"


@dataclass(frozen=True)
class Image:
    """An unpacked image: its manifest and config, and the snapshots of its layers.

    ``manifest_digest`` is ``""`` for a legacy ``docker save`` archive, which
    has no manifest blob. ``top`` is the last chain ID: prepare on it to run
    or build on the image. ``layers`` are the ``pysnap.Layer`` of each layer,
    applied now or reused (``entries`` is 0 for one reused from a snapshot
    that was not made by pysnap).
    """

    manifest_digest: str
    config_digest: str
    config: Mapping[str, Any]
    diff_ids: tuple[str, ...]
    chain_ids: tuple[str, ...]
    top: str
    layers: tuple[Layer, ...]


def unpack(
    sn: OverlaySnapshotter,
    source: str | os.PathLike[str],
    *,
    ref: str | None = None,
    platform: str | None = None,
    parallel: bool = True,
) -> Image:
    """Unpack the image ``ref`` (or the only one) of ``source`` for ``platform`` into ``sn``.

    ``source``: an OCI image layout (a directory or a tar of one) or a
    ``docker save`` archive. ``platform``: ``os/arch[/variant]``, default
    this machine's. Every blob is verified by size and digest as it
    streams, every layer by its diff ID. ``parallel``: apply the layers at
    once, one thread per core, another only while half a core is idle (the same
    tree as one after the other).

    Raises:
        NotFoundError: no such source, image, platform or blob (a
            non-distributable one: the message gives its URLs).
        InvalidArgumentError: several images and no ref; a malformed
            document; a size, digest or diff ID mismatch; a truncated archive;
            an unknown media type.
        UnimplementedError: an encrypted layer.
        FailedPreconditionError: a snapshot named by a chain ID that is not
            a committed snapshot of that chain.
    Layers committed before a failure stay (their chain IDs are right).
    """
    with ImageSource(source) as src:
        resolved = src.resolve(ref, platform)
        chains = chain_ids(resolved.diff_ids)
        remove_stale_extracts(sn)
        existing = [_existing(sn, c, chains[i - 1] if i else "") for i, c in enumerate(chains)]
        for i, blob in enumerate(resolved.layers):
            if existing[i] is None and not src.has_blob(blob):
                src.open_blob(blob, _what(i, blob))  # raises the NotFoundError naming it
        todo = [i for i, info in enumerate(existing) if info is None]
        applied: dict[int, Layer] = {}
        if parallel and len(todo) > 1:
            applied = _apply_parallel(sn, src, resolved.layers, resolved.diff_ids, chains, todo)
        else:
            for i in todo:
                parent = chains[i - 1] if i else ""
                key = _key(chains[i])
                labels = _labels(resolved.layers[i], resolved.diff_ids[i], chains[i], parent)
                found = _prepare(sn, key, labels, parent)
                applied[i] = (
                    _reused(resolved.layers[i], resolved.diff_ids[i], found)
                    if found is not None
                    else _extract_commit(
                        sn, src, i, resolved.layers[i], resolved.diff_ids[i], chains[i], parent, key
                    )
                )
        layers = [
            applied[i] if info is None else _reused(blob, diff_id, info)
            for i, (blob, diff_id, info) in enumerate(
                zip(resolved.layers, resolved.diff_ids, existing, strict=True)
            )
        ]
    return Image(
        resolved.manifest_digest,
        resolved.config_digest,
        resolved.config,
        resolved.diff_ids,
        tuple(chains),
        chains[-1] if chains else "",
        tuple(layers),
    )


def remove_stale_extracts(sn: OverlaySnapshotter) -> list[str]:
    """Remove ``extract-*`` snapshots whose owner no longer runs; their keys."""
    removed = []
    for info in sn.walk(f"name~=^{EXTRACT_PREFIX},kind==active"):
        who = owner.Owner.parse(info.labels.get(OWNER_LABEL, ""))
        if who is None or who.alive() or not info.name.startswith(EXTRACT_PREFIX):
            continue
        # Removed first by another unpack; or busy: its owner applies it after all.
        with contextlib.suppress(NotFoundError, FailedPreconditionError):
            sn.remove(info.name)
            removed.append(info.name)
    return removed


def _what(i: int, blob: LayerBlob) -> str:
    return f"layer {i} {blob.desc.digest or blob.path}"


def _existing(sn: OverlaySnapshotter, chain: str, parent: str) -> Info | None:
    """The committed snapshot named ``chain``, or None; refuse one that is not that layer."""
    try:
        info = sn.stat(chain)
    except NotFoundError:
        return None
    if info.kind != Kind.COMMITTED or info.parent != parent:
        raise FailedPreconditionError(
            f"unpack: snapshot {chain!r} exists but is not the committed layer on "
            f"{parent or 'no parent'!r} its chain ID names"
        )
    return info


def _labels(blob: LayerBlob, diff_id: str, chain: str, parent: str) -> dict[str, str]:
    labels = {REF_LABEL: chain, DIFF_ID_LABEL: diff_id}
    if parent:
        labels[PARENT_CHAIN_LABEL] = parent
    if blob.desc.digest:
        labels[blobstore.BLOB_DIGEST_LABEL] = blob.desc.digest
        labels[blobstore.BLOB_MEDIA_TYPE_LABEL] = blob.desc.media_type
    labels[blobstore.BLOB_SIZE_LABEL] = str(blob.desc.size)
    return labels


def _key(chain: str) -> str:
    return f"{EXTRACT_PREFIX}{time.time_ns()}-{secrets.token_hex(4)} {chain}"


def _prepare(
    sn: OverlaySnapshotter, key: str, labels: dict[str, str], parent: str = ""
) -> Info | None:
    """Prepare the extract ``key``; None, or the layer a concurrent unpack committed.

    With ``adopt_layers``, prepare refuses a key whose ref label a committed
    snapshot on the same parent carries (AlreadyExistsError), and the layer is
    then reused, as containerd's unpacker does.
    """
    try:
        # The blob label is on the prepare: cleanup() keeps the blob from its rename on.
        sn.prepare(key, parent, labels={**labels, OWNER_LABEL: str(owner.current())})
    except AlreadyExistsError:
        info = _existing(sn, labels[REF_LABEL], parent)
        if info is None:
            raise
        return info
    return None


def _apply_parallel(
    sn: OverlaySnapshotter,
    src: ImageSource,
    blobs: tuple[LayerBlob, ...],
    diff_ids: tuple[str, ...],
    chains: list[str],
    todo: list[int],
) -> dict[int, Layer]:
    """Apply the layers ``todo`` at once into parentless keys; commit them in chain order."""
    stop = _Stop()
    keys = {i: _key(chains[i]) for i in todo}
    labels = {
        i: _labels(blobs[i], diff_ids[i], chains[i], chains[i - 1] if i else "") for i in todo
    }
    done: dict[int, Layer] = {}
    failure: BaseException | None = None
    try:
        for i in todo:
            found = _prepare(sn, keys[i], labels[i])
            if found is not None:  # parentless: only layer 0's lookup can match
                done[i] = _reused(blobs[i], diff_ids[i], found)
        todo = [i for i in todo if i not in done]
        if not todo:
            return done
        cores = _cores()
        admission = Admission(cores)
        with ThreadPoolExecutor(max_workers=min(len(todo), cores)) as pool:
            # The largest first, so that the last layer running alone is a small one.
            order = sorted(todo, key=lambda i: -blobs[i].desc.size)
            futures: dict[int, Future[_Extracted]] = {
                i: pool.submit(
                    _admitted,
                    admission,
                    stop,
                    sn,
                    src,
                    i,
                    blobs[i],
                    diff_ids[i],
                    keys[i],
                    labels[i],
                )
                for i in order
            }
            try:
                for i in todo:
                    parent = chains[i - 1] if i else ""
                    done[i] = _commit(
                        sn, blobs[i], diff_ids[i], chains[i], parent, keys[i], futures[i].result()
                    )
            except BaseException as e:
                stop.fail(e)  # a commit's failure stops the layers too (_Stopped records nothing)
                for f in futures.values():
                    f.cancel()
                raise
    except BaseException as e:
        failure = stop.error or e  # the first failure, not a layer it stopped
        for i in todo:
            if i not in done:
                with contextlib.suppress(NotFoundError):
                    sn.remove(keys[i])
    if failure is not None:
        raise failure  # out of the except block: no stopped layer as its context
    return done


def _admitted(admission: Admission, stop: _Stop, *args: Any) -> _Extracted:
    """_extract(*args, stop), once the admission lets this layer start."""
    admission.enter(stop.halted)
    try:
        return cast(_Extracted, stop.run(_extract, *args, stop))
    finally:
        admission.leave()


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class _Stopped(Exception):
    """A layer's apply ended because another layer of the unpack failed (never raised out)."""


class _Stop:
    """The first failure of a parallel unpack: every other layer stops at its next read.

    Layers below the failure that were applied already are committed (their
    chain IDs are right); none is applied further.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._halted = False
        self.error: BaseException | None = None

    def halt(self) -> None:
        """Stop the other layers now (their reads raise _Stopped); the error follows."""
        self._halted = True

    def fail(self, e: BaseException) -> None:
        self.halt()
        if isinstance(e, _Stopped):
            return
        with self._lock:
            if self.error is None:
                self.error = e

    def halted(self) -> bool:
        return self._halted

    def check(self) -> None:
        if self._halted:
            raise _Stopped("unpack: stopped, another layer failed")

    def run(self, fn: Any, *args: Any) -> Any:
        try:
            self.check()  # a layer not begun when another failed is not begun
            return fn(*args)
        except BaseException as e:
            self.fail(e)
            raise


class _Stoppable:
    """A blob reader whose reads fail once another layer failed."""

    def __init__(self, reader: Any, stop: _Stop) -> None:
        self._reader, self._stop = reader, stop

    def read(self, n: int = -1) -> bytes:
        self._stop.check()
        return cast(bytes, self._reader.read(n))

    def readinto(self, buf: Any) -> int:
        self._stop.check()
        return cast(int, self._reader.readinto(buf))


@dataclass(frozen=True)
class _Extracted:
    applied: Layer
    digest: str
    media_type: str


def _extract(
    sn: OverlaySnapshotter,
    src: ImageSource,
    i: int,
    blob: LayerBlob,
    diff_id: str,
    key: str,
    labels: dict[str, str],
    stop: _Stop | None = None,
) -> _Extracted:
    """Apply one layer into the extract ``key`` and keep its blob; the caller removes the key
    after a failure. ``labels`` gain the blob's digest and media type when found only now."""
    what = _what(i, blob)
    ingest = None
    # The apply hashes what it reads with sha256 (Layer.digest): the reader only
    # counts, unless the descriptor names another algorithm.
    by_apply = not blob.desc.digest or blob.desc.digest.startswith("sha256:")
    try:
        have = blob.desc.digest and os.path.exists(blobstore.blob_path(sn.root, blob.desc.digest))
        ingest = None if have else blobstore.Ingest(sn.root)
        with src.open_blob(blob, what, tee=ingest, hashing=not by_apply) as reader:
            layer = reader if stop is None else _Stoppable(reader, stop)
            try:
                # a RawIOBase: what apply reads of a BinaryIO (read/readinto) it has
                applied = sn.apply(key, cast(BinaryIO, layer), diff_id=diff_id)
            except Exception as e:
                if isinstance(e, _Stopped):
                    raise
                if stop is not None:
                    stop.halt()  # the others stop now, not after the diagnosis below
                # A damaged blob fails the apply first (a gzip CRC, a tar header):
                # report the blob's size or digest if that is it.
                cause = reader.error or _blob_fault(src, blob, what)
                if cause is not None:
                    raise cause from e
                if isinstance(e, SnapshotError):  # the message names the layer and its blob
                    named = type(e)(f"{what}: {e}")
                    for note in getattr(e, "__notes__", ()):
                        named.add_note(note)
                    raise named from e
                e.add_note(f"unpack: {what}")  # an OSError keeps its errno and file names
                raise
            digest = reader.finish(applied.digest if by_apply else None)
        media_type = blob.desc.media_type if blob.desc.digest else applied.media_type
        if not blob.desc.digest:  # legacy docker: the digest is known only now
            found = {
                blobstore.BLOB_DIGEST_LABEL: digest,
                blobstore.BLOB_MEDIA_TYPE_LABEL: media_type,
            }
            labels.update(found)
            sn.update(Info(name=key, labels=found), *(f"labels.{k}" for k in found))
        if ingest is not None:
            ingest.commit(digest)
            ingest = None
    finally:
        if ingest is not None:
            ingest.abort()
    return _Extracted(applied, digest, media_type)


def _blob_fault(src: ImageSource, blob: LayerBlob, what: str) -> InvalidArgumentError | None:
    """The size or digest error of ``blob``, read again from its start; None if it is sound."""
    if not blob.desc.digest:
        return None  # nothing to check it against
    with src.open_blob(blob, what) as again:
        try:
            again.finish()
        except InvalidArgumentError as e:
            return e
    return None


def _commit(
    sn: OverlaySnapshotter,
    blob: LayerBlob,
    diff_id: str,
    chain: str,
    parent: str,
    key: str,
    done: _Extracted,
) -> Layer:
    """Commit the extract ``key`` as ``chain`` on ``parent`` (set now if it had none)."""
    labels = _labels(blob, diff_id, chain, parent)
    if not blob.desc.digest:
        labels[blobstore.BLOB_DIGEST_LABEL] = done.digest
        labels[blobstore.BLOB_MEDIA_TYPE_LABEL] = done.media_type
    labels[ENTRIES_LABEL] = str(done.applied.entries)
    try:
        sn.commit(chain, key, labels=labels, parent=parent or None)
    except AlreadyExistsError:  # a concurrent unpack committed this layer first
        info = _existing(sn, chain, parent)
        if info is None:
            raise
        sn.remove(key)
        return _reused(blob, diff_id, info)
    applied = done.applied
    return Layer(applied.diff_id, done.digest, blob.desc.size, done.media_type, applied.entries)


def _extract_commit(
    sn: OverlaySnapshotter,
    src: ImageSource,
    i: int,
    blob: LayerBlob,
    diff_id: str,
    chain: str,
    parent: str,
    key: str,
) -> Layer:
    """Apply one layer into the prepared extract ``key`` and commit it as ``chain``."""
    try:
        labels = _labels(blob, diff_id, chain, parent)
        return _commit(
            sn, blob, diff_id, chain, parent, key, _extract(sn, src, i, blob, diff_id, key, labels)
        )
    except BaseException:
        with contextlib.suppress(NotFoundError):
            sn.remove(key)
        raise


def _reused(blob: LayerBlob, diff_id: str, info: Info) -> Layer:
    """The Layer of ``blob``, already unpacked as ``info``: this image's blob, else its labels."""
    labels = info.labels
    digest = blob.desc.digest or labels.get(blobstore.BLOB_DIGEST_LABEL, "")
    media_type = blob.desc.media_type
    if not blob.desc.digest:
        media_type = labels.get(blobstore.BLOB_MEDIA_TYPE_LABEL, media_type)
    entries = labels.get(ENTRIES_LABEL, "0")
    return Layer(
        diff_id, digest, blob.desc.size, media_type, int(entries) if entries.isdigit() else 0
    )
