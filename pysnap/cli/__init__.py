"""The ``pysnap`` command: ``ctr snapshots`` for a pysnap root.

Data goes to stdout (a table, or one JSON document with ``--json``); errors go
to stderr (as JSON under ``--json``). Exit codes (borg's scheme): 0 ok,
1 unexpected, 2 usage, 3-12 the error kinds of :mod:`pysnap.errors`
(its table, read through ``errors.kind_of``: 3 not found, 4 already exists,
5 failed precondition, 6 invalid argument, 7 an ``OSError``, 8 closed, 9 corrupt
store, 10 map full, 12 unimplemented), 130 interrupted (Ctrl-C), 141 stdout
closed early (SIGPIPE).

Each group of subcommands is a module with a ``register(add)`` function;
:data:`COMMAND_MODULES` lists them, so a new group is one module and one line.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn, Protocol

from .. import __version__
from ..errors import SnapshotError, kind_of
from . import demo, du, images, layers, mounting, remote, serve, snapshots
from ._common import AddCommand, Handler
from ._output import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PIPE,
    EXIT_UNEXPECTED,
    EXIT_USAGE,
    UsageError,
    fail,
    guard_standard_streams,
    human_size,
    report,
    rfc3339,
)

DEFAULT_ROOT = "/var/lib/pysnap"


class CommandModule(Protocol):
    def register(self, add: AddCommand) -> None: ...


# The groups of subcommands, in the order `pysnap --help` lists them.
COMMAND_MODULES: tuple[CommandModule, ...] = (
    snapshots,
    mounting,
    layers,
    images,
    du,
    demo,
    serve,
)

# Subcommands whose EPERM means "not root" rather than a file's permissions.
_MOUNTING_COMMANDS = ("mount", "unmount", "umount", "demo")


class _ParserError(UsageError):
    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser = parser


class _Parser(argparse.ArgumentParser):
    """argparse's parser, whose errors main() reports (as JSON under --json)."""

    def error(self, message: str) -> NoReturn:
        raise _ParserError(self, message)


def _map_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 0 < value <= sys.maxsize:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of bytes from 1 to {sys.maxsize}"
        )
    return value


def _root(text: str) -> str:
    if not text:  # `--root "$UNSET"` would make a store in the working directory
        raise argparse.ArgumentTypeError("the root must not be empty")
    return text


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``pysnap`` (global options, then one subcommand)."""
    root_default = os.environ.get("PYSNAP_ROOT") or DEFAULT_ROOT
    parser = _Parser(
        prog="pysnap",
        description="Manage overlay snapshots: containerd's snapshotter model, from the shell.",
        epilog="Exit codes: 0 ok, 1 unexpected, 2 usage, 3 not found, 4 already exists, "
        "5 failed precondition, 6 invalid argument, 7 OS error, 8 closed, 9 corrupt store, "
        "10 map full, 12 unimplemented, 130 interrupted.",
    )
    parser.add_argument(
        "--root",
        type=_root,
        default=root_default,
        help=f"snapshotter root (default: $PYSNAP_ROOT or {DEFAULT_ROOT}; now {root_default})",
    )
    parser.add_argument(
        "--map-size",
        type=_map_size,
        metavar="BYTES",
        help="the metadata store's map size (default 32 GiB; raise it after a map-full error)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--version", action="version", version=f"pysnap {__version__}")
    remote.add_options(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    # --json is accepted after the subcommand too; SUPPRESS keeps the global value.
    common = _Parser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="JSON")

    def add(
        name: str, func: Handler, help: str, aliases: Sequence[str] = ()
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name, help=help, description=help, aliases=list(aliases), parents=[common]
        )
        p.set_defaults(func=func)
        return p

    for module in COMMAND_MODULES:
        module.register(add)
    return parser


def _wants_json(argv: list[str]) -> bool:
    """Whether --json is among the options (before any ``--``): for errors met
    before the arguments are parsed."""
    options = argv[: argv.index("--")] if "--" in argv else argv
    return "--json" in options


def _interrupted(args: argparse.Namespace) -> int:
    return fail(args, "interrupted", "interrupted", EXIT_INTERRUPTED)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``pysnap`` with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    guard_standard_streams()
    argv = sys.argv[1:] if argv is None else list(argv)
    early = argparse.Namespace(json=_wants_json(argv))  # until the arguments are parsed
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, --version
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    except _ParserError as e:
        if early.json:
            return fail(early, "usage", f"{e.parser.prog}: {e}", EXIT_USAGE)
        with contextlib.suppress(OSError, ValueError):
            e.parser.print_usage(sys.stderr)
            sys.stderr.write(f"{e.parser.prog}: error: {e}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        return _interrupted(early)
    command = args.command
    try:
        return args.func(args) or EXIT_OK
    except UsageError as e:
        return fail(args, "usage", str(e), EXIT_USAGE)
    except BrokenPipeError:
        # The reader went away (`pysnap ls | head`): stop quietly, as cat does.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_PIPE
    except (SnapshotError, OSError) as e:  # the one table of error kinds
        hint = ""
        if kind_of(e).code == "EPERM" and command in _MOUNTING_COMMANDS:
            hint = " (mounting needs root: CAP_SYS_ADMIN)"
        return report(args, command, e, hint)
    except KeyboardInterrupt:
        return _interrupted(args)
    except Exception as e:
        with contextlib.suppress(OSError, ValueError):
            traceback.print_exc()
        return fail(args, "unexpected", f"{command}: {type(e).__name__}: {e}", EXIT_UNEXPECTED)


def run() -> None:
    """The console script: ``sys.exit(main())``."""
    try:
        code = main()
    except KeyboardInterrupt:  # Ctrl-C before or after main's handlers
        code = _interrupted(argparse.Namespace(json=_wants_json(sys.argv[1:])))
    sys.exit(code)


__all__ = [
    "COMMAND_MODULES",
    "DEFAULT_ROOT",
    "build_parser",
    "human_size",
    "main",
    "rfc3339",
    "run",
]
