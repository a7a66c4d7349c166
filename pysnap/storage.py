"""Snapshot records, the parent index and the id counter: functions taking a Txn.

The model is containerd's ``snapshots/storage`` package (``bolt.go``): every
function works inside a transaction the caller opened with
``MetaStore.transaction()``, so a multi-step change is all-or-nothing. Record
and key layouts are documented in ``snapcore.keys``.

Errors follow bolt.go: a key or parent that does not exist is
``NotFoundError``; a taken key or name ``AlreadyExistsError``; an operation the
snapshot's kind forbids ``FailedPreconditionError``; malformed input
``InvalidArgumentError``, raised before anything changes.

Over 500 lines on purpose: every function that reads or writes a record, the
parent index or the refs index lives here, so the record layout and the
indexes' invariants are kept in one place (as bolt.go keeps them in one file).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass

from snapcore import keys, mdb

from .errors import (
    AlreadyExistsError,
    CorruptStoreError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    SnapshotError,
)
from .metastore import META_LAST_ID, MetaStore, Txn
from .types import Info, Kind, Usage

keys.register_types(Info, Usage, Kind)

#: LMDB's default key limit (mdb_env_get_maxkeysize).
MAX_KEY_BYTES = 511
#: containerd's labels.Validate: key plus value at most this many bytes.
MAX_LABEL_BYTES = 4096
_MAX_ID = 2**64 - 1
# A parent chain longer than this can only be a cycle in a corrupt store
# (overlayfs itself stops at 500 layers).
_MAX_DEPTH = 1 << 20
_KINDS = (None, Kind.VIEW, Kind.ACTIVE, Kind.COMMITTED)
#: The label containerd's unpacker puts on a layer's prepare (its chain ID):
#: committed snapshots that carry it are indexed in the ``refs`` database.
REF_LABEL = "containerd.io/snapshot.ref"
# refs keys: blake2b-128(label value) + be64(parent id, 0 for none) + be64(id)
# -> b"". Fixed width whatever the value's length (up to 4 KiB, more than
# LMDB's 511-byte keys); a hit is checked against the record itself.
_REF_PREFIX = 24

_decode_info = keys.decode_info
_decode_stat = keys.decode_stat
_decode_record = keys.decode_record
_decode_link = keys.decode_link
_RecordError = keys.RecordError


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A snapshot's id, kind and the ids of its parents (containerd's storage.Snapshot)."""

    id: int
    kind: Kind
    parent_ids: tuple[int, ...]  # immediate parent first, down to the base


# ---- validation -------------------------------------------------------------


def _key_bytes(key: object, what: str = "key") -> bytes:
    if not isinstance(key, str):
        raise InvalidArgumentError(f"{what} must be a str, not {type(key).__name__}")
    if not key:
        raise InvalidArgumentError(f"{what} must not be empty")
    if "\0" in key:
        raise InvalidArgumentError(f"{what} {key!r} contains a NUL character")
    try:
        b = key.encode()
    except UnicodeEncodeError:
        raise InvalidArgumentError(f"{what} {key!r} is not valid UTF-8") from None
    if len(b) > MAX_KEY_BYTES:
        raise InvalidArgumentError(
            f"{what} {key[:40]!r}... is {len(b)} bytes in UTF-8, more than {MAX_KEY_BYTES}"
        )
    return b


def validate_key(key: str, what: str = "key") -> None:
    """Check a snapshot key or name: non-empty UTF-8, no NUL, at most 511 bytes.

    Raises:
        InvalidArgumentError: naming ``what`` and the key.
    """
    _key_bytes(key, what)


def validate_labels(labels: Mapping[str, str] | None) -> dict[str, str]:
    """A dict of the labels to store: empty values dropped, the rest checked.

    Label keys must be non-empty str; key plus value at most 4096 bytes in
    UTF-8 (containerd's ``labels.Validate``).

    Raises:
        InvalidArgumentError: a label breaks one of those rules.
    """
    out: dict[str, str] = {}
    if not labels:
        return out
    try:
        items = list(labels.items())
    except AttributeError:
        raise InvalidArgumentError(
            f"labels must be a mapping, not {type(labels).__name__}"
        ) from None
    for k, v in items:
        if not isinstance(k, str) or not isinstance(v, str):
            raise InvalidArgumentError(f"label {k!r}: keys and values must be str")
        if not k:
            raise InvalidArgumentError("label key must not be empty")
        if not v:
            continue
        try:
            n = len(k.encode()) + len(v.encode())
        except UnicodeEncodeError:
            raise InvalidArgumentError(f"label {k!r} is not valid UTF-8") from None
        if n > MAX_LABEL_BYTES:
            raise InvalidArgumentError(
                f"label key and value length ({n} bytes) greater than maximum size "
                f"({MAX_LABEL_BYTES} bytes) for label {k[:40]!r}"
            )
        out[k] = v
    return out


