"""Device flushes per durable prepare+commit: pysnap and containerd 1.6, counted with strace.

Each side builds chains of two lengths in fresh roots; the difference per
layer is what one prepare+commit costs (opening a root costs nothing then).
Run as root or not, from the repository: python benchmarks/count_flushes.py
(containerd needs `go` and Debian's containerd sources; it is skipped without).
"""

from __future__ import annotations

import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))  # tests/flushes.py: the counter

import containerd  # noqa: E402
import flushes  # noqa: E402

from pysnap.fsutil import remove_tree  # noqa: E402

SMALL, LARGE = 10, 60


def main() -> int:
    if not flushes.available():
        print("strace is not installed", file=sys.stderr)
        return 1
    base = tempfile.mkdtemp(prefix="pysnap-flushes-", dir="/var/tmp")
    runs = iter(range(1000))

    def root() -> str:
        return os.path.join(base, str(next(runs)))

    rows = {}
    for sync in (True, False):
        rows[f"pysnap sync={sync}"] = flushes.per_layer(
            lambda n, s=sync: [
                sys.executable,
                "-c",
                flushes.CHAIN_SCRIPT,
                root(),
                str(n),
                str(int(s)),
            ],
            SMALL,
            LARGE,
        )
    why = containerd.missing()
    if why is None:
        exe = containerd.build(base)
        rows["containerd 1.6 overlay"] = flushes.per_layer(
            lambda n: [exe, "chain", root(), str(n)], SMALL, LARGE
        )
    else:
        print(f"containerd skipped: {why}", file=sys.stderr)
    for name, counts in rows.items():
        detail = ", ".join(f"{k} {v:g}" for k, v in counts.items() if k != "total" and v)
        print(f"{name:24s} {counts['total']:g} flushes per layer ({detail or 'none'})")
    remove_tree(base)
    return 0


if __name__ == "__main__":
    sys.exit(main())
