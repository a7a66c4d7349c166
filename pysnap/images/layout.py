"""Reading images: OCI image layouts (a directory or a tar of one) and ``docker save`` archives.

``ImageSource(path)`` opens either; ``resolve(ref, platform)`` follows
``index.json`` (nested indexes included) to the manifest for the platform,
reads and checks the manifest and the config, and returns the layers to
apply; ``open_blob`` streams one blob through a ``VerifiedReader`` that
checks its size and digest. Every document is verified by its digest before
it is parsed. Legacy ``docker save`` archives name no layer digests: their
config is checked by its file name and their layers by ``rootfs.diff_ids``
(the apply checks those). Docker 25+ writes an OCI layout beside its
``manifest.json``; the layout is read then.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import stat
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from ..errors import InvalidArgumentError, NotFoundError
from .oci import (
    CONFIG_TYPES,
    CONTAINERD_NAME,
    INDEX_TYPES,
    MANIFEST_TYPES,
    NON_DISTRIBUTABLE,
    REF_NAME,
    Descriptor,
    Platform,
    check_digest,
    check_layer_type,
)
from .stream import Slice, VerifiedReader

__all__ = ["ImageSource", "LayerBlob", "Resolved", "normalize_ref"]

_JSON_LIMIT = 16 << 20  # manifests, indexes and configs larger than this are refused
_MAX_DEPTH = 8  # nested indexes followed (a cycle of indexes ends here)


class _Files:
    """The files of a layout or archive, by their normalised relative path."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._dir = stat.S_ISDIR(os.fstat(self._fd).st_mode)
        self._members: dict[str, tuple[int, int] | str] = {}
        if not self._dir:
            self._index_tar()

    def _index_tar(self) -> None:
        # Only the headers of a few dozen members are read (data is seeked
        # past): tarfile is fine here, unlike in a layer's entry loop.
        end = os.fstat(self._fd).st_size
        last = "its first member"
        try:
            with os.fdopen(os.dup(self._fd), "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
                for m in tar:
                    name = _clean(m.name)
                    if m.offset_data + m.size > end:
                        raise self._truncated(name)
                    last = name
                    if m.isfile():
                        self._members[name] = (m.offset_data, m.size)
                    elif m.issym():
                        self._members[name] = posixpath.join(posixpath.dirname(name), m.linkname)
                    elif m.islnk():
                        self._members[name] = m.linkname
                stop = tar.offset
        except (tarfile.TarError, EOFError) as e:
            raise InvalidArgumentError(
                f"{self.path}: not a readable tar (a compressed one?): {e}"
            ) from None
        # tarfile ends quietly at a header cut short; every tar writer ends
        # with two zero blocks, which a truncated archive lacks.
        if os.pread(self._fd, 2 * tarfile.BLOCKSIZE, stop) != bytes(2 * tarfile.BLOCKSIZE):
            raise self._truncated(f"the member after {last}")

    def _truncated(self, name: str) -> InvalidArgumentError:
        return InvalidArgumentError(f"{self.path}: truncated archive: {name} is cut short")

    def close(self) -> None:
        os.close(self._fd)

    def open(self, name: str) -> tuple[io.RawIOBase, int] | None:
        """(stream, size) of the file ``name`` (clean, relative), or None if absent."""
        if self._dir:
            try:
                fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=self._fd)
            except (FileNotFoundError, NotADirectoryError):
                return None
            f = io.FileIO(fd, "rb")
            return f, os.fstat(fd).st_size
        for _ in range(_MAX_DEPTH):  # symlinks and hard links (docker save shares layers so)
            member = self._members.get(_clean(name))
            if not isinstance(member, str):
                break
            name = member
        if member is None or isinstance(member, str):
            return None
        return Slice(self._fd, *member), member[1]


def _clean(name: str) -> str:
    """A member or file name as a clean relative path; InvalidArgumentError if it escapes."""
    norm = posixpath.normpath(name).lstrip("/")
    if norm == ".." or norm.startswith("../"):
        raise InvalidArgumentError(f"path {name!r} leaves the image layout")
    return norm


@dataclass(frozen=True)
class LayerBlob:
    """A layer to apply: its descriptor and its file in the source.

    A legacy docker layer has ``digest == ""`` (not known before it is read).
    """

    desc: Descriptor
    path: str


