"""What several subcommand modules share: label arguments, opening the root, and
telling whether a snapshot's directory is mounted."""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from .. import mountinfo
from ..errors import FailedPreconditionError, NotFoundError
from . import remote

if TYPE_CHECKING:
    from ..overlay import OverlaySnapshotter

Handler = Callable[[argparse.Namespace], int | None]


class AddCommand(Protocol):
    """``add(name, handler, help, aliases)``: a new subcommand's parser, --json included."""

    def __call__(
        self, name: str, func: Handler, help: str, aliases: Sequence[str] = ()
    ) -> argparse.ArgumentParser: ...


def label_arg(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"label {text!r} is not KEY=VALUE")
    return key, value


def labels(pairs: Sequence[tuple[str, str]] | None) -> dict[str, str]:
    # The last value of a repeated key wins (ctr's LabelArgs), then "" drops it.
    return {k: v for k, v in dict(pairs or ()).items() if v}


GC_ROOT_LABEL = "containerd.io/gc.root"


def new_snapshot_labels(args: argparse.Namespace) -> dict[str, str]:
    """The labels of a snapshot prepare, view or commit makes. Through containerd
    (--snapshotter) it is marked a GC root with the time, as ctr marks what it
    prepares and commits: containerd's collector removes any snapshot that no
    lease, image or container holds (ctr leaves views collectable; we do not)."""
    given = labels(args.label)
    if getattr(args, "address", None) and args.snapshotter:
        given.setdefault(GC_ROOT_LABEL, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    return given


def label_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--label",
        action="append",
        type=label_arg,
        metavar="KEY=VALUE",
        help="a label for the snapshot (repeatable)",
    )


# The metadata store in a root (pysnap.metastore's layout): a root without it is
# not a pysnap root.
_STORE = "metadata.lmdb"


@contextlib.contextmanager
def snapshotter(
    args: argparse.Namespace, *, create: bool = False, upperdir_label: bool = False
) -> Iterator[OverlaySnapshotter]:
    """The snapshotter of ``--root``. Only ``create`` (prepare, view) makes a new root:
    elsewhere a mistyped ``--root`` would show, or clean, an empty store of its own."""
    from ..overlay import OverlaySnapshotter  # imported late: `du` needs only snapcore

    if getattr(args, "address", None):  # the remote mode (remote.py): the same API
        with remote.open_remote(args) as remote_sn:
            yield remote_sn  # type: ignore[misc]
        return
    if not create:
        try:
            os.stat(os.path.join(args.root, _STORE))
        except FileNotFoundError:
            raise NotFoundError(
                f"no pysnap root at {args.root!r} (see --root and $PYSNAP_ROOT; "
                "prepare or view makes one)"
            ) from None
    options: dict[str, Any] = {"upperdir_label": upperdir_label}
    map_size = getattr(args, "map_size", None)
    if map_size:
        options["map_size"] = map_size
    with OverlaySnapshotter(args.root, **options) as sn:
        yield sn


def refuse_if_mounted(sn: OverlaySnapshotter, key: str, action: str) -> None:
    """FailedPreconditionError when a mount of this namespace uses ``key``'s directory.

    Locally ``sn`` was opened with ``upperdir_label``: the label names the
    directory. A remote snapshotter tells it only for an active snapshot,
    through its mounts (the overlay's upperdir, or the bind source); a
    remote one that hides its layers elsewhere is not checked.
    Overlay layers and bind sources both count. A view of a parent owns no
    layer of its mount (it mounts its parents' layers), so its mount is not seen.
    """
    snapshot_dir = _snapshot_dir(sn, key)
    if snapshot_dir is None:
        return
    try:
        users = mountinfo.users_of(snapshot_dir)
    except FileNotFoundError:  # its directory is gone already (or on another machine)
        return
    if users:
        points = ", ".join(sorted({u.mount_point for u in users}))
        raise FailedPreconditionError(
            f"{action} {key!r}: it is mounted at {points}; unmount it first, "
            "or pass --force to go ahead anyway"
        )


def _snapshot_dir(sn: OverlaySnapshotter, key: str) -> str | None:
    """The directory of ``key``'s own files (and work directory), where the snapshotter says."""
    from ..overlay import UPPERDIR_LABEL
    from ..types import Kind

    info = sn.stat(key)
    if UPPERDIR_LABEL in info.labels:  # ours: <snapshot>/fs beside <snapshot>/work
        return os.path.dirname(info.labels[UPPERDIR_LABEL])
    if info.kind is not Kind.ACTIVE:  # a view writes nothing; a committed one is not mounted
        return None
    for m in sn.mounts(key):
        if m.type == "bind" and "rw" in m.options:
            return m.source  # the snapshot's directory is all of it (containerd's native)
        for option in m.options:
            if option.startswith("upperdir="):  # an overlay's: upperdir and workdir side by side
                return os.path.dirname(option.removeprefix("upperdir="))
    return None
