"""The parallel unpack's admission: one layer at once, the next while half a core is idle."""

from __future__ import annotations

import hashlib
import threading
import time

from pysnap.images.admission import Admission


def _second_admitted_while(first: threading.Event, admission: Admission) -> bool:
    """Enter a second layer while the first holds its place; whether it got in before it left."""
    got_in: list[bool] = []

    def second() -> None:
        admission.enter(lambda: False)
        got_in.append(not first.is_set())
        admission.leave()

    t = threading.Thread(target=second)
    t.start()
    t.join(timeout=2.0)
    first.set()  # the first layer leaves (if the second still waits, it gets in now)
    t.join()
    return got_in == [True]


def _hold(admission: Admission, done: threading.Event, work: str) -> threading.Thread:
    entered = threading.Event()
    data = bytes(1 << 20)

    def spin() -> None:  # sha256 releases the GIL: a thread on each core
        while not done.is_set():
            hashlib.sha256(data)

    def first() -> None:
        admission.enter(lambda: False)
        entered.set()
        if work == "sleep":  # waiting, as an apply on a device
            done.wait()
        else:  # the CPU busy in two threads, as an apply's stages (busy even on a shared host)
            helper = threading.Thread(target=spin)
            helper.start()
            spin()
            helper.join()
        admission.leave()

    t = threading.Thread(target=first)
    t.start()
    entered.wait()
    return t


def test_a_busy_layer_holds_the_next_back() -> None:
    admission = Admission(1, window=0.05)
    done = threading.Event()
    t = _hold(admission, done, "spin")
    assert not _second_admitted_while(done, admission)
    t.join()


def test_a_waiting_layer_lets_the_next_in() -> None:
    admission = Admission(2, window=0.05)
    done = threading.Event()
    t = _hold(admission, done, "sleep")
    assert _second_admitted_while(done, admission)
    t.join()


def test_a_stopped_unpack_admits_at_once() -> None:
    admission = Admission(1, window=60)
    admission.enter(lambda: False)
    start = time.monotonic()
    admission.enter(lambda: True)  # the unpack failed: the layer starts, to stop at its read
    assert time.monotonic() - start < 30
    admission.leave()
    admission.leave()


def test_layers_are_admitted_in_the_order_they_asked() -> None:
    """The thread that leaves a layer asks again at once, as a pool thread taking the next
    task does; it used to win the lock over the layers already waiting, and the layer
    passed over ran last while every commit above it waited."""
    admission = Admission(1, window=0.05)
    order: list[str] = []
    done = threading.Event()
    data = bytes(1 << 20)

    def first() -> None:
        admission.enter(lambda: False)
        while not done.is_set():  # busy: no layer is admitted beside it
            hashlib.sha256(data)
        admission.leave()
        admission.enter(lambda: False)
        order.append("first, again")
        admission.leave()

    def waiting(name: str) -> threading.Thread:
        def run() -> None:
            admission.enter(lambda: False)
            order.append(name)
            admission.leave()

        t = threading.Thread(target=run)
        t.start()
        time.sleep(0.2)  # it waits in line before the next one asks
        return t

    holder = threading.Thread(target=first)
    holder.start()
    time.sleep(0.1)
    others = [waiting("second"), waiting("third")]
    assert order == []
    done.set()
    for t in [holder, *others]:
        t.join()
    assert order == ["second", "third", "first, again"]