# ---- helpers ----------------------------------------------------------------


def _corrupt(key: str, e: Exception) -> SnapshotError:
    return CorruptStoreError(f"snapshot {key!r}: {e}")


def _record(key: str, raw: bytes) -> tuple[int, int, str, dict[str, str], int, int, int, int]:
    try:
        return _decode_record(raw)
    except _RecordError as e:
        raise _corrupt(key, e) from e


def _load(tx: Txn, key: str, kb: bytes) -> tuple[int, int, str, dict[str, str], int, int, int, int]:
    """The decoded record of ``key`` (encoded as ``kb``). Raises NotFoundError."""
    raw = tx.txn.get(kb, None, tx.snapshots)
    if raw is None:
        raise NotFoundError(f"snapshot {key!r} does not exist")
    return _record(key, raw)


def _final_chain(kind: int, parent: str) -> bool:
    """Whether a snapshot's parents are set for good: all but an ACTIVE one without
    a parent, which commit may still give one (containerd 2.2's rebase)."""
    return parent != "" or kind != Kind.ACTIVE


def _ancestors(tx: Txn, sid: int, kind: int, parent: str) -> tuple[int, ...]:
    """The ids of the ancestors of snapshot ``sid``, whose parent is named ``parent``.

    Immediate parent first. From ``tx.chains`` (id -> this tuple, never stale:
    see pysnap.metastore) when it knows ``sid``; else the records are read by
    name until an ancestor it knows, and ``sid``'s chain is learnt if final.
    """
    chains = tx.chains
    known = chains.get(sid)
    if known is not None:
        return known
    get, db = tx.txn.get, tx.snapshots
    ids: list[int] = []
    rest: tuple[int, ...] = ()
    name = parent.encode()
    while name:
        raw = get(name, None, db)
        if raw is None:
            raise CorruptStoreError(f"metadata store corrupt: parent snapshot {name!r} is missing")
        try:
            p, name = _decode_link(raw)
        except _RecordError as e:
            raise _corrupt(name.decode(errors="replace"), e) from e
        ids.append(p)
        if (known := chains.get(p)) is not None:
            rest = known
            break
        if len(ids) > _MAX_DEPTH:
            raise CorruptStoreError("metadata store corrupt: parent chain loops")
    chain = (*ids, *rest)
    if _final_chain(kind, parent):
        tx.learn(sid, chain)
    return chain


def _next_id(tx: Txn) -> int:
    raw = tx.txn.get(META_LAST_ID, None, tx.meta)
    if raw is None:
        raise CorruptStoreError("metadata store corrupt: the id counter is missing")
    try:
        last: int = keys.decode_id(raw)
    except _RecordError as e:
        raise CorruptStoreError(f"metadata store corrupt: {e}") from e
    if last >= _MAX_ID:
        raise SnapshotError("metadata store: snapshot ids exhausted")
    tx.txn.put(META_LAST_ID, keys.id_key(last + 1), db=tx.meta)
    return last + 1


def _usage_int(value: object, what: str) -> int:
    if not isinstance(value, int) or not 0 <= value <= _MAX_ID:
        raise InvalidArgumentError(f"usage {what} must be an int in 0..2**64-1, not {value!r}")
    return value


def _ref_prefix(ref: str, parent_id: int) -> bytes:
    return hashlib.blake2b(ref.encode(), digest_size=16).digest() + keys.id_key(parent_id)


def _parent_id(tx: Txn, parent: str) -> int | None:
    """The id of ``parent`` (0 for ""), or None when there is no such snapshot."""
    if not parent:
        return 0
    raw = tx.txn.get(parent.encode(), None, tx.snapshots)
    return None if raw is None else _record(parent, raw)[0]


