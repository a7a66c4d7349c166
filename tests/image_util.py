"""Building real image layouts and archives for the image tests: layers, blobs, index.json."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pysnap.fsutil import remove_tree

OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = OCI_LAYER + "+gzip"
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
    entries: list[dict[str, Any]] = []
    members: dict[str, bytes | str] = {}
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
            name = f"{hashlib.sha256(b'id' + t + str(len(entries)).encode()).hexdigest()}/layer.tar"
            # a layer already written goes in as a symlink to it, as docker save does
            first = next((n for n, d in members.items() if d == t), None)
            members[name] = t if first is None else "../" + first  # str: a symlink
            names.append(name)
        config_name = sha(config)[7:] + ".json"
        members[config_name] = config
        entries.append({"Config": config_name, "RepoTags": tags, "Layers": names})
    members["manifest.json"] = json.dumps(entries).encode()
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            ti = tarfile.TarInfo(name)
            if isinstance(data, str):
                ti.type, ti.linkname = tarfile.SYMTYPE, data
                tar.addfile(ti)
                continue
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))
    return path


def umoci(*args: str) -> None:
    subprocess.run(["umoci", *args], check=True, capture_output=True, timeout=120)


def _busybox_layer(rootfs: Path) -> None:
    (rootfs / "bin").mkdir(exist_ok=True)
    shutil.copy2("/usr/bin/busybox", rootfs / "bin" / "busybox")
    for applet in ("sh", "cat", "ls", "echo"):
        os.symlink("busybox", rootfs / "bin" / applet)
    (rootfs / "etc").mkdir(exist_ok=True)
    (rootfs / "etc" / "hostname").write_text("pysnap\n")
    (rootfs / "etc" / "old.txt").write_text("deleted by the next layer\n")
    (rootfs / "data").mkdir()
    (rootfs / "data" / "hard1").write_text("linked\n")
    os.link(rootfs / "data" / "hard1", rootfs / "data" / "hard2")
    tool = rootfs / "data" / "tool"
    tool.write_text("#!/bin/sh\n")
    os.chown(tool, 1000, 1000)
    os.chmod(tool, 0o4755)
    (rootfs / "tmp").mkdir(exist_ok=True)
    os.chmod(rootfs / "tmp", 0o1777)


def _greeting_layer(rootfs: Path) -> None:
    (rootfs / "greeting").write_text("hello from the second layer\n")
    (rootfs / "etc" / "old.txt").unlink()
    os.chmod(rootfs / "etc" / "hostname", 0o600)
    (rootfs / "data" / "sub" / "deep").mkdir(parents=True)
    (rootfs / "data" / "sub" / "deep" / "f").write_text("deep\n")


def umoci_busybox(workdir: Path, tag: str = "bb") -> tuple[Path, str]:
    """A two-layer image built offline with umoci from busybox-static; (layout, tag).

    Layer 0: /bin/busybox and applet symlinks, /etc files, a hard link, a
    setuid file owned by 1000, /tmp 1777. Layer 1: /greeting, /etc/old.txt
    deleted (a whiteout), a mode change, new nested directories. The command
    is ``/bin/cat /greeting``.
    """
    layout = workdir / "oci"
    image = f"{layout}:{tag}"
    umoci("init", "--layout", str(layout))
    umoci("new", "--image", image)
    for n, add in enumerate((_busybox_layer, _greeting_layer)):
        bundle = workdir / f"bundle-{n}"
        umoci("unpack", "--image", image, str(bundle))
        add(bundle / "rootfs")
        umoci("repack", "--image", image, str(bundle))
        remove_tree(bundle)
    umoci("config", "--image", image, "--config.cmd", "/bin/cat", "--config.cmd", "/greeting")
    return layout, tag


def tree(root: Path) -> dict[str, tuple[object, ...]]:
    """Every entry under ``root`` (not itself): type, mode, owner, size, mtime, target, content."""
    out: dict[str, tuple[object, ...]] = {}
    inodes: dict[tuple[int, int], str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()  # a fixed order: hard links are named by their first name
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            rel = os.path.relpath(path, root)
            what: object = None
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    what = hashlib.sha256(f.read()).hexdigest()
                # hard links: the same file under every name (compared by first name)
                what = (what, inodes.setdefault((st.st_dev, st.st_ino), rel))
            elif stat.S_ISLNK(st.st_mode):
                what = os.readlink(path)
            mtime = None if stat.S_ISDIR(st.st_mode) else st.st_mtime_ns
            out[rel] = (st.st_mode, st.st_uid, st.st_gid, st.st_size, mtime, what)
    return out
