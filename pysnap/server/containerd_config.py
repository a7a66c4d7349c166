"""The block of containerd's config.toml that plugs ``pysnap serve`` in (``--print-config``)."""

from __future__ import annotations

import json
from typing import Any


def proxy_plugin_table(root: str, address: str, name: str = "pysnap") -> dict[str, Any]:
    """The same settings as data (``--json --print-config``), without the caveats."""
    plugin = {"type": "snapshot", "address": address, "capabilities": [], "exports": {"root": root}}
    return {"proxy_plugins": {name: plugin}}


def proxy_plugin_block(root: str, address: str, name: str = "pysnap") -> str:
    """``[proxy_plugins.NAME]`` for a server of ``root`` on ``address``, with its caveats.

    Paths are written as TOML basic strings (JSON's escapes are TOML's).
    """
    q = json.dumps
    return f"""\
# pysnap as a containerd snapshotter: add to containerd's config.toml, then
# `ctr run --snapshotter {name} ...` (or CRI's snapshotter = "{name}").
#
# The root belongs to containerd's garbage collector: snapshots containerd
# does not know of (made with the pysnap CLI or library on {root}) are
# removed at its next collection. Give pysnap serve a root of its own.
[proxy_plugins.{name}]
  type = "snapshot"
  address = {q(address)}
  # containerd 1.7/2.0 and later read the next two; 1.6 reads only type and address.
  # No "rebase": containerd's applier would write a layer's whiteouts into the
  # parentless bind mount of a rebased snapshot and lose them (containerd #13030).
  capabilities = []
  [proxy_plugins.{name}.exports]
    # CRI's image filesystem stats read it
    root = {q(root)}
"""
