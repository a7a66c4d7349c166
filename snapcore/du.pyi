"""Type stub of snapcore.du (the compiled module): inode-deduplicated disk usage."""

import os
from collections.abc import Callable

_Path = str | bytes | os.PathLike[str] | os.PathLike[bytes]

def disk_usage(
    *roots: _Path,
    apparent: bool = False,
    threads: int | None = None,
    progress: Callable[[int, int], object] | None = None,
    progress_every: int = 16384,
    errors: list[OSError] | None = None,
) -> tuple[int, int]:
    """Return (size, inodes) of the trees at `roots` together, each inode counted once.

    containerd's fs.DiskUsage: every root is walked without following
    symlinks, the root itself included; each distinct (st_dev, st_ino) counts
    once across all roots (hard links and overlapping roots are not counted
    twice); size is the sum of st_blocks * 512 (st_size with `apparent=True`);
    inodes is the number of distinct inodes, directories included. Roots are
    str, bytes or os.PathLike; names are handled as bytes.

    Syscalls: openat(O_DIRECTORY|O_NOFOLLOW), getdents64, statx(
    AT_SYMLINK_NOFOLLOW), with the GIL released. `threads=None` starts with
    the calling thread and adds workers (up to the CPUs available, at most 8)
    only on large walks while directories are waiting, and up to 16 while
    the walk waits on the disk (a cold cache); `threads=1` walks in the
    calling thread only; `threads=N` starts N workers at once. Fewer workers
    and fewer open directories when RLIMIT_NOFILE leaves few fds. A file
    system reached twice through mounts below the roots (a bind mount of a
    directory of the tree inside it) is counted once: the walk starts again
    with every inode of that device in the hash set (Linux 5.8 flags a bind
    mount of the same file system; older kernels count it twice).
    `progress(entries, bytes)` is called from the calling thread about every
    `progress_every` inodes counted, with the running totals. `errors`, a
    list: GNU du's way, an entry that cannot be read (a directory without
    permission) is left out and its OSError appended, and the walk goes on.

    Raises:
        OSError: with errno and the full path (str or bytes, like its root)
            of the entry that failed; FileNotFoundError for a missing root.
            Entries that vanish during the walk (ENOENT, ESTALE) are skipped;
            directories moved during the walk may be counted twice or missed.
        KeyboardInterrupt (or whatever a signal handler or `progress` raises):
            the walk stops within a few thousand entries.
        ValueError: threads or progress_every below 1.
    """

def supports_d_type(path: _Path) -> bool:
    """Whether the filesystem at `path` fills d_type in getdents64 (overlayfs needs it).

    containerd's fs.SupportsDType: make a temporary directory with a file in
    it under `path`, read the directory back, look at the file's d_type.

    Raises:
        OSError: with errno and path, from creating or reading the test files.
    """
