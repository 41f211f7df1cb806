"""The bulk-work window without the cyclic collector (rctlpolicy.gcpause)."""

from __future__ import annotations

import gc
import threading
import weakref

from rctlpolicy.gcpause import no_cyclic_gc


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def make_cycles(count: int) -> None:
    for _ in range(count):
        a, b = Node(), Node()
        a.other, b.other = b, a


def test_collection_resumes_and_cycles_made_inside_are_still_collected() -> None:
    gc.collect()
    assert gc.isenabled()
    with no_cyclic_gc():
        assert not gc.isenabled()
        make_cycles(100)
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0, "the window leaves nothing frozen"
    assert gc.collect() >= 200, "the cycles made inside the window are garbage still"


def test_objects_kept_from_the_window_are_in_the_oldest_generation() -> None:
    gc.collect()
    with no_cyclic_gc():
        kept = [Node() for _ in range(1000)]
    # Not waiting in the young generation for a scan: moved to the oldest one unscanned.
    assert gc.get_count()[0] < 1000
    assert any(obj is kept[0] for obj in gc.get_objects(generation=2))


def test_nested_windows_and_a_disabled_collector_stay_as_they_were() -> None:
    with no_cyclic_gc():
        with no_cyclic_gc():
            pass
        assert not gc.isenabled(), "the inner window does not enable it early"
    assert gc.isenabled()
    gc.disable()
    try:
        with no_cyclic_gc():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_a_freeze_of_someone_else_is_left_alone() -> None:
    gc.collect()
    frozen = Node()
    gc.freeze()
    try:
        count = gc.get_freeze_count()
        with no_cyclic_gc():
            Node()
        assert gc.get_freeze_count() == count
        assert not any(obj is frozen for obj in gc.get_objects(generation=2))
    finally:
        gc.unfreeze()


def test_with_other_threads_running_the_windows_cycles_go_to_the_next_young_collection() -> None:
    """In the daemon other threads make garbage during a window too: nothing is moved to the
    oldest generation then, so a young collection still frees their cycles."""
    gc.collect()
    release = threading.Event()
    other = threading.Thread(target=release.wait, args=(10,))
    other.start()
    try:
        with no_cyclic_gc():
            a, b = Node(), Node()
            a.other, b.other = b, a
            watched = weakref.ref(a)
            del a, b
        assert watched() is not None
        gc.collect(generation=0)
        assert watched() is None, "a young collection frees what the window left"
    finally:
        release.set()
        other.join()
