"""pysnap: a layered-filesystem snapshotter, containerd's overlay model with a Cython core."""

# The one place the version is written: pyproject.toml reads it from here.
__version__ = "0.1.0"

from . import errors
from .archive import Layer
from .mounts import Mount, mount_all, mounted, unmount, unmount_all
from .overlay import OverlaySnapshotter
from .types import Info, Kind, Usage

__all__ = [
    "Info",
    "Kind",
    "Layer",
    "Mount",
    "OverlaySnapshotter",
    "Usage",
    "errors",
    "mount_all",
    "mounted",
    "unmount",
    "unmount_all",
]
