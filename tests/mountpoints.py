"""Mounts in the tests: which they made (read through pysnap.mountinfo, the one
parser), and the `mounted` fixture that undoes its own."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pysnap import mountinfo
from pysnap.mountinfo import MountEntry


def mounts_at(target: str | os.PathLike[str]) -> list[MountEntry]:
    """The mounts whose mount point is ``target`` (bottom first)."""
    point = os.path.realpath(target)
    return [e for e in mountinfo.read() if e.mount_point == point]


def is_mounted(target: str | os.PathLike[str]) -> bool:
    return bool(mounts_at(target))


def detach_all_under(base: str | os.PathLike[str]) -> list[str]:
    """Detach every mount at or under ``base``, deepest first; the mount points found."""
    from snapcore import mount as _sys

    points = sorted({e.mount_point for e in mountinfo.mounts_under(base)}, key=len, reverse=True)
    for point in points:
        with contextlib.suppress(OSError):
            while True:  # stacked mounts: until umount2 says EINVAL (not mounted)
                _sys.umount(point, _sys.MNT_DETACH)
    return points


@pytest.fixture
def mounted() -> Iterator[Callable[..., None]]:
    """mount(fstype, source, target, flags) for the test; everything unmounted after."""
    from snapcore import mount as sysmount

    targets: list[Path] = []

    def do(fstype: str, source: str, target: Path, flags: int = 0) -> None:
        sysmount.mount(source, target, fstype, flags, "size=1m" if fstype == "tmpfs" else "")
        targets.append(target)

    yield do
    for t in reversed(targets):
        sysmount.umount(t, sysmount.MNT_DETACH)
