"""Bulk work without the cyclic garbage collector."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def no_cyclic_gc() -> Iterator[None]:
    """Loading 20,000 rules (or listing them from the kernel, or planning against them)
    creates some 200,000 small acyclic objects that stay alive: the cyclic collector would scan
    them again and again (a fifth of lint's time) and find nothing. Reference counting still
    frees everything; collection resumes afterwards. Nests; other threads are only delayed."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
