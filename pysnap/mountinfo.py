"""Reading ``/proc/self/mountinfo``: which mounts exist and which use a directory.

The format is the kernel's (Documentation/filesystems/proc.rst, 3.5):
``id parent major:minor root mount-point options [optional...] - fstype source
super-options``. Paths and option values are octal-escaped by the kernel
(``\\040`` space, ``\\011`` tab, ``\\012`` newline, ``\\134`` backslash; overlay
also escapes ``,`` as ``\\054`` and ``:`` as ``\\072`` in its own options, see
fs/overlayfs/params.c ``ovl_show_options``), so every field is decoded before
it is compared with a path.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

MOUNTINFO = "/proc/self/mountinfo"

_OCTAL = re.compile(rb"\\([0-7]{3})")

# Overlay options that name a layer directory; lowerdir holds several, split on ':'.
_OVERLAY_DIR_OPTIONS = ("upperdir", "workdir", "lowerdir", "datadir")


def decode(field: str) -> str:
    """Undo the kernel's octal escapes (``\\134`` -> ``\\``); bytes beyond UTF-8 survive."""
    if "\\" not in field:
        return field
    raw = os.fsencode(field)
    return os.fsdecode(_OCTAL.sub(lambda m: bytes([int(m.group(1), 8)]), raw))


@dataclass(frozen=True, slots=True)
class MountEntry:
    """One line of mountinfo, decoded."""

    mount_id: int
    parent_id: int
    dev: int  # os.makedev(major, minor), comparable with st_dev
    root: str  # the path inside the file system that is mounted
    mount_point: str
    fstype: str
    source: str
    super_options: tuple[str, ...]  # each decoded, in the kernel's order

    def option(self, name: str) -> str | None:
        """The value of super option ``name`` (``upperdir``...), or None."""
        prefix = name + "="
        for opt in self.super_options:
            if opt.startswith(prefix):
                return opt[len(prefix) :]
        return None

    def layer_dirs(self) -> list[str]:
        """For an overlay mount: every upper, work, lower and data directory it names."""
        if self.fstype != "overlay":
            return []
        dirs: list[str] = []
        for opt in self.super_options:
            name, _, value = opt.partition("=")
            if name in _OVERLAY_DIR_OPTIONS:
                # Split the raw value on unescaped ':' only: "\072" is a ':' in a path.
                dirs.extend(decode(part) for part in value.split(":") if part)
        return dirs


def _parse_line(line: str) -> MountEntry:
    fields = line.split(" ")
    sep = fields.index("-", 6)
    major, _, minor = fields[2].partition(":")
    # Super options are split on ',' before decoding: an escaped ',' is "\054".
    # Overlay values are decoded per layer in layer_dirs(), so ':' keeps its meaning.
    raw_options = fields[sep + 3].split(",") if len(fields) > sep + 3 else []
    return MountEntry(
        mount_id=int(fields[0]),
        parent_id=int(fields[1]),
        dev=os.makedev(int(major), int(minor)),
        root=decode(fields[3]),
        mount_point=decode(fields[4]),
        fstype=decode(fields[sep + 1]),
        source=decode(fields[sep + 2]),
        super_options=tuple(raw_options),
    )


def parse(text: str) -> list[MountEntry]:
    """Every entry of a mountinfo text, in the kernel's order (parents first)."""
    return [_parse_line(line) for line in text.splitlines() if line]


def read(path: str = MOUNTINFO) -> list[MountEntry]:
    """The mounts of this process's mount namespace."""
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        return parse(f.read())


def _inside(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def mounts_under(
    directory: str | os.PathLike[str], entries: Iterable[MountEntry] | None = None
) -> list[MountEntry]:
    """The mounts whose mount point is ``directory`` or below it."""
    top = os.path.realpath(directory)
    return [e for e in (read() if entries is None else entries) if _inside(e.mount_point, top)]


def users_of(
    directory: str | os.PathLike[str], entries: Iterable[MountEntry] | None = None
) -> list[MountEntry]:
    """The mounts that use ``directory`` (or a path inside it) as a layer or bind source.

    An overlay mount uses it when one of its upperdir, workdir, lowerdir or
    datadir options is at or under it. A bind mount uses it when the mounted
    root is at or under it in the same file system: the file system's own
    mount gives the path of ``directory`` inside that file system.
    """
    top = os.path.realpath(directory)
    entries = read() if entries is None else list(entries)
    st_dev = os.stat(top).st_dev
    # The mount that holds `top`: the deepest mount point above it on its device.
    holders = [e for e in entries if e.dev == st_dev and _inside(top, e.mount_point)]
    inner: str | None = None
    if holders:
        holder = max(holders, key=lambda e: len(e.mount_point))
        rest = top[len(holder.mount_point.rstrip("/")) :]
        inner = (holder.root.rstrip("/") + rest) or "/"
    users: list[MountEntry] = []
    for e in entries:
        if any(_inside(os.path.normpath(d), top) for d in e.layer_dirs()):
            users.append(e)
        elif (
            inner is not None
            and e.dev == st_dev
            and _inside(e.root, inner)
            and not _inside(top, e.mount_point)  # the file system's own mount of it
        ):
            users.append(e)
    return users


__all__ = ["MOUNTINFO", "MountEntry", "decode", "mounts_under", "parse", "read", "users_of"]
