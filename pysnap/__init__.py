"""pysnap: a layered-filesystem snapshotter, containerd's overlay model with a Cython core."""

from . import errors
from .types import Info, Kind, Mount, Usage

__all__ = [
    "Info",
    "Kind",
    "Mount",
    "Usage",
    "errors",
]
__version__ = "0.1.0"
