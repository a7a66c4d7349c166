"""Building real image layouts and archives for the image tests: layers, blobs, index.json."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_tar(files: Mapping[str, bytes]) -> bytes:
    """An uncompressed layer: regular files (parents as directories), fixed metadata."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs: set[str] = set()
        for name, data in files.items():
            parts = name.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d not in dirs:
                    dirs.add(d)
                    ti = tarfile.TarInfo(d)
                    ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, 1_600_000_000
                    tar.addfile(ti)
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode, ti.mtime = len(data), 0o644, 1_600_000_000
            tar.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


class Layout:
    """An OCI image layout being written into a directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        (path / "blobs" / "sha256").mkdir(parents=True)
        (path / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')

    def blob(self, data: bytes, media_type: str, **extra: Any) -> dict[str, Any]:
        """Store ``data``; its descriptor."""
        digest = sha(data)
        (self.path / "blobs" / "sha256" / digest[7:]).write_bytes(data)
        return {"mediaType": media_type, "digest": digest, "size": len(data), **extra}

    def doc(self, obj: Any, media_type: str, **extra: Any) -> dict[str, Any]:
        return self.blob(json.dumps(obj).encode(), media_type, **extra)

    def image(
        self,
        layers: list[bytes],
        *,
        arch: str = "amd64",
        layer_type: str = OCI_LAYER_GZIP,
        compress: bool = True,
        **extra: Any,
    ) -> dict[str, Any]:
        """A manifest of ``layers`` (uncompressed tars; gzipped unless told); its descriptor."""
        diff_ids = [sha(t) for t in layers]
        config = {
            "architecture": arch,
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": self.doc(config, OCI_CONFIG),
            "layers": [self.blob(gz(t) if compress else t, layer_type) for t in layers],
        }
        return self.doc(manifest, OCI_MANIFEST, **extra)

    def index(self, manifests: list[dict[str, Any]]) -> None:
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
        (self.path / "index.json").write_text(json.dumps(index))


def tar_of(directory: Path, out: Path) -> Path:
    """A tar of a layout directory's contents (as ``skopeo copy oci-archive:`` writes)."""
    with tarfile.open(out, "w") as tar:
        for name in sorted(os.listdir(directory)):
            tar.add(directory / name, arcname=name)
    return out


def docker_archive(path: Path, images: list[tuple[list[str], list[bytes]]]) -> Path:
    """A legacy ``docker save`` archive: ``<hex>.json`` configs, ``<id>/layer.tar`` layers."""
    entries, members = [], {}
    for tags, layers in images:
        config = json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": [sha(t) for t in layers]},
            }
        ).encode()
        names = []
        for t in layers:
            name = f"{hashlib.sha256(b'id' + t).hexdigest()}/layer.tar"
            members[name] = t
            names.append(name)
        config_name = sha(config)[7:] + ".json"
        members[config_name] = config
        entries.append({"Config": config_name, "RepoTags": tags, "Layers": names})
    members["manifest.json"] = json.dumps(entries).encode()
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))
    return path
