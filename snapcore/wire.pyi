"""Protobuf encoding of containerd's snapshot Info messages (see wire.pyx)."""

from collections.abc import Iterable
from typing import Any

def encode_info_messages(
    infos: Iterable[tuple[Any, ...]], per_message: int, max_bytes: int = ...
) -> list[bytes]: ...