def _index_ref(tx: Txn, sid: int, parent: str, ref: str | None, add: bool) -> None:
    """Add or drop the refs entry of the committed snapshot ``sid`` (none without ``ref``)."""
    if not ref:
        return
    pid = _parent_id(tx, parent)
    if pid is None:  # a corrupt store's missing parent: no entry was made under it
        return
    key = _ref_prefix(ref, pid) + keys.id_key(sid)
    if add:
        tx.txn.put(key, b"", db=tx.refs)
    else:
        tx.txn.delete(key, db=tx.refs)


def find_committed_by_ref(tx: Txn, ref: str, parent: str) -> str | None:
    """The name of a COMMITTED snapshot labelled ``REF_LABEL=ref`` on ``parent``, or None.

    One prefix seek in the refs index (not a scan of the records); the
    first entry whose record still matches wins.
    """
    pid = _parent_id(tx, parent)
    if pid is None:
        return None
    prefix = _ref_prefix(ref, pid)
    get = tx.txn.get
    with tx.txn.cursor(tx.refs) as cur:
        if not cur.set_range(prefix):
            return None
        for k in cur.iternext(values=False):
            if k[:_REF_PREFIX] != prefix:
                break
            nb = get(k[_REF_PREFIX:], None, tx.ids)
            if nb is None:
                continue
            raw = get(nb, None, tx.snapshots)
            if raw is None:
                continue
            name: str = nb.decode()
            _, kind, p, labels = _record(name, raw)[:4]
            if kind == Kind.COMMITTED and p == parent and labels.get(REF_LABEL) == ref:
                return name
    return None


def build_ref_index(tx: Txn) -> None:
    """Index every COMMITTED snapshot with a ``REF_LABEL`` (a store older than the index)."""
    with tx.txn.cursor(tx.snapshots) as cur:
        for kb, raw in cur.iternext():
            sid, kind, parent, labels = _record(kb.decode(errors="replace"), raw)[:4]
            if kind == Kind.COMMITTED:
                _index_ref(tx, sid, parent, labels.get(REF_LABEL), True)


# ---- the operations ---------------------------------------------------------


def create_snapshot(
    tx: Txn, kind: Kind, key: str, parent: str, labels: Mapping[str, str] | None
) -> Snapshot:
    """Record a new ACTIVE or VIEW snapshot under ``key`` with the next id.

    ``parent`` is "" or the name of a COMMITTED snapshot. ``created`` and
    ``updated`` are now.

    Raises:
        InvalidArgumentError: bad kind, key, parent name or labels; parent not committed.
        AlreadyExistsError: ``key`` is taken.
        NotFoundError: ``parent`` does not exist.
    """
    if kind is not Kind.ACTIVE and kind is not Kind.VIEW:
        raise InvalidArgumentError(f"snapshot {key!r}: cannot create a snapshot of kind {kind!r}")
    kb = _key_bytes(key)
    pb = _key_bytes(parent, "parent") if parent != "" else b""
    clean = validate_labels(labels)
    txn, db = tx.txn, tx.snapshots
    if txn.get(kb, None, db) is not None:
        raise AlreadyExistsError(f"snapshot {key!r} already exists")
    parent_ids: tuple[int, ...] = ()
    if parent:
        raw = txn.get(pb, None, db)
        if raw is None:
            raise NotFoundError(f"snapshot {key!r}: parent snapshot {parent!r} does not exist")
        rec = _record(parent, raw)
        if rec[1] != Kind.COMMITTED:
            raise InvalidArgumentError(
                f"snapshot {key!r}: parent {parent!r} is not a committed snapshot"
            )
        parent_ids = (rec[0], *_ancestors(tx, rec[0], rec[1], rec[2]))
    sid = _next_id(tx)
    now = time.time_ns()
    txn.put(kb, keys.encode_record(sid, kind, parent, clean, now, now), db=db)
    txn.put(keys.id_key(sid), kb, db=tx.ids)
    if parent_ids:
        txn.put(keys.parent_key(parent_ids[0], sid), b"", db=tx.parents)
    if _final_chain(kind, parent):
        tx.learn(sid, parent_ids)
    return Snapshot(sid, kind, parent_ids)


def get_snapshot(tx: Txn, key: str) -> Snapshot:
    """The id, kind and parent ids (immediate parent first) of ``key``.

    Raises:
        NotFoundError: no snapshot ``key``.
    """
    rec = _load(tx, key, _key_bytes(key))
    return Snapshot(rec[0], _KINDS[rec[1]], _ancestors(tx, rec[0], rec[1], rec[2]))  # type: ignore[arg-type]


