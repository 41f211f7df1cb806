"""Scrapes that arrive together share one render, and one gzip of it.

``render(accept)`` is the exporter's (rctlpolicy.exposition.renderer): it collects every family
and formats them, which costs far more than answering a request. A scrape that finds a render
for the same ``Accept`` header already running waits for that one instead of starting its
own, so a thousand concurrent scrapes cost one render; a scrape that comes after it ended
starts a fresh one, so no scrape is answered with figures older than its request.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import threading
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

logger = logging.getLogger("rctlpolicy.web")

#: render(accept_header) -> (body, content_type); called on a worker thread.
Render = Callable[[str | None], tuple[bytes, str]]
#: render_key(accept_header) -> what the render's result depends on: scrapes with equal keys
#: share a render. The Accept header itself unless the server is told better.
RenderKey = Callable[[str | None], Hashable]


def _whole_header(accept: str | None) -> Hashable:
    return accept


_T = TypeVar("_T")
#: offload(function, *args): run on a worker thread, the result as a future on the loop.
Offload = Callable[..., "asyncio.Future[Any]"]


class Rendered:
    """One render's result, shared by the scrapes that waited for it; gzipped at most once."""

    def __init__(self, body: bytes, content_type: str) -> None:
        self.body = body
        self.content_type = content_type
        self._gzipped: bytes | None = None
        self._lock = threading.Lock()

    def gzipped(self) -> bytes:
        with self._lock:
            if self._gzipped is None:
                self._gzipped = gzip.compress(self.body, compresslevel=6, mtime=0)
            return self._gzipped


class SharedRenders:
    """The renders running now, by Accept header; used on the event loop only."""

    def __init__(self, render: Render, offload: Offload, key: RenderKey | None = None) -> None:
        self._render = render
        self._offload = offload
        # By key, not by raw header: a client that varies its Accept header on every request
        # must not start a render of its own each time, queueing Prometheus' scrape behind.
        self._key = key or _whole_header
        self._running: dict[Hashable, asyncio.Future[Rendered]] = {}
        #: Scrapes waiting for a render (several may wait for the same one).
        self.waiting = 0

    def get(self, accept: str | None, done: Callable[[Rendered | None], None]) -> None:
        """Call ``done`` with the render for ``accept`` (None if it failed)."""
        key = self._key(accept)
        future = self._running.get(key)
        if future is None:
            future = self._offload(self._render_now, accept)
            self._running[key] = future
            future.add_done_callback(lambda f: self._ended(key, f))
        self.waiting += 1

        def finished(future: asyncio.Future[Rendered]) -> None:
            self.waiting -= 1
            if future.cancelled():
                return  # the server is stopping
            done(None if future.exception() is not None else future.result())

        future.add_done_callback(finished)

    def gzipped(self, rendered: Rendered, done: Callable[[bytes | None], None]) -> None:
        """Call ``done`` with the gzipped body (None if compressing failed)."""
        future = self._offload(rendered.gzipped)

        def finished(future: asyncio.Future[bytes]) -> None:
            if not future.cancelled():
                done(None if future.exception() is not None else future.result())

        future.add_done_callback(finished)

    def _ended(self, key: Hashable, future: asyncio.Future[Rendered]) -> None:
        if self._running.get(key) is future:
            del self._running[key]

    def _render_now(self, accept: str | None) -> Rendered:
        try:
            body, content_type = self._render(accept)
            if not isinstance(body, bytes) or not isinstance(content_type, str):
                # Found here, it is a 500; found while writing, it left the scrape hanging.
                raise TypeError(
                    "render() must return (bytes, str), not "
                    f"({type(body).__name__}, {type(content_type).__name__})"
                )
        except Exception:
            logger.exception("rendering metrics failed")
            raise
        return Rendered(body, content_type)


def accepts_gzip(accept_encoding: str | None) -> bool:
    """True if an Accept-Encoding header allows gzip (an explicit q=0 refuses it)."""
    if not accept_encoding:
        return False
    wildcard: bool | None = None
    for item in accept_encoding.split(","):
        coding, *params = (part.strip() for part in item.split(";"))
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        coding = coding.lower()
        if coding in ("gzip", "x-gzip"):
            return quality > 0
        if coding == "*":
            wildcard = quality > 0
    return bool(wildcard)
