"""What several subcommand modules share: label arguments and opening the root."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Protocol

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


def label_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--label",
        action="append",
        type=label_arg,
        metavar="KEY=VALUE",
        help="a label for the snapshot (repeatable)",
    )


@contextlib.contextmanager
def snapshotter(args: argparse.Namespace) -> Iterator[OverlaySnapshotter]:
    from ..overlay import OverlaySnapshotter  # imported late: `du` needs only snapcore

    if getattr(args, "address", None):  # the remote mode (remote.py): the same API
        with remote.open_remote(args) as remote_sn:
            yield remote_sn  # type: ignore[misc]
        return
    map_size = getattr(args, "map_size", None)
    with OverlaySnapshotter(args.root, **({"map_size": map_size} if map_size else {})) as sn:
        yield sn