def get_info(tx: Txn, key: str) -> tuple[int, Info, Usage]:
    """The id, Info and stored Usage of ``key`` (Usage is 0/0 unless committed).

    The stat hot path: one LMDB get, the rest decoded in C.

    Raises:
        NotFoundError: no snapshot ``key``.
        InvalidArgumentError: ``key`` is not a valid key.
    """
    try:
        raw = tx.txn.get(key.encode(), None, tx.snapshots)
    except (AttributeError, UnicodeEncodeError, mdb.BadValSizeError):
        _key_bytes(key)
        raise
    if raw is None:
        _key_bytes(key)
        raise NotFoundError(f"snapshot {key!r} does not exist")
    try:
        return _decode_info(key, raw)
    except _RecordError as e:
        raise _corrupt(key, e) from e


def stat(ms: MetaStore, key: str) -> Info:
    """The Info of ``key``, read in a transaction of its own: the fastest way to one.

    Raises:
        NotFoundError: no snapshot ``key``.
        InvalidArgumentError: ``key`` is not a valid key.
    """
    try:
        kb = key.encode()
    except (AttributeError, UnicodeEncodeError):
        _key_bytes(key)
        raise
    if not kb or len(kb) > MAX_KEY_BYTES:  # LMDB would refuse them
        _key_bytes(key)
    raw = ms.get_record(kb)
    if raw is None:
        _key_bytes(key)  # a NUL in it, rather
        raise NotFoundError(f"snapshot {key!r} does not exist")
    try:
        info: Info = _decode_stat(key, raw)
    except _RecordError as e:
        raise _corrupt(key, e) from e
    return info


def update_info(tx: Txn, info: Info, *fieldpaths: str) -> Info:
    """Change the labels of snapshot ``info.name``; return its new Info.

    No paths, or ``labels``: the labels become ``info.labels``. ``labels.K``:
    K takes ``info.labels.get(K, "")``, and "" deletes it; labels not named
    stay. Empty values are dropped. ``updated`` becomes now; kind, parent and
    times in ``info`` are ignored (containerd's bolt.go UpdateInfo).

    Raises:
        InvalidArgumentError: ``info`` is not an Info; a path other than
            ``labels``/``labels.K``; bad labels.
        NotFoundError: no snapshot ``info.name``.
    """
    if not isinstance(info, Info):
        raise InvalidArgumentError(f"update needs an Info, not {type(info).__name__}")
    key = info[1]
    kb = _key_bytes(key)
    given = info[3] if info[3] is not None else {}
    sid, kind, parent, labels, created, _, size, inodes = _load(tx, key, kb)
    old_ref = labels.get(REF_LABEL)
    if not fieldpaths:
        labels = dict(given)
    for path in fieldpaths:
        if path == "labels":
            labels = dict(given)
        elif isinstance(path, str) and path.startswith("labels."):
            k = path[len("labels.") :]
            labels[k] = given.get(k, "")
        else:
            raise InvalidArgumentError(f"cannot update {path!r} field on snapshot {key!r}")
    clean = validate_labels(labels)
    now = time.time_ns()
    record = keys.encode_record(sid, kind, parent, clean, created, now, size, inodes)
    tx.txn.put(kb, record, db=tx.snapshots)
    new_ref = clean.get(REF_LABEL)
    if kind == Kind.COMMITTED and new_ref != old_ref:
        _index_ref(tx, sid, parent, old_ref, False)
        _index_ref(tx, sid, parent, new_ref, True)
    return tuple.__new__(Info, (_KINDS[kind], key, parent, clean, created, now))


