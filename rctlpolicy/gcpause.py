"""Bulk work without the cyclic garbage collector."""

from __future__ import annotations

import contextlib
import gc
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def no_cyclic_gc() -> Iterator[None]:
    """Loading 20,000 rules (or listing them from the kernel, or planning against them)
    creates some 200,000 small acyclic objects that stay alive: the cyclic collector would scan
    them again and again (a fifth of lint's time) and find nothing. Reference counting still
    frees everything; collection resumes afterwards. Nests; other threads are only delayed.

    On the way out, what the window left alive is moved straight to the oldest generation
    (`gc.freeze()` then `gc.unfreeze()`, both constant time) instead of being scanned by the
    next young collection: that scan walks every object the window made, touching memory long
    out of the CPU's caches, and made the cost per rule of a 40,000-rule policy grow. Cycles
    among those objects are still found, by the next full collection. Skipped when something
    else holds objects frozen (a `gc.freeze()` of its own must stay as it is), and when other
    threads run (the daemon): the move takes every young object of the process, so the cycles
    another thread made meanwhile (asyncio's closed transports, exceptions' frames) would wait
    for a rare full collection instead of the next young one, and memory would grow."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            if gc.get_freeze_count() == 0 and _only_thread():
                gc.freeze()
                gc.unfreeze()
            gc.enable()


def _only_thread() -> bool:
    # Asked through sys.modules: a process that never imported threading (the CLI) has one
    # thread, and this core module does not import threading for a count.
    threading = sys.modules.get("threading")
    return threading is None or threading.active_count() == 1
