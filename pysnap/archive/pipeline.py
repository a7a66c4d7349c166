"""A producer thread feeding buffers through a bounded queue (decompression and hashing).

The stage in the thread (reading, hashing, decompressing, compressing,
writing) releases the GIL in C, and so does the consumer's compiled loop:
two cores work at once. The queue holds a few pieces of about 1 MiB, so
memory stays flat whatever the layer's size.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

_DEPTH = 4
_END = object()


class Producer:
    """Run ``iterable`` in a thread; iterate the consumer side with ``for piece in p``.

    An exception in the thread is raised in the consumer. ``close()`` stops
    the thread (it is called on exit from a ``with`` block, error or not).
    """

    def __init__(self, iterable: Iterable[Any], *, join_timeout: float | None = None) -> None:
        # join_timeout: how long close() waits for a thread blocked in a read. A
        # caller's pipe may never deliver again; the daemon thread is then left
        # to finish when it does (it only reads and hashes).
        self._join_timeout = join_timeout
        self._q: queue.Queue[Any] = queue.Queue(_DEPTH)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._t = threading.Thread(target=self._run, args=(iterable,), daemon=True)
        self._t.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, iterable: Iterable[Any]) -> None:
        try:
            for piece in iterable:
                if not self._put(piece):
                    return
        except BaseException as e:  # handed to the consumer
            self._error = e
        self._put(_END)

    def __iter__(self) -> Iterator[Any]:
        while True:
            item = self._q.get()
            if item is _END:
                if self._error is not None:
                    raise self._error
                return
            yield item

    def close(self) -> None:
        self._stop.set()
        self._t.join(self._join_timeout)

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Consumer:
    """Hand pieces to ``sink`` in a thread: ``put(piece)``; ``finish()`` waits for the last."""

    def __init__(self, sink: Callable[[memoryview], object]) -> None:
        self._q: queue.Queue[Any] = queue.Queue(_DEPTH)
        self._error: BaseException | None = None
        self._sink = sink
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while (item := self._q.get()) is not _END:
            if self._error is None:
                try:
                    self._sink(item)
                except BaseException as e:  # raised in put() or finish()
                    self._error = e

    def put(self, piece: memoryview) -> None:
        if self._error is not None:
            raise self._error
        self._q.put(piece)

    def finish(self) -> None:
        """Wait for the sink to take everything; raise what it raised."""
        self._q.put(_END)
        self._t.join()
        if self._error is not None:
            raise self._error

    def abort(self) -> None:
        self._error = self._error or RuntimeError("aborted")
        self._q.put(_END)
        self._t.join()
