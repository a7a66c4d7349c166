"""Mount, mounting a list of them, temporary mounts, and the unmount policy.

After containerd's ``mount/mount_linux.go`` and ``mount/temp.go``, over the
direct syscalls of :mod:`snapcore.mount` (no ``mount(8)`` process).

Options are parsed as containerd and mount(8) do: the words in ``_FLAGS``
become ``MS_*`` flags, the propagation words (``private``, ``rshared``...) are
applied afterwards by separate mount(2) calls, as mount(8) does, and every
other option is filesystem data, joined with commas. Overlay data is read and
written back by :mod:`pysnap.overlayopts` (the one model of overlay options);
when the kernel refuses an overlay with ELOOP, overlapping layers are looked
for there and named in an :class:`~pysnap.errors.InvalidArgumentError`.

A target is resolved as mount(8) and containerd's ``mount.All`` resolve it,
whichever path below is taken: a symlink is followed, and an overlay needs a
directory there (a file is ENOTDIR, a dangling symlink ENOENT).

Overlay mounts take one of these paths, chosen from a once-per-process probe
alone, never by retrying a failed mount another way (a real EINVAL is also
what 501 layers or a bad option give, and it is reported as it is):

1. the data fits in a page (mount(2) copies at most ``PAGE_SIZE - 1`` bytes):
   one mount(2) call;
2. otherwise, when the kernel has the new mount API and accepts ``lowerdir+``
   by file descriptor (Linux 6.8+, :func:`pysnap.kernel.overlay_takes_lowerdir_fd`):
   fsopen, one ``FSCONFIG_SET_FD`` per layer, the upperdir and the workdir
   (fsconfig string values are cut at 255 bytes, an O_PATH fd has no length),
   create, fsmount, move_mount onto the target opened by fd, all in one
   compiled call with the GIL released;
3. otherwise (older kernels): the paths are rewritten relative to their
   longest common directory and mount(2) runs in a helper thread that has
   unshared its filesystem context and changed directory there (containerd's
   ``compactLowerdirOption``/``mountAt``); the process's working directory
   never changes. When even that does not fit in a page:
   :class:`~pysnap.errors.InvalidArgumentError`.

:func:`set_overlay_method` (or ``PYSNAP_OVERLAY_METHOD``) forces a path, for
tests and benchmarks.

Errors: an ``OSError`` from the kernel passes through with its errno,
``filename`` (the source, or the layer path that failed) and ``filename2``
(the target); notes add the mount being made and the kernel's own messages.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal, get_args

from snapcore import mount as _sys

from . import kernel, overlayopts
from .errors import InvalidArgumentError

__all__ = [
    "Mount",
    "OverlayMethod",
    "ParsedOptions",
    "mount_all",
    "mount_one",
    "mounted",
    "overlay_method",
    "parse_options",
    "set_overlay_method",
    "unmount",
    "unmount_all",
]

log = logging.getLogger(__name__)

StrPath = str | os.PathLike[str]

# mount(2) copies one page of data and puts a NUL in its last byte
# (fs/namespace.c path_mount), so a longer string is silently cut.
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

# option -> (clear, flag), containerd's mount_linux.go table and mount(8)'s
_FLAGS: dict[str, tuple[bool, int]] = {
    "async": (True, _sys.MS_SYNCHRONOUS),
    "atime": (True, _sys.MS_NOATIME),
    "bind": (False, _sys.MS_BIND),
    "defaults": (False, 0),
    "dev": (True, _sys.MS_NODEV),
    "diratime": (True, _sys.MS_NODIRATIME),
    "dirsync": (False, _sys.MS_DIRSYNC),
    "exec": (True, _sys.MS_NOEXEC),
    "mand": (False, _sys.MS_MANDLOCK),
    "noatime": (False, _sys.MS_NOATIME),
    "nodev": (False, _sys.MS_NODEV),
    "nodiratime": (False, _sys.MS_NODIRATIME),
    "noexec": (False, _sys.MS_NOEXEC),
    "nomand": (True, _sys.MS_MANDLOCK),
    "norelatime": (True, _sys.MS_RELATIME),
    "nostrictatime": (True, _sys.MS_STRICTATIME),
    "nosuid": (False, _sys.MS_NOSUID),
    "rbind": (False, _sys.MS_BIND | _sys.MS_REC),
    "relatime": (False, _sys.MS_RELATIME),
    "remount": (False, _sys.MS_REMOUNT),
    "ro": (False, _sys.MS_RDONLY),
    "rw": (True, _sys.MS_RDONLY),
    "strictatime": (False, _sys.MS_STRICTATIME),
    "suid": (True, _sys.MS_NOSUID),
    "sync": (False, _sys.MS_SYNCHRONOUS),
}

_PROPAGATION: dict[str, int] = {
    "private": _sys.MS_PRIVATE,
    "rprivate": _sys.MS_PRIVATE | _sys.MS_REC,
    "shared": _sys.MS_SHARED,
    "rshared": _sys.MS_SHARED | _sys.MS_REC,
    "slave": _sys.MS_SLAVE,
    "rslave": _sys.MS_SLAVE | _sys.MS_REC,
    "unbindable": _sys.MS_UNBINDABLE,
    "runbindable": _sys.MS_UNBINDABLE | _sys.MS_REC,
}

# per-mount flags a bind mount only takes on a remount (the kernel ignores
# them on the MS_BIND call itself; mount(8) remounts too)
_BIND_REMOUNT = (
    _sys.MS_RDONLY
    | _sys.MS_NOSUID
    | _sys.MS_NODEV
    | _sys.MS_NOEXEC
    | _sys.MS_NOATIME
    | _sys.MS_NODIRATIME
    | _sys.MS_STRICTATIME
)

# MS_* -> MOUNT_ATTR_* for fsmount(2); MS_RELATIME is the default (0)
_ATTRS = (
    (_sys.MS_RDONLY, _sys.MOUNT_ATTR_RDONLY),
    (_sys.MS_NOSUID, _sys.MOUNT_ATTR_NOSUID),
    (_sys.MS_NODEV, _sys.MOUNT_ATTR_NODEV),
    (_sys.MS_NOEXEC, _sys.MOUNT_ATTR_NOEXEC),
    (_sys.MS_NOATIME, _sys.MOUNT_ATTR_NOATIME),
    (_sys.MS_STRICTATIME, _sys.MOUNT_ATTR_STRICTATIME),
    (_sys.MS_NODIRATIME, _sys.MOUNT_ATTR_NODIRATIME),
)
# MS_* -> superblock flag names fsconfig(FSCONFIG_SET_FLAG) understands
_SB_FLAGS = (
    (_sys.MS_RDONLY, "ro"),
    (_sys.MS_SYNCHRONOUS, "sync"),
    (_sys.MS_DIRSYNC, "dirsync"),
    (_sys.MS_MANDLOCK, "mand"),
    (_sys.MS_LAZYTIME, "lazytime"),
)

# overlay's documented limit (Documentation/filesystems/overlayfs.rst)
OVERLAY_MAX_LAYERS = 500


@dataclass(frozen=True, slots=True)
class Mount:
    """One mount to perform: ``mount -t TYPE -o OPTIONS SOURCE TARGET``.

    Overlay mounts have ``source="overlay"``; options are a tuple of str.
    """

    type: str
    source: str
    options: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if isinstance(self.options, str):  # would split into characters
            raise TypeError(f"Mount options must be a sequence of str, not {self.options!r}")
        if not isinstance(self.options, tuple):
            opts: Iterable[str] = self.options
            object.__setattr__(self, "options", tuple(opts))

    def mount(self, target: StrPath) -> None:
        """Perform this mount on ``target`` (see :func:`mount_one`)."""
        mount_one(self, target)


@dataclass(frozen=True, slots=True)
class ParsedOptions:
    """Mount options split the way mount(8) splits them."""

    flags: int
    """``MS_*`` flags for the mount(2) call."""
    propagation: tuple[int, ...]
    """``MS_PRIVATE``/``MS_SHARED``/... (with ``MS_REC``), one later call each."""
    data: tuple[str, ...]
    """Everything else: filesystem options, joined with commas for mount(2)."""


def parse_options(options: Iterable[str]) -> ParsedOptions:
    """Split ``options`` into flags, propagation changes and data (containerd's rules).

    Later words win over earlier ones (``ro,rw`` is read-write), as in mount(8).
    """
    flags = 0
    propagation: list[int] = []
    data: list[str] = []
    for opt in options:
        if opt in _FLAGS:
            clear, flag = _FLAGS[opt]
            flags = flags & ~flag if clear else flags | flag
        elif opt in _PROPAGATION:
            propagation.append(_PROPAGATION[opt])
        else:
            data.append(opt)
    return ParsedOptions(flags, tuple(propagation), tuple(data))


# ---- which overlay path -------------------------------------------------------

OverlayMethod = Literal["auto", "legacy", "relative", "fd"]
"""``auto``: mount(2) when the data fits a page, else the new API by fd if the
probe found it, else relative paths from a helper thread. ``legacy``: as auto
on a kernel without the new API. ``relative``: always the helper thread with
relative paths (the fallback, forced on). ``fd``: always the new API by fd."""

_method_lock = threading.Lock()
_method: OverlayMethod | None = None


def set_overlay_method(method: OverlayMethod | None) -> None:
    """Force how overlays are mounted (tests, benchmarks); None restores ``auto``.

    Process-wide. ``PYSNAP_OVERLAY_METHOD`` sets the initial value.

    Raises:
        ValueError: an unknown method.
    """
    global _method
    if method is not None and method not in get_args(OverlayMethod):
        raise ValueError(f"unknown overlay method {method!r}")
    with _method_lock:
        _method = method


def overlay_method() -> OverlayMethod:
    """The method in force (see :data:`OverlayMethod`)."""
    with _method_lock:
        method = _method
    if method is None:
        env = os.environ.get("PYSNAP_OVERLAY_METHOD", "auto")
        for m in get_args(OverlayMethod):
            if env == m:
                return m  # type: ignore[no-any-return]
        return "auto"
    return method


# ---- mounting -------------------------------------------------------------------


def mount_one(m: Mount, target: StrPath) -> None:
    """Perform one Mount on ``target`` (what ``Mount.mount(target)`` calls).

    A bind with per-mount flags (``ro``, ``nosuid``...) is a bind followed by a
    ``MS_REMOUNT|MS_BIND`` with those flags; propagation words follow as their
    own calls. When a later step fails, the earlier ones are undone: nothing
    is left mounted.

    Raises:
        OSError: from the kernel, with errno, filename=source (or the layer
            that failed) and filename2=target.
        InvalidArgumentError: overlay layers that overlap (one listed twice,
            or inside another, the upperdir or the workdir: both are named);
            overlay data that fits no page on a kernel without the new mount
            API; data longer than a page for other types.
    """
    opts = parse_options(m.options)
    try:
        if m.type == "overlay" and not opts.flags & _sys.MS_REMOUNT:
            _mount_overlay(m, target, opts)
        else:
            _mount_plain(m, target, opts)
        try:
            for prop in opts.propagation:
                _sys.mount(None, target, None, prop, None)
        except BaseException:
            _undo(target)
            raise
    except OSError as e:
        e.add_note(f"mounting {_describe(m, target)}")
        raise


def _describe(m: Mount, target: StrPath) -> str:
    opts = ",".join(m.options)
    if len(opts) > 300:
        opts = f"{opts[:240]}...({len(opts)} bytes)"
    return f"-t {m.type} -o {opts} {m.source} {os.fspath(target)}"


def _undo(target: StrPath) -> None:
    """Detach what this call just mounted on ``target`` (error path only)."""
    try:
        _sys.umount(target, _sys.MNT_DETACH)
    except OSError as e:  # pragma: no cover - the mount was just made
        log.warning("could not undo the mount on %s: %s", os.fspath(target), e)


def _check_page(data: str, what: str) -> None:
    if len(os.fsencode(data)) >= PAGE_SIZE:
        raise InvalidArgumentError(
            f"{what}: mount data is {len(os.fsencode(data))} bytes; "
            f"mount(2) takes at most {PAGE_SIZE - 1}"
        )


def _mount_plain(m: Mount, target: StrPath, opts: ParsedOptions) -> None:
    flags = opts.flags
    data = ",".join(opts.data) or None
    if data is not None:
        _check_page(data, f"{m.type} mount on {os.fspath(target)}")
    if m.type == "bind" or flags & _sys.MS_BIND:
        # mount(8) treats -t bind as --bind; the kernel ignores ro & co. here
        bind = _sys.MS_BIND | (flags & _sys.MS_REC)
        _sys.mount(m.source, target, None, bind | (flags & _sys.MS_REMOUNT), data)
        extra = flags & _BIND_REMOUNT
        if extra and not flags & _sys.MS_REMOUNT:
            try:
                _sys.mount(m.source, target, None, _sys.MS_REMOUNT | _sys.MS_BIND | extra, None)
            except BaseException:
                _undo(target)
                raise
        return
    _sys.mount(m.source, target, m.type, flags, data)


def _mount_overlay(m: Mount, target: StrPath, opts: ParsedOptions) -> None:
    layers = overlayopts.parse(opts.data)
    data = overlayopts.render(layers)
    method = overlay_method()
    fits = len(os.fsencode(data)) < PAGE_SIZE
    try:
        if method in ("auto", "legacy") and fits:
            _sys.mount(m.source, target, m.type, opts.flags, data)
        elif method == "fd" or (method == "auto" and kernel.overlay_takes_lowerdir_fd()):
            _mount_overlay_fd(m, target, opts, layers)
        else:
            _mount_overlay_relative(m, target, opts, layers)
    except OSError as e:
        if e.errno == errno.ELOOP:
            # overlayfs's answer to overlapping layers, which names none of them
            overlayopts.check_layers(layers)
        n = len(layers.lowers)
        if e.errno == errno.EINVAL and n > OVERLAY_MAX_LAYERS:
            limit = f"overlay takes at most {OVERLAY_MAX_LAYERS} lower layers"
            e.add_note(f"{limit}; this mount has {n}")
        raise


def _mount_overlay_fd(
    m: Mount, target: StrPath, opts: ParsedOptions, layers: overlayopts.OverlayLayers
) -> None:
    """Every layer, the upperdir and the workdir by O_PATH fd: no length limit."""
    set_fd, set_str, set_flag = (
        _sys.FSCONFIG_SET_FD,
        _sys.FSCONFIG_SET_STRING,
        _sys.FSCONFIG_SET_FLAG,
    )
    params: list[tuple[int, str, str | None]] = [(set_str, "source", m.source)]
    for flag, name in _SB_FLAGS:
        if opts.flags & flag:
            params.append((set_flag, name, None))
    for opt in layers.rest:
        key, eq, value = opt.partition("=")
        params.append((set_str, key, value) if eq else (set_flag, key, None))
    params.extend((set_fd, "lowerdir+", p) for p in layers.lowers)
    params.extend((set_fd, "datadir+", p) for p in layers.datas)
    if layers.upper is not None:
        params.append((set_fd, "upperdir", layers.upper))
    if layers.work is not None:
        params.append((set_fd, "workdir", layers.work))
    attrs = 0
    for flag, attr in _ATTRS:
        if opts.flags & flag:
            attrs |= attr
    _sys.fsmount_params(m.type, target, params, attrs, m.source)


def _mount_overlay_relative(
    m: Mount, target: StrPath, opts: ParsedOptions, layers: overlayopts.OverlayLayers
) -> None:
    """mount(2) with paths relative to their common directory, from a helper thread."""
    paths = [*layers.lowers, *layers.datas]
    paths += [p for p in (layers.upper, layers.work) if p is not None]
    if not paths:
        raise InvalidArgumentError(f"overlay on {os.fspath(target)}: no lowerdir")
    absolute = {p: os.path.abspath(p) for p in paths}  # also normalised
    common = os.path.commonpath(list(absolute.values()))
    skip = len(common) + (0 if common.endswith("/") else 1)

    def rel(p: str) -> str:
        # every path is common or below it (os.path.relpath costs 5 us a call)
        return absolute[p][skip:] or "."

    data = overlayopts.render(layers, rel)
    size = len(os.fsencode(data))
    if size >= PAGE_SIZE:
        raise InvalidArgumentError(
            f"overlay on {os.fspath(target)}: {len(layers.lowers)} layers need {size} bytes "
            f"of options even relative to {common}, and mount(2) takes at most "
            f"{PAGE_SIZE - 1}; mounting it needs Linux 6.8+ (lowerdir+ by fd)"
        )
    _sys.mount_in_dir(common, m.source, os.path.abspath(target), m.type, opts.flags, data)


def mount_all(mounts: Iterable[Mount], target: StrPath) -> None:
    """Perform each Mount on ``target`` in order (containerd's ``mount.All``).

    All or nothing: when one fails, those already made are unmounted again
    before the error propagates.

    Raises:
        OSError, InvalidArgumentError: as :func:`mount_one`.
    """
    done = 0
    try:
        for m in mounts:
            mount_one(m, target)
            done += 1
    except BaseException:
        for _ in range(done):
            _undo(target)
        raise


# EBUSY goes away when a racing user (an open file, a walk) lets go;
# containerd retries it too (mount_linux.go unmount).
_EBUSY_DELAYS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05)


def unmount(target: StrPath, detach: bool = False) -> None:
    """Unmount the topmost mount on ``target``; ``detach`` makes it lazy (MNT_DETACH).

    EBUSY gets a few short retries (about 0.1 s in all) before it surfaces.

    Raises:
        OSError: from umount2(2), filename=target (EINVAL: not mounted).
    """
    flags = _sys.MNT_DETACH if detach else 0
    for delay in _EBUSY_DELAYS:
        try:
            _sys.umount(target, flags)
            return
        except OSError as e:
            if e.errno != errno.EBUSY:
                raise
        time.sleep(delay)
    _sys.umount(target, flags)


def unmount_all(target: StrPath, detach: bool = False) -> None:
    """Unmount ``target`` until nothing is mounted there (containerd's ``UnmountAll``).

    EINVAL ("not mounted") ends the loop cleanly, also on the first call.

    Raises:
        OSError: any other errno from umount2(2) (ENOENT: no such target).
    """
    while True:
        try:
            unmount(target, detach)
        except OSError as e:
            if e.errno == errno.EINVAL:
                return
            raise


@contextlib.contextmanager
def mounted(mounts: Iterable[Mount], *, dir: StrPath | None = None) -> Iterator[str]:
    """Mount ``mounts`` on a new temporary directory and yield its path.

    The directory is always unmounted and removed on the way out, also when
    the mount or the body raises (containerd's ``WithTempMount``). Should the
    unmount stay busy past its retries, the mount is detached lazily instead,
    so that nothing is left attached to a removed directory.

    Raises:
        OSError, InvalidArgumentError: as :func:`mount_all`.
    """
    root = tempfile.mkdtemp(prefix="pysnap-mount-", dir=dir)
    try:
        mount_all(mounts, root)
        yield root
    finally:
        try:
            unmount_all(root)
        except OSError as e:
            log.warning("unmounting %s: %s; detaching it", root, e)
            unmount_all(root, detach=True)
        os.rmdir(root)
