"""The daemon's usage sampler: one thread reads, another writes, nothing else waits.

Every `interval` seconds the sampling thread asks the kernel for each running jail's usage
(one rctl_get_racct per jail) and puts the sample on a small bounded queue; the writing thread
stores it (`HistoryStore`). When the writer is behind and the queue is full, the sample is
dropped and counted (`rctlpolicy_history_dropped_total`): the devd event path and the scrapes
never touch the database. A full disk pauses storing (`rctlpolicy_history_paused` is 1, one
log line) and every later sample tries again; the daemon keeps running either way.
"""

from __future__ import annotations

import logging
import queue
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from rctlpolicy.clock import Clock
from rctlpolicy.history import HistoryStats
from rctlpolicy.history.store import HistoryError, HistoryFullError, HistoryStore
from rctlpolicy.kernel.base import Kernel, KernelError, batched
from rctlpolicy.loops import PeriodicLoop, QueueLoop
from rctlpolicy.model import Filter, Resource, SubjectType

log = logging.getLogger("rctlpolicy")

#: Samples waiting for the writer at most; past that they are dropped and counted.
QUEUE_SIZE = 8


@dataclass(frozen=True, slots=True)
class Sample:
    time: float
    usage: Mapping[str, Mapping[Resource, int]]


class HistorySampler:
    """Samples every jail's usage into the history database. `start()`, then `stop()`."""

    def __init__(
        self,
        kernel: Kernel,
        path: Path,
        clock: Clock,
        interval: float,
        stats: HistoryStats,
        *,
        raw_retention: float,
        retention: float,
        queue_size: int = QUEUE_SIZE,
        store: HistoryStore | None = None,
    ) -> None:
        self.kernel = kernel
        self.clock = clock
        self.stats = stats
        self.store = store or HistoryStore(path, raw_retention=raw_retention, retention=retention)
        self._items: queue.Queue[Sample] = queue.Queue(maxsize=queue_size)
        self._writer: QueueLoop[Sample] = QueueLoop(
            "rctlpolicy-history-write", self.write, self._items
        )
        self._sampler = PeriodicLoop("rctlpolicy-history-sample", interval, self.sample)
        self._failing: str | None = None
        self._renamed_said = False

    def start(self) -> None:
        self._writer.start()
        self._sampler.start()

    def stop(self) -> None:
        """Stop sampling, let the writer store what is queued, close the database."""
        if self._sampler.is_alive():
            self._sampler.stop()
            self._sampler.join(10.0)
        if self._writer.is_alive():
            self._writer.stop()
            self._writer.join(30.0)
        self.store.checkpoint()
        self.store.close()

    # the sampling thread

    def sample(self) -> None:
        """Read every running jail's usage and queue it for the writer (never blocks)."""
        now = self.clock.time()
        usage: dict[str, dict[Resource, int]] = {}
        with batched(self.kernel):  # one round: the simulator reads its host file once
            try:
                jails = list(self.kernel.jails())
            except (KernelError, OSError) as error:
                log.debug("history: cannot list jails: %s", error)
                return
            for jail in jails:
                try:
                    usage[jail.name] = self.kernel.usage(Filter(SubjectType.JAIL, jail.name))
                except (KernelError, OSError) as error:
                    log.debug("history: cannot read the usage of jail %s: %s", jail.name, error)
        if not usage:
            return
        try:
            self._items.put_nowait(Sample(now, usage))
        except queue.Full:
            with self.stats.lock:
                self.stats.dropped += len(usage)

    # the writing thread

    def write(self, sample: Sample) -> None:
        """Store one sample; a failure pauses (said once) until a later one is stored."""
        try:
            written = self.store.write(sample.time, sample.usage)
        except HistoryError as error:
            full = isinstance(error, HistoryFullError)
            with self.stats.lock:
                self.stats.dropped += len(sample.usage)
                self.stats.paused = True
            if self._failing is None:
                what = "the disk is full" if full else "it cannot be written"
                log.error(
                    "usage history paused: %s (%s); the daemon goes on, and the history "
                    "resumes by itself once a sample can be stored again",
                    what,
                    error,
                )
            self._failing = str(error)
            return
        finally:
            self._say_renamed()
        with self.stats.lock:
            self.stats.samples += written
            self.stats.paused = False
        if self._failing is not None:
            log.info("usage history resumed: %s is written again", self.store.path)
            self._failing = None

    def _say_renamed(self) -> None:
        if self.store.renamed is not None and not self._renamed_said:
            self._renamed_said = True
            log.error(
                "usage history: %s was damaged; it was renamed to %s and a new one started",
                self.store.path,
                self.store.renamed,
            )
