"""Type stub of snapcore.mount (the compiled module)."""

import os
from collections.abc import Iterable

_Path = str | bytes | os.PathLike[str] | os.PathLike[bytes]

MS_RDONLY: int
MS_NOSUID: int
MS_NODEV: int
MS_NOEXEC: int
MS_SYNCHRONOUS: int
MS_REMOUNT: int
MS_MANDLOCK: int
MS_DIRSYNC: int
MS_NOATIME: int
MS_NODIRATIME: int
MS_BIND: int
MS_MOVE: int
MS_REC: int
MS_SILENT: int
MS_RELATIME: int
MS_STRICTATIME: int
MS_PRIVATE: int
MS_SLAVE: int
MS_SHARED: int
MS_UNBINDABLE: int
MS_LAZYTIME: int

MNT_FORCE: int
MNT_DETACH: int
MNT_EXPIRE: int
UMOUNT_NOFOLLOW: int

AT_FDCWD: int
FSOPEN_CLOEXEC: int
FSMOUNT_CLOEXEC: int
MOVE_MOUNT_F_EMPTY_PATH: int
FSCONFIG_SET_FLAG: int
FSCONFIG_SET_STRING: int
FSCONFIG_SET_FD: int
FSCONFIG_CMD_CREATE: int

MOUNT_ATTR_RDONLY: int
MOUNT_ATTR_NOSUID: int
MOUNT_ATTR_NODEV: int
MOUNT_ATTR_NOEXEC: int
MOUNT_ATTR_RELATIME: int
MOUNT_ATTR_NOATIME: int
MOUNT_ATTR_STRICTATIME: int
MOUNT_ATTR_NODIRATIME: int

def mount(
    source: _Path | None,
    target: _Path,
    fstype: _Path | None = None,
    flags: int = 0,
    data: str | bytes | None = None,
) -> None: ...
def umount(target: _Path, flags: int = 0) -> None: ...
def open_path(path: _Path) -> int: ...
def fsopen(fsname: str | bytes, flags: int = ...) -> int: ...
def fsconfig(
    fd: int,
    cmd: int,
    key: str | bytes | None = None,
    value: _Path | None = None,
    aux: int = 0,
) -> None: ...
def fsmount(fd: int, flags: int = ..., attrs: int = 0) -> int: ...
def move_mount(
    from_dfd: int, from_path: _Path, to_dfd: int, to_path: _Path, flags: int = 0
) -> None: ...
def read_log(fsfd: int) -> list[str]: ...
def fsmount_params(
    fstype: str | bytes,
    target: _Path,
    params: Iterable[tuple[int, str | bytes, _Path | None]],
    attrs: int = 0,
    source: _Path | None = None,
) -> None: ...
def mount_in_dir(
    dirpath: _Path,
    source: _Path | None,
    target: _Path,
    fstype: _Path | None = None,
    flags: int = 0,
    data: str | bytes | None = None,
) -> None: ...
