"""Overlay mount options: built, checked and parsed here, and nowhere else.

The kernel's syntax (fs/overlayfs/params.c, Documentation/filesystems/overlayfs.rst):

- ``lowerdir=L0:L1::D0::D1``: lower layers top first, split at ``:``; after
  the first empty item come data-only layers. In ``lowerdir=``, ``upperdir=``
  and ``workdir=`` a ``\\`` escapes the next character (``ovl_unescape``), and
  mount(2) splits its data at commas that no ``\\`` escapes.
- ``lowerdir+=P`` and ``datadir+=P`` (Linux 6.8+): one layer each, the path
  taken literally: no unescaping, no splitting at ``:``.
- Every other word (``index=off``, ``redirect_dir=on``, ``volatile``...)
  passes through as it is.

pysnap hands out overlay mounts whose paths need no escape (:func:`build`):
a root path holding ``,``, ``:`` or ``\\`` is refused at open
(:func:`check_root`), because containerd's own readers of mount options (its
applier, its lowerdir compaction) split at ``:`` without unescaping. Mounts
from callers may use either form; :func:`parse` reads both into literal paths
(:class:`OverlayLayers`), :func:`render` writes the mount(2) form back with
every path escaped, and :func:`check_layers` names overlapping layers, which
overlayfs only answers with ELOOP ("too many levels of symbolic links").
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from . import kernel
from .errors import InvalidArgumentError

__all__ = [
    "OverlayLayers",
    "build",
    "check_layers",
    "check_root",
    "default_options",
    "escape",
    "parse",
    "render",
]

# the characters an option string gives a meaning: separators and the escape
_SPECIAL = ("\\", ":", ",")
_ESCAPES = str.maketrans({c: "\\" + c for c in _SPECIAL})


def check_root(root: str) -> None:
    """Refuse a root path that overlay options cannot carry as it is.

    Raises:
        InvalidArgumentError: ``root`` holds ``,``, ``:`` or ``\\``.
    """
    bad = [c for c in _SPECIAL if c in root]
    if bad:
        shown = " ".join(repr(c) for c in bad)
        raise InvalidArgumentError(
            f"open {root!r}: a root path with {shown} cannot be used in overlay options "
            "(the kernel reads ',' and ':' as separators and '\\' as an escape)"
        )


def default_options(options: Sequence[str]) -> tuple[str, ...]:
    """``options`` plus ``index=off`` when the kernel has the ``index`` parameter
    and the caller did not set it (containerd does the same: ``index=on`` makes
    a lower shared by two mounts EBUSY)."""
    opts = tuple(options)
    if kernel.overlay_has_index() and not any(o.startswith("index=") for o in opts):
        opts += ("index=off",)
    return opts


def build(
    lowerdir: str,
    upper: str | None = None,
    work: str | None = None,
    extra: Sequence[str] = (),
) -> tuple[str, ...]:
    """The options of an overlay mount pysnap hands out: ``workdir``, ``upperdir``,
    ``lowerdir`` (the lower layers joined with ":", top first), then ``extra``.

    The paths are written as they are: they must need no escape (under a root
    that :func:`check_root` accepted, none does). The caller joins the
    lowers, so that it can keep a 1,000-deep chain's value instead of
    building 1,000 paths per call.
    """
    options: list[str] = []
    if work is not None:
        options.append(f"workdir={work}")
    if upper is not None:
        options.append(f"upperdir={upper}")
    options.append("lowerdir=" + lowerdir)
    options.extend(extra)
    return tuple(options)


@dataclass(frozen=True, slots=True)
class OverlayLayers:
    """The directories of an overlay mount, as literal paths, and its other options."""

    lowers: tuple[str, ...]
    """Lower layers, top first."""
    datas: tuple[str, ...]
    """Data-only lower layers."""
    upper: str | None
    work: str | None
    rest: tuple[str, ...]
    """Every other overlay option, as given."""


def _unescape_split(value: str) -> list[str]:
    """``lowerdir=``'s value: split at unescaped colons; ``\\x`` stands for ``x``."""
    if "\\" not in value:
        return value.split(":")  # the usual case, without a loop in Python
    parts: list[str] = []
    cur: list[str] = []
    it = iter(value)
    for ch in it:
        if ch == "\\":
            cur.append(next(it, ""))
        elif ch == ":":
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def _unescape(value: str) -> str:
    """``upperdir=``/``workdir=``'s value: ``\\x`` stands for ``x``, nothing splits."""
    if "\\" not in value:
        return value
    out: list[str] = []
    it = iter(value)
    for ch in it:
        out.append(next(it, "") if ch == "\\" else ch)
    return "".join(out)


