"""When a parallel unpack starts its next layer: only while the cores are not all busy.

One apply already keeps more than one core busy where writing is cheap (the
reader decompresses, a thread hashes, the caller applies), so on tmpfs two
layers at once only contend: measured slower than one after the other. On a
disk the applies wait on the device and leave the cores idle, and layers at
once are faster. So the first layer starts at once, and each further one
when, over the last window, the process left at least half a core idle
(its CPU time against the wall time), as du's adaptive walk adds threads
when it finds itself waiting. Measured here (2 cores, the 5-layer gzip
image of bench_images), one apply keeps 1.64-1.91 cores busy on tmpfs and
1.0-1.26 on ext4, where the kernel's work runs in the applying thread.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable

# Long enough to see an apply's steady state past its start, short against a layer.
WINDOW = 0.25
IDLE = 0.5  # cores


class Admission:
    """Admits layers to run in the order they asked: the first at once, the next while half
    a core stays idle.

    In order, because the unpack commits in chain order: a layer passed over
    (the thread that just left a layer asked again first, and won the lock)
    ran last, and every commit above it waited for it, one after another
    once it was done.
    """

    def __init__(self, cores: int, window: float = WINDOW) -> None:
        self._cores = cores
        self._window = window
        self._cond = threading.Condition()
        self._running = 0
        self._waiting: collections.deque[object] = collections.deque()
        self._since = (time.monotonic(), time.process_time())

    def enter(self, stopped: Callable[[], bool]) -> None:
        """Wait until this layer may run, or until ``stopped()`` (the unpack failed)."""
        turn = object()
        with self._cond:
            self._waiting.append(turn)
            while not stopped() and (
                self._waiting[0] is not turn or (self._running and not self._core_idle())
            ):
                self._cond.wait(self._window)
            self._waiting.remove(turn)
            self._running += 1
            self._since = (time.monotonic(), time.process_time())  # a new layer's window
            self._cond.notify_all()  # the next in line may be admitted too

    def leave(self) -> None:
        with self._cond:
            self._running -= 1
            self._cond.notify_all()

    def _core_idle(self) -> bool:
        """Whether the window just ended left IDLE cores idle; starts the next window."""
        wall, cpu = time.monotonic(), time.process_time()
        elapsed = wall - self._since[0]
        if elapsed < self._window:
            return False
        busy = (cpu - self._since[1]) / elapsed
        self._since = (wall, cpu)
        return self._cores - busy >= IDLE
