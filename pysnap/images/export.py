"""Exporting a chain of snapshots as an OCI image layout (a directory, or a tar).

A layer that came from a blob (unpack recorded its digest, media type and
size as labels and kept the blob under the root) is written as that very
blob, so the image shares its base with its source, in containerd and in
registries, as ``umoci repack`` does; only layers made on pysnap are diffed.
Every document is canonical JSON (sorted keys, no spaces) and the tar's
headers are fixed (owner 0, mode 0644/0755, the mtime of ``SOURCE_DATE_EPOCH``
or 0), so unchanged inputs give byte-identical output.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import secrets
import tarfile
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from .. import blobstore
from ..errors import AlreadyExistsError, FailedPreconditionError, InvalidArgumentError
from ..fsutil import remove_tree
from ..types import Info, Kind
from .oci import (
    CONTAINERD_NAME,
    LAYER_TYPES,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYOUT_VERSION,
    OCI_MANIFEST,
    REF_NAME,
    Descriptor,
    Platform,
    check_digest,
    digest_of,
)
from .unpack import DIFF_ID_LABEL

if TYPE_CHECKING:
    from ..overlay import OverlaySnapshotter

__all__ = ["CONFIG_KEYS", "export"]

# The fields of a config's "config" section (OCI image spec, config.md), with their JSON types.
CONFIG_KEYS: Mapping[str, type] = {
    "User": str,
    "ExposedPorts": dict,
    "Env": list,
    "Entrypoint": list,
    "Cmd": list,
    "Volumes": dict,
    "WorkingDir": str,
    "Labels": dict,
    "StopSignal": str,
    "ArgsEscaped": bool,
}
_OF_STRINGS = {"Env", "Entrypoint", "Cmd", "Labels"}  # lists of strings; Labels' values
_CHUNK = 1 << 20


def _json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _created() -> tuple[str | None, int]:
    """(RFC 3339 time, mtime) from ``SOURCE_DATE_EPOCH``; (None, 0) when it is unset."""
    value = os.environ.get("SOURCE_DATE_EPOCH")
    if value is None or value == "":
        return None, 0
    if not value.isdigit():
        raise InvalidArgumentError(f"SOURCE_DATE_EPOCH={value!r} is not a number of seconds")
    try:
        when = _dt.datetime.fromtimestamp(int(value), _dt.UTC)
    except (ValueError, OverflowError, OSError):
        raise InvalidArgumentError(f"SOURCE_DATE_EPOCH={value} is past the year 9999") from None
    return when.strftime("%Y-%m-%dT%H:%M:%SZ"), int(value)


def check_config(config: object) -> dict[str, Any]:
    """The ``config`` section as given, if every field is one of CONFIG_KEYS of its type."""
    if config is None:
        return {}
    if not isinstance(config, Mapping):
        raise InvalidArgumentError("export: the config must be a JSON object")
    for key, value in config.items():
        kind = CONFIG_KEYS.get(key)
        if kind is None:
            raise InvalidArgumentError(
                f"export: config field {key!r} is not one of {', '.join(CONFIG_KEYS)}"
            )
        if not isinstance(value, kind):
            raise InvalidArgumentError(f"export: config field {key!r} must be a {kind.__name__}")
        if key in _OF_STRINGS:
            items = value.values() if isinstance(value, dict) else cast(list[object], value)
            if not all(isinstance(v, str) for v in items):
                raise InvalidArgumentError(
                    f"export: config field {key!r} must be a {kind.__name__} of strings"
                )
    return dict(config)


@dataclass(frozen=True)
class _Blob:
    """A blob to write: its descriptor and its bytes (a file, or ``data``); a layer's diff ID."""

    desc: Descriptor
    path: str | None = None
    data: bytes = b""
    diff_id: str = ""


def _chain(sn: OverlaySnapshotter, name: str) -> list[Info]:
    """``name`` and its parents, base first; ``name`` must be committed."""
    info = sn.stat(name)
    if info.kind != Kind.COMMITTED:
        raise FailedPreconditionError(
            f"export {name!r}: snapshot is not committed; commit it first"
        )
    chain = [info]
    while chain[-1].parent:
        chain.append(sn.stat(chain[-1].parent))
    return chain[::-1]


