"""The daemon's loop threads: they stop on a sentinel, at once, and survive a failing item."""

from __future__ import annotations

import queue
import threading

from rctlpolicy.loops import PeriodicLoop, QueueLoop, Wakeup


def test_a_queue_loop_handles_every_item_queued_before_stop_then_ends() -> None:
    handled: list[int] = []
    loop: QueueLoop[int] = QueueLoop("test-queue", handled.append)
    for item in range(100):
        loop.items.put(item)
    loop.start()
    loop.stop()
    loop.join(5)
    assert not loop.is_alive()
    assert handled == list(range(100))


def test_a_failing_item_is_logged_and_the_loop_goes_on() -> None:
    handled: list[int] = []

    def handle(item: int) -> None:
        if item == 1:
            raise ValueError("bad item")
        handled.append(item)

    items: queue.Queue[int] = queue.Queue()
    loop = QueueLoop("test-failing", handle, items)
    loop.start()
    for item in (0, 1, 2):
        items.put(item)
    loop.stop()
    loop.join(5)
    assert handled == [0, 2]


def test_a_periodic_loop_ticks_and_stops_without_waiting_for_its_interval() -> None:
    ticked = threading.Event()
    fast = PeriodicLoop("test-fast", 0.01, ticked.set)
    fast.start()
    assert ticked.wait(5)
    fast.stop()
    fast.join(5)
    assert not fast.is_alive()

    slow = PeriodicLoop("test-slow", 3600, ticked.clear)
    slow.start()
    slow.stop()  # an hour-long interval: only the stop can end the wait
    slow.join(5)
    assert not slow.is_alive()


def test_wakeup_requests_wait_and_peek() -> None:
    wakeup = Wakeup()
    try:
        assert wakeup.wait(0) == set()
        wakeup.post(b"H")
        wakeup.post(b"H")
        wakeup.post(b"T")
        assert wakeup.peek(b"T")
        assert not wakeup.peek(b"J")
        assert wakeup.wait() == {b"H", b"T"}  # peeking took nothing out
        posted = threading.Thread(target=wakeup.post, args=(b"J",))
        posted.start()
        assert wakeup.wait(5) == {b"J"}  # woken by another thread
        posted.join()
    finally:
        wakeup.close()
    wakeup.post(b"H")  # after close: ignored, never raises
