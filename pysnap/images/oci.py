"""The OCI image spec's vocabulary: media types, descriptors, digests, chain IDs, platforms.

Facts from the OCI image spec (descriptor.md, media-types.md, layer.md,
config.md "Layer ChainID", image-index.md) and Docker's image manifest v2,
schema 2 (the docker media types containerd still accepts).
"""

from __future__ import annotations

import hashlib
import platform as _platform
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidArgumentError, UnimplementedError

OCI_LAYOUT_VERSION = "1.0.0"

INDEX_TYPES = frozenset(
    {
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    }
)
MANIFEST_TYPES = frozenset(
    {
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    }
)
CONFIG_TYPES = frozenset(
    {
        "application/vnd.oci.image.config.v1+json",
        "application/vnd.docker.container.image.v1+json",
    }
)
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"

# Each layer media type to its OCI equivalent (the same bytes; export writes
# OCI media types only). Non-distributable ("foreign") layers may be absent
# from a layout and fetched from their descriptor's urls.
LAYER_TYPES: Mapping[str, str] = {
    OCI_LAYER: OCI_LAYER,
    OCI_LAYER + "+gzip": OCI_LAYER + "+gzip",
    OCI_LAYER + "+zstd": OCI_LAYER + "+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar": OCI_LAYER,
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": OCI_LAYER + "+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": OCI_LAYER + "+zstd",
    "application/vnd.docker.image.rootfs.diff.tar": OCI_LAYER,
    "application/vnd.docker.image.rootfs.diff.tar.gzip": OCI_LAYER + "+gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": OCI_LAYER + "+gzip",
}
NON_DISTRIBUTABLE = frozenset(
    t for t in LAYER_TYPES if ".nondistributable." in t or ".foreign." in t
)

_DIGEST = re.compile(r"(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})")

# The image spec's annotations naming an image, and containerd's.
REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"


def check_digest(value: object, what: str) -> str:
    """``value`` if it is a ``sha256:``/``sha512:`` digest in canonical form.

    Raises InvalidArgumentError naming ``what`` otherwise.
    """
    if isinstance(value, str) and _DIGEST.fullmatch(value):
        return value
    raise InvalidArgumentError(f"{what}: {value!r} is not a sha256 or sha512 digest")


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """The OCI image spec's ChainIDs of a stack of layers, base first.

    ``ChainID(L0) = DiffID(L0)``; ``ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln))``.
    """
    out: list[str] = []
    for i, diff_id in enumerate(diff_ids):
        check_digest(diff_id, f"diff ID {i}")
        out.append(digest_of(f"{out[-1]} {diff_id}".encode()) if out else diff_id)
    return out


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor: what a blob is, its digest and its size."""

    media_type: str
    digest: str
    size: int
    urls: tuple[str, ...] = ()
    annotations: Mapping[str, str] = field(default_factory=dict)
    platform: Mapping[str, Any] | None = None

    @classmethod
    def parse(cls, obj: object, what: str) -> Descriptor:
        """A descriptor from its JSON object; InvalidArgumentError naming ``what``."""
        if not isinstance(obj, dict):
            raise InvalidArgumentError(f"{what}: a descriptor must be a JSON object")
        media_type, size = obj.get("mediaType"), obj.get("size")
        if not isinstance(media_type, str) or not media_type:
            raise InvalidArgumentError(f"{what}: descriptor without a mediaType")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidArgumentError(f"{what}: descriptor size {size!r} is not a size")
        digest = check_digest(obj.get("digest"), what)
        urls, annotations = obj.get("urls", []), obj.get("annotations", {})
        plat = obj.get("platform")
        if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
            raise InvalidArgumentError(f"{what}: urls must be a list of strings")
        if not isinstance(annotations, dict) or not all(
            isinstance(v, str) for v in annotations.values()
        ):
            raise InvalidArgumentError(f"{what}: annotations must map strings to strings")
        if plat is not None and not isinstance(plat, dict):
            raise InvalidArgumentError(f"{what}: platform must be a JSON object")
        return cls(media_type, digest, size, tuple(urls), annotations, plat)

    def to_json(self) -> dict[str, Any]:
        """The descriptor as OCI JSON, optional fields only when set."""
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest}
        out["size"] = self.size
        if self.urls:
            out["urls"] = list(self.urls)
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform is not None:
            out["platform"] = dict(self.platform)
        return out


def check_layer_type(desc: Descriptor, what: str) -> None:
    """Refuse a layer descriptor whose media type unpack cannot apply.

    Raises UnimplementedError for an encrypted layer (``+encrypted``, which
    needs keys this library does not hold) and InvalidArgumentError for a
    media type that is not a layer.
    """
    if desc.media_type.endswith("+encrypted"):
        raise UnimplementedError(f"{what} {desc.digest}: encrypted layers are not supported")
    if desc.media_type not in LAYER_TYPES:
        raise InvalidArgumentError(f"{what} {desc.digest}: unknown media type {desc.media_type!r}")


@dataclass(frozen=True)
class Platform:
    """An OCI platform: ``os/architecture[/variant]``, normalised as containerd does."""

    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

    @classmethod
    def parse(cls, spec: str) -> Platform:
        """``linux/amd64``, ``linux/arm/v7``, ``linux/arm64``; InvalidArgumentError otherwise."""
        parts = spec.split("/") if isinstance(spec, str) else []
        if not 2 <= len(parts) <= 3 or not all(re.fullmatch(r"[A-Za-z0-9_.-]+", p) for p in parts):
            raise InvalidArgumentError(f"platform {spec!r}: expected os/architecture[/variant]")
        return cls.normalized(*(p.lower() for p in parts))

    @classmethod
    def normalized(cls, os: str, architecture: str, variant: str = "") -> Platform:
        arch, default_variant = _ARCH_ALIASES.get(architecture, (architecture, ""))
        variant = variant or default_variant
        if arch == "arm64" and variant == "v8":
            variant = ""  # arm64's only variant in practice; containerd drops it too
        return cls(os, arch, variant)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Platform:
        get = obj.get
        return cls.normalized(
            str(get("os", "")).lower(),
            str(get("architecture", "")).lower(),
            str(get("variant", "") or "").lower(),
        )

    @classmethod
    def host(cls) -> Platform:
        """This machine's platform (containerd's ``platforms.DefaultSpec``)."""
        return cls.normalized("linux", _platform.machine().lower())

    def rank(self, other: Platform) -> int | None:
        """How well an image for ``other`` runs here: 0 best, None not at all.

        An arm CPU of variant vN also runs vN-1 and older, as containerd's
        matcher allows; no variant asked means any variant.
        """
        if other.os != self.os or other.architecture != self.architecture:
            return None
        if not self.variant or self.variant == other.variant:
            return 0
        if self.architecture == "arm" and other.variant[:1] == "v" and self.variant[:1] == "v":
            ours, theirs = self.variant[1:], other.variant[1:]
            if ours.isdigit() and theirs.isdigit() and int(theirs) < int(ours):
                return int(ours) - int(theirs)
        return None


# uname -m and Debian names to GOARCH (containerd's platforms.normalizeArch).
_ARCH_ALIASES = {
    "x86_64": ("amd64", ""),
    "x86-64": ("amd64", ""),
    "i386": ("386", ""),
    "i686": ("386", ""),
    "aarch64": ("arm64", ""),
    "armhf": ("arm", "v7"),
    "armel": ("arm", "v6"),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "arm": ("arm", "v7"),
}