def _stored_blob(sn: OverlaySnapshotter, info: Info) -> _Blob | None:
    """The blob ``info`` was unpacked from, if its labels name one that is still kept."""
    labels = info.labels
    digest = labels.get(blobstore.BLOB_DIGEST_LABEL, "")
    media_type = labels.get(blobstore.BLOB_MEDIA_TYPE_LABEL, "")
    size = labels.get(blobstore.BLOB_SIZE_LABEL, "")
    if not digest or media_type not in LAYER_TYPES or not size.isdigit():
        return None
    if DIFF_ID_LABEL not in labels:
        return None
    try:
        digest = check_digest(digest, "label")
    except InvalidArgumentError:
        return None
    path = blobstore.blob_path(sn.root, digest)
    try:
        if os.stat(path).st_size != int(size):
            return None
    except FileNotFoundError:
        return None
    desc = Descriptor(LAYER_TYPES[media_type], digest, int(size))
    return _Blob(desc, path, diff_id=labels[DIFF_ID_LABEL])


def export(
    sn: OverlaySnapshotter,
    name: str,
    dest: str | os.PathLike[str] | BinaryIO,
    *,
    ref: str | None = None,
    config: Mapping[str, Any] | None = None,
    compression: str | None = "gzip",
) -> Descriptor:
    """Write the chain of the committed snapshot ``name`` as an OCI image layout at ``dest``.

    ``dest``: a directory (new, or empty), or a tar file when it ends in
    ``.tar`` (replaced if present), or a binary file object that the tar is
    written to (``ctr images export -``). ``ref`` names the image in index.json
    (``org.opencontainers.image.ref.name`` and ``io.containerd.image.name``).
    ``config``: the config's ``config`` section (Cmd, Entrypoint, Env,
    WorkingDir, ...). ``compression`` (``"gzip"``, ``"zstd"`` or None) is
    used for the layers that are diffed. ``architecture`` and ``os`` are
    this machine's; ``created`` comes from ``SOURCE_DATE_EPOCH`` or is left
    out. Returns the manifest's descriptor.

    Raises:
        NotFoundError: no snapshot ``name`` (or a parent vanished meanwhile).
        FailedPreconditionError: ``name`` is not committed.
        AlreadyExistsError: ``dest`` is a directory that is not empty.
        InvalidArgumentError: a bad config, compression or SOURCE_DATE_EPOCH.
    """
    section = check_config(config)
    if compression not in ("gzip", "zstd", None):
        raise InvalidArgumentError(f"export: compression {compression!r} is not gzip, zstd or None")
    created, mtime = _created()
    path = os.path.abspath(os.fspath(dest)) if isinstance(dest, (str, os.PathLike)) else None
    if path is not None:
        _check_dest(name, path)
    chain = _chain(sn, name)
    if path is None:  # the diffs wait in TMPDIR (as skopeo's and umoci's)
        stage = tempfile.mkdtemp(prefix="pysnap-export-")
    else:
        stage = f"{path}.tmp-{secrets.token_hex(6)}"
        os.mkdir(stage, 0o700)
    try:
        layers = [
            _stored_blob(sn, info) or _diff(sn, info, stage, i, compression)
            for i, info in enumerate(chain)
        ]
        platform = _platform()
        config_blob = _document(OCI_CONFIG, _config(chain, layers, section, created, platform))
        manifest_blob = _document(
            OCI_MANIFEST,
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": config_blob.desc.to_json(),
                "layers": [b.desc.to_json() for b in layers],
            },
        )
        annotations = {REF_NAME: ref, CONTAINERD_NAME: ref} if ref else {}
        top = Descriptor(
            OCI_MANIFEST,
            manifest_blob.desc.digest,
            manifest_blob.desc.size,
            annotations=annotations,
            platform=platform,
        )
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [top.to_json()]}
        files = {
            "oci-layout": _json({"imageLayoutVersion": OCI_LAYOUT_VERSION}),
            "index.json": _json(index),
        }
        blobs = {b.desc.digest: b for b in [*layers, config_blob, manifest_blob]}
        if path is None:
            _write_tar(cast(BinaryIO, dest), files, blobs, mtime)
        elif path.endswith(".tar"):
            out = os.path.join(stage, "layout.tar")
            with open(out, "wb") as f:
                _write_tar(f, files, blobs, mtime)
            os.rename(out, path)
        else:
            _write_dir(stage, path, files, blobs)
    finally:
        remove_tree(stage)
    return top


def _check_dest(name: str, dest: str) -> None:
    """A layout directory must be new or empty; a tar (``*.tar``) is replaced."""
    if dest.endswith(".tar"):
        return
    if os.path.isdir(dest) and os.listdir(dest):
        raise AlreadyExistsError(f"export {name!r}: {dest} is a directory that is not empty")
    if os.path.lexists(dest) and not os.path.isdir(dest):
        raise AlreadyExistsError(
            f"export {name!r}: {dest} exists and is not a directory (a tar's name ends in .tar)"
        )