@dataclass(frozen=True)
class Resolved:
    """What ``resolve`` found: the manifest (``""`` in a legacy docker archive), config, layers."""

    manifest_digest: str
    config_digest: str
    config: Mapping[str, Any]
    diff_ids: tuple[str, ...]
    layers: tuple[LayerBlob, ...]


def normalize_ref(ref: str) -> str:
    """A docker reference in full: ``busybox`` -> ``docker.io/library/busybox:latest``."""
    name, at, digest = ref.partition("@")
    first, slash, _ = name.partition("/")
    if not slash or ("." not in first and ":" not in first and first != "localhost"):
        name = ("docker.io/" if slash else "docker.io/library/") + name
    if not at and ":" not in name.rpartition("/")[2]:
        name += ":latest"
    return name + at + digest


def _ref_matches(ref: str, names: list[str]) -> bool:
    """Whether ``ref`` names the image called ``names``: a tag exactly, a reference in full."""
    if ref in names:
        return True
    full = {normalize_ref(n) for n in names if any(c in n for c in ":/@")}  # a tag has none
    return normalize_ref(ref) in full


def _blob_name(digest: str) -> str:
    alg, _, hex_ = digest.partition(":")
    return f"blobs/{alg}/{hex_}"


class ImageSource:
    """An OCI image layout (directory or tar) or a ``docker save`` archive, opened."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        try:
            self._files = _Files(self.path)
        except FileNotFoundError:
            raise NotFoundError(f"image source {self.path!r}: no such file or directory") from None
        try:
            self._oci = self._files.open("index.json") is not None
            if not self._oci and self._files.open("manifest.json") is None:
                raise InvalidArgumentError(
                    f"{self.path}: neither an OCI image layout (index.json) "
                    "nor a docker save archive (manifest.json)"
                )
            if self._oci:
                layout = self._read_json("oci-layout", "oci-layout")
                version = layout.get("imageLayoutVersion") if isinstance(layout, dict) else None
                if not isinstance(version, str) or not version.startswith("1."):
                    raise InvalidArgumentError(
                        f"{self.path}: oci-layout version {version!r} is not 1.x"
                    )
        except BaseException:
            self._files.close()
            raise

    def close(self) -> None:
        self._files.close()

    def __enter__(self) -> ImageSource:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- blobs --------------------------------------------------------------

    def open_blob(
        self, blob: LayerBlob, what: str, tee: Any = None, *, hashing: bool = True
    ) -> VerifiedReader:
        """A verified stream of ``blob``; NotFoundError if absent, InvalidArgumentError on size.

        ``hashing=False``: the consumer hashes it (see VerifiedReader).
        """
        desc = blob.desc
        found = self._files.open(blob.path)
        if found is None:
            kind = "non-distributable " if desc.media_type in NON_DISTRIBUTABLE else ""
            where = f"; its URLs: {', '.join(desc.urls)}" if desc.urls else ""
            raise NotFoundError(f"{what}: {kind}blob not in {self.path}{where}")
        raw, size = found
        if desc.digest and size != desc.size:
            raw.close()
            raise InvalidArgumentError(
                f"{what}: the blob is {size} bytes, its descriptor says {desc.size}"
            )
        return VerifiedReader(raw, size, desc.digest or None, what, tee, hashing=hashing)

    def has_blob(self, blob: LayerBlob) -> bool:
        found = self._files.open(blob.path)
        if found is not None:
            found[0].close()
        return found is not None

    def _read_json(
        self, name: str, what: str, digest: str | None = None, size: int | None = None
    ) -> Any:
        """The JSON document ``name``, verified against ``digest`` and ``size`` if given."""
        found = self._files.open(name)
        if found is None:
            raise NotFoundError(f"{what}: not in {self.path}")
        raw, actual = found
        with raw:
            if actual > _JSON_LIMIT:
                raise InvalidArgumentError(f"{what}: {actual} bytes, more than a document may be")
            if size is not None and actual != size:
                raise InvalidArgumentError(
                    f"{what}: the blob is {actual} bytes, its descriptor says {size}"
                )
            reader = VerifiedReader(raw, actual, digest, what)
            data = reader.read()
            reader.finish()
        try:
            return json.loads(data)
        except ValueError as e:
            raise InvalidArgumentError(f"{what}: not JSON: {e}") from None

    def _doc(self, desc: Descriptor, what: str) -> dict[str, Any]:
        doc = self._read_json(_blob_name(desc.digest), what, desc.digest, desc.size)
        if not isinstance(doc, dict):
            raise InvalidArgumentError(f"{what}: not a JSON object")
        return doc

    # -- resolving ----------------------------------------------------------

    def resolve(self, ref: str | None = None, platform: str | None = None) -> Resolved:
        """The image ``ref`` names (or the only one) for ``platform`` (default: this machine)."""
        want = Platform.parse(platform) if platform is not None else Platform.host()
        if self._oci:
            return self._resolve_oci(ref, want)
        return self._resolve_docker(ref)

    def _resolve_oci(self, ref: str | None, want: Platform) -> Resolved:
        index = self._read_json("index.json", "index.json")
        entries = _manifests(index, "index.json")
        names = [
            [n for n in (e.annotations.get(CONTAINERD_NAME), e.annotations.get(REF_NAME)) if n]
            for e in entries
        ]
        if ref is not None:
            chosen = [e for e, n in zip(entries, names, strict=True) if _ref_matches(ref, n)]
            if not chosen:
                raise NotFoundError(f"{self.path}: no image {ref!r} (has: {_listing(names)})")
        else:
            if len({n[0] if n else "" for n in names}) > 1:
                raise InvalidArgumentError(
                    f"{self.path} holds several images; choose one by ref: {_listing(names)}"
                )
            chosen = entries
        seen: list[str] = []
        found = self._match(chosen, want, 0, seen)
        if found is None:
            raise NotFoundError(
                f"{self.path}: no manifest for platform {want} (has: {', '.join(seen) or 'none'})"
            )
        return self._image(found[1], found[2])

    def _match(
        self, descs: list[Descriptor], want: Platform, depth: int, seen: list[str]
    ) -> tuple[int, Descriptor, dict[str, Any]] | None:
        """The best (rank, manifest descriptor, manifest) for ``want`` in ``descs``.

        Indexes among ``descs`` are followed; the first of equally good wins.
        """
        best: tuple[int, Descriptor, dict[str, Any]] | None = None
        for desc in descs:
            what = f"manifest {desc.digest}"
            if desc.media_type in INDEX_TYPES:
                if depth >= _MAX_DEPTH:
                    raise InvalidArgumentError(f"index {desc.digest}: nested too deeply")
                child = _manifests(self._doc(desc, f"index {desc.digest}"), f"index {desc.digest}")
                found = self._match(child, want, depth + 1, seen)
                if found is not None and (best is None or found[0] < best[0]):
                    best = found
                continue
            if desc.media_type not in MANIFEST_TYPES:
                continue  # not an image (containerd skips unknown children too)
            manifest: dict[str, Any] | None = None
            if desc.platform is not None:
                plat = Platform.from_json(desc.platform)
            else:  # containerd reads the config when the index does not say
                manifest = self._doc(desc, what)
                config = self._doc(_config_desc(manifest, what), f"config of {what}")
                plat = Platform.from_json(config) if "os" in config else want
            seen.append(str(plat))
            rank = want.rank(plat)
            if rank is not None and (best is None or rank < best[0]):
                best = (rank, desc, manifest or self._doc(desc, what))
        return best

    def _image(self, desc: Descriptor, manifest: dict[str, Any]) -> Resolved:
        what = f"manifest {desc.digest}"
        if manifest.get("schemaVersion") != 2:
            raise InvalidArgumentError(f"{what}: schemaVersion is not 2")
        config_desc = _config_desc(manifest, what)
        if config_desc.media_type not in CONFIG_TYPES:
            raise InvalidArgumentError(
                f"{what}: not an image (config media type {config_desc.media_type!r})"
            )
        layers = manifest.get("layers")
        if not isinstance(layers, list):
            raise InvalidArgumentError(f"{what}: layers is not a list")
        blobs = []
        for i, obj in enumerate(layers):
            layer = Descriptor.parse(obj, f"{what} layer {i}")
            check_layer_type(layer, f"layer {i}")
            blobs.append(LayerBlob(layer, _blob_name(layer.digest)))
        config = self._doc(config_desc, f"config {config_desc.digest}")
        diff_ids = _diff_ids(config, len(blobs), f"config {config_desc.digest}")
        return Resolved(desc.digest, config_desc.digest, config, diff_ids, tuple(blobs))

    def _resolve_docker(self, ref: str | None) -> Resolved:
        doc = self._read_json("manifest.json", "manifest.json")
        if not isinstance(doc, list) or not all(isinstance(e, dict) for e in doc) or not doc:
            raise InvalidArgumentError(f"{self.path}: manifest.json is not a list of images")
        names = [list(e.get("RepoTags") or []) for e in doc]
        if ref is not None:
            chosen = [e for e, n in zip(doc, names, strict=True) if _ref_matches(ref, n)]
            if not chosen:
                raise NotFoundError(f"{self.path}: no image {ref!r} (has: {_listing(names)})")
        elif len(doc) > 1:
            raise InvalidArgumentError(
                f"{self.path} holds several images; choose one by ref: {_listing(names)}"
            )
        else:
            chosen = doc
        entry = chosen[0]
        config_name, layers = entry.get("Config"), entry.get("Layers")
        if not isinstance(config_name, str) or not isinstance(layers, list):
            raise InvalidArgumentError(f"{self.path}: manifest.json entry without Config or Layers")
        # The config's file name is its digest: "<hex>.json", or "blobs/sha256/<hex>" (Docker 25).
        base = posixpath.basename(config_name).removesuffix(".json")
        alg = (
            "sha256"
            if config_name.endswith(".json")
            else posixpath.basename(posixpath.dirname(config_name))
        )
        config_digest = check_digest(f"{alg}:{base}", f"config {config_name}")
        config = self._read_json(_clean(config_name), f"config {config_name}", config_digest)
        if not isinstance(config, dict):
            raise InvalidArgumentError(f"config {config_name}: not a JSON object")
        blobs = []
        for i, name in enumerate(layers):
            if not isinstance(name, str):
                raise InvalidArgumentError(f"{self.path}: layer {i} name is not a string")
            found = self._files.open(_clean(name))
            if found is None:
                raise NotFoundError(f"layer {i} {name}: not in {self.path}")
            found[0].close()
            desc = Descriptor("application/vnd.docker.image.rootfs.diff.tar", "", found[1])
            blobs.append(LayerBlob(desc, _clean(name)))
        diff_ids = _diff_ids(config, len(blobs), f"config {config_name}")
        return Resolved("", config_digest, config, diff_ids, tuple(blobs))


def _manifests(index: object, what: str) -> list[Descriptor]:
    if not isinstance(index, dict) or index.get("schemaVersion") != 2:
        raise InvalidArgumentError(f"{what}: not an image index (schemaVersion 2)")
    media_type = index.get("mediaType")
    if media_type is not None and media_type not in INDEX_TYPES:
        raise InvalidArgumentError(f"{what}: media type {media_type!r} is not an index")
    entries = index.get("manifests")
    if not isinstance(entries, list):
        raise InvalidArgumentError(f"{what}: manifests is not a list")
    return [Descriptor.parse(e, f"{what} manifests[{i}]") for i, e in enumerate(entries)]


def _config_desc(manifest: dict[str, Any], what: str) -> Descriptor:
    media_type = manifest.get("mediaType")
    if media_type is not None and media_type not in MANIFEST_TYPES:
        raise InvalidArgumentError(f"{what}: media type {media_type!r} is not a manifest")
    return Descriptor.parse(manifest.get("config"), f"{what} config")


def _diff_ids(config: dict[str, Any], layers: int, what: str) -> tuple[str, ...]:
    rootfs = config.get("rootfs")
    if not isinstance(rootfs, dict) or rootfs.get("type") != "layers":
        raise InvalidArgumentError(f"{what}: rootfs.type is not 'layers'")
    diff_ids = rootfs.get("diff_ids")
    if not isinstance(diff_ids, list):
        raise InvalidArgumentError(f"{what}: rootfs.diff_ids is not a list")
    if len(diff_ids) != layers:
        raise InvalidArgumentError(
            f"{what}: {len(diff_ids)} diff IDs for {layers} layers in the manifest"
        )
    return tuple(check_digest(d, f"{what} diff ID {i}") for i, d in enumerate(diff_ids))


def _listing(names: list[list[str]]) -> str:
    return ", ".join(n[0] if n else "<unnamed>" for n in names) or "none"
