"""What this kernel can do: the feature probes, in one place (containerd's overlayutils).

Each probe of the running kernel runs once per process, on first use, and
its answer is cached (a race may probe twice; both get the same answer).
Nothing is mounted by a probe.

- :func:`overlay_has_index`: overlay has the ``index`` parameter, so pysnap
  adds ``index=off`` to its mounts (containerd does: ``index=on`` makes
  lowers shared by two mounts EBUSY);
- :func:`has_new_mount_api`: fsopen(2) and friends exist (Linux 5.2+);
- :func:`overlay_takes_lowerdir_fd`: overlay accepts ``lowerdir+`` by file
  descriptor (Linux 6.8+), which mounts chains of any path length.

:func:`supports_d_type` probes a file system, not the kernel: it writes a
small directory into ``path``. pysnap runs it once, when a root is created
(see ``OverlaySnapshotter``); an existing root is never written on open.
"""

from __future__ import annotations

import functools
import os

from snapcore import du
from snapcore import mount as _sys

__all__ = [
    "has_new_mount_api",
    "overlay_has_index",
    "overlay_takes_lowerdir_fd",
    "supports_d_type",
]

OVERLAY_INDEX_PARAM = "/sys/module/overlay/parameters/index"


@functools.cache
def overlay_has_index() -> bool:
    """Whether the overlay module has the ``index`` parameter (Linux 4.13+)."""
    return os.path.exists(OVERLAY_INDEX_PARAM)


@functools.cache
def has_new_mount_api() -> bool:
    """Whether fsopen(2) works for overlay (the new mount API)."""
    try:
        os.close(_sys.fsopen("overlay"))
    except OSError:
        return False
    return True


@functools.cache
def overlay_takes_lowerdir_fd() -> bool:
    """Whether overlay takes ``lowerdir+`` by fd (``FSCONFIG_SET_FD``).

    Probed with an fsconfig on a context that is never created.
    """
    if not has_new_mount_api():
        return False
    fsfd = _sys.fsopen("overlay")
    try:
        dfd = _sys.open_path("/")
        try:
            _sys.fsconfig(fsfd, _sys.FSCONFIG_SET_FD, "lowerdir+", None, dfd)
        finally:
            os.close(dfd)
    except OSError:
        return False
    finally:
        os.close(fsfd)
    return True


def supports_d_type(path: str | os.PathLike[str]) -> bool:
    """Whether the file system at ``path`` fills d_type (overlayfs needs it).

    containerd's ``fs.SupportsDType``: writes a temporary directory with a file
    into ``path``, reads it back and removes it.

    Raises:
        OSError: creating or reading the probe (ENOSPC, EROFS...).
    """
    return bool(du.supports_d_type(os.fspath(path)))