def parse(data: Iterable[str]) -> OverlayLayers:
    """Read overlay data options (flags already split off) into an OverlayLayers.

    A later ``upperdir=`` or ``workdir=`` replaces an earlier one, as in the kernel.
    """
    lowers: list[str] = []
    datas: list[str] = []
    upper = work = None
    rest: list[str] = []
    for opt in data:
        key, eq, value = opt.partition("=")
        if not eq:
            rest.append(opt)
        elif key == "lowerdir":
            # "l1:l2::d1::d2": after the first empty item come data-only layers
            in_data = False
            for part in _unescape_split(value):
                if not part:
                    in_data = True
                elif in_data:
                    datas.append(part)
                else:
                    lowers.append(part)
        elif key == "lowerdir+":
            lowers.append(value)  # literal: the kernel neither unescapes nor splits it
        elif key == "datadir+":
            datas.append(value)
        elif key == "upperdir":
            upper = _unescape(value)
        elif key == "workdir":
            work = _unescape(value)
        else:
            rest.append(opt)
    return OverlayLayers(tuple(lowers), tuple(datas), upper, work, tuple(rest))


def escape(path: str) -> str:
    """``path`` as ``lowerdir=``, ``upperdir=`` and ``workdir=`` read it back."""
    return path.translate(_ESCAPES)


def render(layers: OverlayLayers, path: Callable[[str], str] = str) -> str:
    """The mount(2) data string of ``layers``, each directory passed through
    ``path`` (a rewrite to relative paths, say) and escaped."""
    parts: list[str] = []
    if layers.work is not None:
        parts.append("workdir=" + escape(path(layers.work)))
    if layers.upper is not None:
        parts.append("upperdir=" + escape(path(layers.upper)))
    if layers.lowers or layers.datas:
        lower = _join(":", [path(p) for p in layers.lowers])
        if layers.datas:
            lower += "::" + _join("::", [path(p) for p in layers.datas])
        parts.append("lowerdir=" + lower)
    parts.extend(layers.rest)
    return ",".join(parts)


def _join(sep: str, paths: list[str]) -> str:
    joined = sep.join(paths)
    # The usual case, checked in C over the whole string: no path needs an escape.
    if (
        "\\" not in joined
        and "," not in joined
        and joined.count(":") == len(sep) * (len(paths) - 1)
    ):
        return joined
    return sep.join([escape(p) for p in paths])


def check_layers(layers: OverlayLayers) -> None:
    """Refuse a lower (or data-only) layer listed twice, or inside another lower,
    the upperdir or the workdir: the layers overlayfs refuses with ELOOP and
    no name (moby #46498; fs/overlayfs/super.c ``ovl_check_overlapping_layers``).

    An upper or work directory inside a lower is fine for the kernel, and so
    here. pysnap runs this when the kernel says ELOOP, so a mount that works
    pays nothing. Paths are compared resolved (``os.path.realpath``): a
    symlinked alias of a layer is found too.

    Raises:
        InvalidArgumentError: naming both directories and their roles.
    """
    paths = [*layers.lowers, *layers.datas]
    n_lower = len(paths)
    paths += [p for p in (layers.upper, layers.work) if p]
    where: dict[str, list[int]] = {}
    keys = [os.path.realpath(p) for p in paths]
    for i, key in enumerate(keys):
        where.setdefault(key, []).append(i)
    for i in range(n_lower):
        twins = [j for j in where[keys[i]] if j != i]
        if twins:
            what = f"{_role(layers, i)} and {_role(layers, twins[0])} are one directory"
            break
        parent, key = os.path.dirname(keys[i]), keys[i]
        while parent != key and parent not in where:
            parent, key = os.path.dirname(parent), parent
        if parent != key:
            what = f"{_role(layers, i)} is inside {_role(layers, where[parent][0])}"
            break
    else:
        return
    raise InvalidArgumentError(
        f"overlay layers overlap: {what}; overlayfs refuses that (ELOOP, "
        "'too many levels of symbolic links')"
    )


def _role(layers: OverlayLayers, index: int) -> str:
    """``lowerdir #2 '/path'``: the index-th path of check_layers, named."""
    n, m = len(layers.lowers), len(layers.datas)
    if index < n:
        return f"lowerdir #{index + 1} {layers.lowers[index]!r}"
    if index < n + m:
        return f"datadir #{index - n + 1} {layers.datas[index - n]!r}"
    rest = [(r, p) for r, p in (("upperdir", layers.upper), ("workdir", layers.work)) if p]
    role, path = rest[index - n - m]
    return f"{role} {path!r}"