def _platform() -> dict[str, str]:
    host = Platform.host()
    platform = {"architecture": host.architecture, "os": host.os}
    if host.variant:
        platform["variant"] = host.variant
    return platform


def _config(
    chain: list[Info],
    layers: list[_Blob],
    section: dict[str, Any],
    created: str | None,
    platform: dict[str, str],
) -> dict[str, Any]:
    """The image config: one history entry per layer, ``rootfs.diff_ids`` base first."""
    history: list[dict[str, str]] = [{"created_by": f"pysnap snapshot {i.name}"} for i in chain]
    config: dict[str, Any] = {**platform, "config": section, "history": history}
    config["rootfs"] = {"type": "layers", "diff_ids": [b.diff_id for b in layers]}
    if created is not None:
        config["created"] = created
        for h in history:
            h["created"] = created
    return config


def _document(media_type: str, obj: Any) -> _Blob:
    data = _json(obj)
    return _Blob(Descriptor(media_type, digest_of(data), len(data)), data=data)


def _diff(sn: OverlaySnapshotter, info: Info, stage: str, i: int, compression: str | None) -> _Blob:
    """Diff one snapshot into a file under ``stage``."""
    path = os.path.join(stage, f"layer-{i}")
    layer = sn.diff(info.name, path, compression=compression)
    media_type = LAYER_TYPES.get(layer.media_type, layer.media_type)
    return _Blob(Descriptor(media_type, layer.digest, layer.size), path, diff_id=layer.diff_id)


def _copy(blob: _Blob, out: BinaryIO) -> None:
    """Write ``blob`` to ``out``; a stored blob is re-verified on the way (it may have rotted)."""
    if blob.path is None:
        out.write(blob.data)
        return
    h = hashlib.new(blob.desc.digest.partition(":")[0])
    read = 0
    with open(blob.path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            read += len(chunk)
            out.write(chunk)
    if read != blob.desc.size or f"{h.name}:{h.hexdigest()}" != blob.desc.digest:
        raise InvalidArgumentError(
            f"export: blob {blob.desc.digest} ({blob.path}) no longer has its digest; "
            "remove the snapshot's blob labels to make export diff it instead"
        )


def _blob_name(digest: str) -> str:
    alg, _, hex_ = digest.partition(":")
    return f"blobs/{alg}/{hex_}"


def _write_dir(stage: str, dest: str, files: dict[str, bytes], blobs: dict[str, _Blob]) -> None:
    out = os.path.join(stage, "layout")
    for digest, blob in sorted(blobs.items()):
        path = os.path.join(out, _blob_name(digest))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            _copy(blob, f)
    for name, data in files.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(dest)  # empty (checked); a directory that filled meanwhile fails the rename
    os.rename(out, dest)


def _write_tar(f: BinaryIO, files: dict[str, bytes], blobs: dict[str, _Blob], mtime: int) -> None:
    """A tar of the layout into ``f``, written by hand so blobs stream through ``_copy``.

    Fixed headers (owner 0, mode 0644/0755, ``mtime``) and a fixed member
    order make it byte-identical for unchanged inputs. Headers are ustar, and
    PAX only where a name does not fit (a sha512 blob's 128-character name).
    """

    def header(f: BinaryIO, name: str, size: int = 0) -> None:
        ti = tarfile.TarInfo(name)
        ti.size, ti.mtime, ti.uname, ti.gname = size, mtime, "", ""
        ti.type = tarfile.DIRTYPE if name.endswith("/") else tarfile.REGTYPE
        ti.mode = 0o755 if ti.type == tarfile.DIRTYPE else 0o644
        f.write(ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "strict"))

    def pad(f: BinaryIO, size: int) -> None:
        f.write(bytes(-size % tarfile.BLOCKSIZE))

    for name in ("oci-layout", "index.json"):
        header(f, name, len(files[name]))
        f.write(files[name])
        pad(f, len(files[name]))
    made = set()
    for digest, blob in sorted(blobs.items()):
        name = _blob_name(digest)
        for d in ("blobs/", name.rpartition("/")[0] + "/"):
            if d not in made:
                header(f, d)
                made.add(d)
        header(f, name, blob.desc.size)
        _copy(blob, f)
        pad(f, blob.desc.size)
    f.write(bytes(2 * tarfile.BLOCKSIZE))  # the end-of-archive marker
