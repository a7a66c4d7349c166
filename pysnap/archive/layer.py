"""Layer: what apply and diff report about one OCI layer blob."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True, slots=True)
class Layer:
    """One layer blob: its digests, size, media type and number of tar entries.

    ``digest`` and ``size`` are of the bytes read (apply) or written (diff),
    ``diff_id`` of the uncompressed tar; digests are ``"sha256:<hex>"``.
    ``media_type`` is the OCI layer media type of the blob
    (``application/vnd.oci.image.layer.v1.tar``, ``...+gzip``, ``...+zstd``).
    """

    diff_id: str
    digest: str
    size: int
    media_type: str
    entries: int
