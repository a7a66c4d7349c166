"""Threads feeding each other buffers through queues bounded in bytes.

Each stage (reading, decompressing, hashing, compressing, writing) releases
the GIL in C, and so do snapcore's compiled loops, so the stages of one
apply or diff run on all the cores at once. An apply has three: the reader
decompresses, a hashing thread digests the blob and the tar, the caller
applies. Three threads on two cores let the scheduler balance them: runs of
small files load the apply, big files the decompression and hashing, and a
fixed split of the work between two threads left a core idle a quarter of
the time. The queues hold up to ``BUDGET`` bytes each, so a few MiB smooth
those phases and memory stays flat whatever the layer's size.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

BUDGET = 8 << 20
# Items go through the queues in batches of about this many bytes: a waiting
# thread woken per 64 KiB chunk cost tens of thousands of context switches.
BATCH = 1 << 20
_END = object()


class _Queue:
    """A FIFO holding at most ``budget`` bytes (one item of any size always fits)."""

    def __init__(self, budget: int) -> None:
        self._budget = budget
        self._items: collections.deque[tuple[Any, int]] = collections.deque()
        self._bytes = 0
        self._closed = False
        self._cv = threading.Condition()

    def put(self, item: Any, size: int) -> bool:
        """Wait for room; False if the queue was closed (the item is dropped)."""
        with self._cv:
            while self._items and self._bytes + size > self._budget and not self._closed:
                self._cv.wait()
            if self._closed:
                return False
            self._items.append((item, size))
            self._bytes += size
            self._cv.notify()
            return True

    def get(self) -> Any:
        """The next item; _END once the queue is closed."""
        with self._cv:
            while not self._items and not self._closed:
                self._cv.wait()
            if self._closed:
                return _END
            item, size = self._items.popleft()
            self._bytes -= size
            self._cv.notify()
            return item

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()


class Producer:
    """Run ``iterable`` (of buffers) in a thread; iterate the results with ``for piece in p``.

    An exception in the thread is raised in the consumer. ``close()`` stops
    the thread (it is called on exit from a ``with`` block, error or not).
    """

    def __init__(self, iterable: Iterable[Any], *, stalls: bool = False) -> None:
        # stalls: the iterable reads a pipe or a device, which may deliver part
        # of a layer and then nothing for good. Each piece is then handed on at
        # once (a batch could wait forever for its last bytes), and close()
        # waits a second for a thread blocked in a read; the daemon thread is
        # then left to end when the read does (it only reads and hashes).
        self._batch = 0 if stalls else BATCH
        self._join_timeout = 1.0 if stalls else None
        self._q = _Queue(BUDGET)
        self._error: BaseException | None = None
        self._t = threading.Thread(target=self._run, args=(iterable,), daemon=True)
        self._t.start()

    def _run(self, iterable: Iterable[Any]) -> None:
        batch: list[Any] = []
        size = 0
        try:
            for piece in iterable:
                batch.append(piece)
                size += len(piece)
                if size >= self._batch:
                    if not self._q.put(batch, size):
                        return
                    batch, size = [], 0
        except BaseException as e:  # handed to the consumer
            self._error = e
        if batch:
            self._q.put(batch, size)
        self._q.put(_END, 0)

    def __iter__(self) -> Iterator[Any]:
        while (batch := self._q.get()) is not _END:
            yield from batch
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        self._q.close()
        self._t.join(self._join_timeout)

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Consumer:
    """Hand items to ``sink`` in a thread: ``put(item)``; ``finish()`` waits for the last."""

    def __init__(self, sink: Callable[[Any], object]) -> None:
        self._q = _Queue(BUDGET)
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

    def put(self, item: Any, size: int | None = None) -> None:
        """Queue ``item`` (``size``: its bytes, len(item) if not given)."""
        if self._error is not None:
            raise self._error
        if not self._q.put(item, len(item) if size is None else size):
            raise RuntimeError("put after abort")

    def finish(self) -> None:
        """Wait for the sink to take everything; raise what it raised."""
        self._q.put(_END, 0)
        self._t.join()
        if self._error is not None:
            raise self._error

    def abort(self) -> None:
        """Stop the thread without handing it the rest."""
        self._error = self._error or RuntimeError("aborted")
        self._q.close()
        self._t.join()