def commit_active(
    tx: Txn,
    key: str,
    name: str,
    usage: Usage,
    labels: Mapping[str, str] | None,
    expected_id: int | None = None,
    parent: str = "",
) -> int:
    """Turn ACTIVE ``key`` into COMMITTED ``name``; return the (unchanged) id.

    ``name`` keeps the id and parent, gets ``usage`` and only the labels of
    this call; ``created`` = ``updated`` = now. ``key`` disappears. A
    ``parent`` given for a snapshot prepared without one becomes its parent
    (containerd 2.2's rebase on commit); the same parent again changes nothing.

    Raises (in this order, as containerd's bolt.go CommitActive):
        InvalidArgumentError: bad key, name, parent, labels or usage; a
            ``parent`` other than the one already set ("cannot change parent").
        NotFoundError: no snapshot ``key``, or its id is not ``expected_id``;
            no snapshot ``parent``.
        AlreadyExistsError: ``name`` is taken.
        FailedPreconditionError: ``key`` is not ACTIVE; ``parent`` is not COMMITTED.
    """
    kb = _key_bytes(key)
    nb = _key_bytes(name, "name")
    if parent != "":
        _key_bytes(parent, "parent")
    clean = validate_labels(labels)
    size = _usage_int(usage[0], "size")
    inodes = _usage_int(usage[1], "inodes")
    txn, db = tx.txn, tx.snapshots
    sid, kind, old_parent = _load(tx, key, kb)[:3]
    # A key recreated since the caller read it is the snapshot gone, like a
    # missing key: checked first, whatever the new one's kind.
    if expected_id is not None and sid != expected_id:
        raise NotFoundError(
            f"snapshot {key!r} was removed and recreated (id {sid}, expected {expected_id})"
        )
    if txn.get(nb, None, db) is not None:
        raise AlreadyExistsError(f"cannot commit {key!r}: snapshot {name!r} already exists")
    if kind != Kind.ACTIVE:
        raise FailedPreconditionError(
            f"cannot commit snapshot {key!r}: it is {_KINDS[kind]}, not active"
        )
    if parent and parent != old_parent:
        _rebase(tx, key, sid, old_parent, parent)
    else:
        parent = old_parent
    now = time.time_ns()
    txn.delete(kb, db=db)
    record = keys.encode_record(sid, Kind.COMMITTED, parent, clean, now, now, size, inodes)
    txn.put(nb, record, db=db)
    txn.put(keys.id_key(sid), nb, db=tx.ids)
    _index_ref(tx, sid, parent, clean.get(REF_LABEL), True)
    return sid


def _rebase(tx: Txn, key: str, sid: int, old_parent: str, parent: str) -> None:
    """Link the parentless snapshot ``sid`` under the COMMITTED ``parent`` (commit's rebase)."""
    if old_parent:
        raise InvalidArgumentError(
            f"cannot change parent of active snapshot {key!r} on commit "
            f"(from {old_parent!r} to {parent!r})"
        )
    raw = tx.txn.get(parent.encode(), None, tx.snapshots)
    if raw is None:
        raise NotFoundError(f"commit {key!r}: parent snapshot {parent!r} does not exist")
    rec = _record(parent, raw)
    if rec[1] != Kind.COMMITTED:
        raise FailedPreconditionError(f"commit {key!r}: parent {parent!r} is not committed")
    tx.txn.put(keys.parent_key(rec[0], sid), b"", db=tx.parents)


def remove(tx: Txn, key: str) -> tuple[int, Kind]:
    """Delete the record of ``key``; return its id and kind.

    Raises:
        NotFoundError: no snapshot ``key``.
        FailedPreconditionError: ``key`` has children.
    """
    kb = _key_bytes(key)
    txn, db = tx.txn, tx.snapshots
    sid, kind, parent, labels = _load(tx, key, kb)[:4]
    prefix = keys.id_key(sid)
    with txn.cursor(tx.parents) as cur:
        if cur.set_range(prefix) and cur.key()[:8] == prefix:
            raise FailedPreconditionError(f"cannot remove snapshot with child: {key!r}")
    if parent:
        praw = txn.get(parent.encode(), None, db)
        if praw is not None:  # tolerate a missing parent: let a corrupt store be emptied
            txn.delete(keys.parent_key(_record(parent, praw)[0], sid), db=tx.parents)
    if kind == Kind.COMMITTED:
        _index_ref(tx, sid, parent, labels.get(REF_LABEL), False)
    txn.delete(kb, db=db)
    txn.delete(prefix, db=tx.ids)
    return sid, Kind(kind)


def walk_info(tx: Txn) -> list[Info]:
    """The Info of every snapshot, in name order (bytewise UTF-8)."""
    try:
        infos: list[Info] = mdb.snapshot_infos(tx.txn, tx.snapshots)
    except _RecordError as e:
        raise CorruptStoreError(f"metadata store corrupt: {e}") from e
    return infos


def id_map(tx: Txn) -> dict[int, str]:
    """The ids of all live snapshots and their names (cleanup's list of owners)."""
    with tx.txn.cursor(tx.ids) as cur:
        try:
            return {keys.decode_id(k): v.decode() for k, v in cur.iternext()}
        except (_RecordError, UnicodeDecodeError) as e:
            raise CorruptStoreError(f"metadata store corrupt: {e}") from e
