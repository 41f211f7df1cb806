"""Usage history: what every jail used, sampled by the daemon and kept in SQLite.

- `store`: the database (`STATE_DIR/history.sqlite`, WAL): per-interval rows for the raw
  retention, hourly rollups (max, mean, p50, p95, p99 per resource) for the long one; a damaged
  file is renamed aside and a new one started; a full disk is an error the caller pauses on.
- `sampler`: the daemon's side: one thread reads every jail's usage each interval and queues
  it, another writes; a full queue drops the sample and counts it, so nothing else ever waits
  on the database.
- `timeline`: usage over time from the store, a JSON-lines file or Prometheus, for `replay`
  and `suggest`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

HISTORY_FILE_NAME = "history.sqlite"


@dataclass
class HistoryStats:
    """What the metrics show of the history; updated by the sampler's threads under `lock`."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    #: Jail samples stored.
    samples: int = 0
    #: Jail samples not stored: the writer was behind, or storing is paused.
    dropped: int = 0
    #: Storing is paused (a full disk, or a file that cannot be written).
    paused: bool = False
