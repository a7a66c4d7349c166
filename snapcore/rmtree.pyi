"""Type stub of snapcore.rmtree (the compiled module)."""

from collections.abc import Callable

def empty_tree(
    root_fd: int, top: str | bytes, open_denied: Callable[[bytes, int], int]
) -> list[bytes]: ...
