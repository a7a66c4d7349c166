"""The threads of an apply and a diff: bounded queues, errors, stopping (archive.pipeline)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from pysnap.archive import pipeline


def test_producer_delivers_everything_in_order() -> None:
    pieces = [bytes([i]) * (i * 1000 + 1) for i in range(200)]
    with pipeline.Producer(iter(pieces)) as p:
        assert list(p) == pieces


def test_producer_holds_at_most_its_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """A consumer that does not read stops the producer after BUDGET bytes (plus one batch)."""
    monkeypatch.setattr(pipeline, "BUDGET", 4 << 20)
    made = []

    def endless() -> Iterator[bytes]:
        while True:
            made.append(1)
            yield bytes(64 << 10)

    p = pipeline.Producer(endless())
    time.sleep(0.5)
    held = len(made) * (64 << 10)
    assert held <= pipeline.BUDGET + 2 * pipeline.BATCH
    p.close()  # wakes the blocked producer, which ends
    assert not p._t.is_alive()


def test_producer_error_reaches_the_consumer_after_the_pieces_before_it() -> None:
    def failing() -> Iterator[bytes]:
        yield b"a"
        raise ValueError("bad stream")

    got = []
    with pipeline.Producer(failing()) as p, pytest.raises(ValueError, match="bad stream"):
        for piece in p:
            got.append(piece)
    assert got == [b"a"]


def test_consumer_hands_items_in_order_and_raises_the_sinks_error() -> None:
    seen: list[bytes] = []
    c = pipeline.Consumer(seen.append)
    for i in range(100):
        c.put(bytes([i]) * 10)
    c.finish()
    assert seen == [bytes([i]) * 10 for i in range(100)]

    def sink(item: bytes) -> None:
        raise OSError(28, "No space left on device")

    c = pipeline.Consumer(sink)
    c.put(b"x")
    with pytest.raises(OSError, match="No space"):
        c.finish()


def test_consumer_abort_stops_without_taking_the_rest() -> None:
    release = threading.Event()
    seen: list[bytes] = []

    def slow(item: bytes) -> None:
        release.wait(5)
        seen.append(item)

    c = pipeline.Consumer(slow)
    for _ in range(3):
        c.put(b"x" * 10)
    threading.Timer(0.2, release.set).start()  # after abort() closed the queue
    c.abort()
    assert len(seen) <= 1
    with pytest.raises(RuntimeError):
        c.put(b"y")
