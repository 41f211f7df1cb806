"""Usage over time, per jail and resource, from wherever it was recorded.

Three sources give the same `Timeline`:
- the daemon's history database (`from_history`): every sample still kept, and before those
  one point per hour (the hour's maximum, or the statistic asked for);
- a JSON-lines file (`from_file`): `{"time", "jail", "resource", "value"}` per line, `time` in
  Unix seconds or RFC 3339, `value` in the resource's base unit as `rctl -u` prints it;
- Prometheus (`rctlpolicy.history.prometheus`): `query_range` over the `jail_*` usage series.
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from rctlpolicy.history.store import STATS, HistoryError, HistoryStore
from rctlpolicy.model import Resource

Series = list[tuple[float, int]]

#: A JSON-lines record is under a hundred bytes; a longer line is not one.
MAX_LINE = 64 * 1024


class TimelineError(Exception):
    """A source cannot be read; the message says which and why."""


#: Times are between 1970 and the end of year 9999 (what RFC 3339 and SQLite can hold).
LAST_TIME = 253402300799.0


def parse_time(text: str | float | int) -> float:
    """Unix seconds (a number or its text) or RFC 3339 (`2026-12-01T10:00:00Z`)."""
    seconds = _seconds(text)
    if not 0 <= seconds <= LAST_TIME:  # NaN too
        raise TimelineError(f"'{text}' is not a time between 1970 and 9999")
    return seconds


def _seconds(text: str | float | int) -> float:
    if isinstance(text, bool):
        raise TimelineError(f"{text!r} is not a time")
    if isinstance(text, int | float):
        return float(text)
    if not isinstance(text, str):
        raise TimelineError(f"{text!r} is not a time: write Unix seconds or RFC 3339")
    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise TimelineError(
            f"'{text}' is not a time: write Unix seconds or RFC 3339 (2026-12-01T10:00:00Z)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def format_time(seconds: float) -> str:
    """RFC 3339 in UTC, to the second."""
    return datetime.fromtimestamp(int(seconds), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Timeline:
    """Every (jail, resource)'s points, sorted by time, within [start, end)."""

    start: float
    end: float
    series: dict[tuple[str, Resource], Series] = field(default_factory=dict)
    #: What the reader should know about the data (coarser parts, skipped lines).
    notes: list[str] = field(default_factory=list)
    #: Where the points came from, in words.
    source: str = ""
    #: The resources whose points are kept (None: all). A jail with points of other resources
    #: only is still one of `jails()`; 500 jails' 48 hours of every resource are gigabytes.
    resources: frozenset[Resource] | None = None
    _seen: set[str] = field(default_factory=set)

    def add(self, time: float, jail: str, resource: Resource, value: int) -> None:
        if self.start <= time < self.end:
            self._seen.add(jail)
            if self.resources is None or resource in self.resources:
                self.series.setdefault((jail, resource), []).append((time, value))

    def finish(self) -> Timeline:
        """Sort each series by time (a later duplicate time wins) and drop empty ones."""
        for key, points in list(self.series.items()):
            by_time = dict(sorted(points, key=lambda p: p[0]))
            self.series[key] = sorted(by_time.items())
        return self

    @property
    def interval(self) -> float:
        """The sampling interval: the median spacing of consecutive points (0 when unknown)."""
        gaps = [
            b[0] - a[0]
            for points in self.series.values()
            for a, b in itertools.pairwise(points)
            if b[0] > a[0]
        ]
        return float(statistics.median(gaps)) if gaps else 0.0

    def jails(self) -> list[str]:
        return sorted(self._seen | {jail for jail, _ in self.series})

    def points(self, jail: str, resource: Resource) -> Series:
        return self.series.get((jail, resource), [])


def from_history(
    path: Path,
    start: float,
    end: float,
    jails: Iterable[str] | None = None,
    stat: str = "max",
    resources: Iterable[Resource] | None = None,
) -> Timeline:
    """The history database's samples in the window; before the first sample still kept,
    one point per hour with the hour's `stat` (max, mean, p50, p95, p99)."""
    index = STATS.index(stat)
    timeline = Timeline(start, end, source=f"history {path}", resources=_only(resources))
    store = HistoryStore(path, readonly=True)
    try:
        names = list(jails) if jails is not None else None
        first: dict[str, float] = {}
        # One jail's samples at a time: the whole window's as objects would be gigabytes.
        for name in sorted(set(names)) if names is not None else store.jails():
            for sample in store.raw([name], start, end):
                first.setdefault(sample.jail, sample.time)
                for resource, value in sample.values.items():
                    timeline.add(sample.time, sample.jail, resource, value)
        coarse = 0
        for rollup in store.hourly(names, start - start % 3600, end):
            if rollup.hour + 3600 > first.get(rollup.jail, 2**62):
                continue
            coarse += 1
            when = max(float(rollup.hour), start)
            for resource, stats in rollup.stats.items():
                timeline.add(when, rollup.jail, resource, stats[index])
    except HistoryError as error:
        raise TimelineError(str(error)) from error
    finally:
        store.close()
    if coarse:
        timeline.notes.append(
            f"{coarse} jail-hour(s) older than the raw retention are hourly rollups: one "
            f"point per hour at the hour's {stat}"
        )
    return timeline.finish()


def _only(resources: Iterable[Resource] | None) -> frozenset[Resource] | None:
    return frozenset(resources) if resources is not None else None


def from_file(
    path: Path, start: float, end: float, resources: Iterable[Resource] | None = None
) -> Timeline:
    """JSON lines of {"time", "jail", "resource", "value"}; a bad line is an error that says
    where (a timeline silently missing data would mislead)."""
    timeline = Timeline(start, end, source=f"file {path}", resources=_only(resources))
    try:
        handle = path.open("rb")
    except OSError as error:
        raise TimelineError(f"{path}: {error.strerror or error}") from error
    with handle:
        number = 0
        while True:
            try:
                raw = handle.readline(MAX_LINE + 1)
            except OSError as error:
                raise TimelineError(f"{path}: {error.strerror or error}") from error
            if not raw:
                break
            number += 1
            where = f"{path}:{number}"
            if len(raw) > MAX_LINE and not raw.endswith(b"\n"):
                raise TimelineError(f"{where}: a line longer than {MAX_LINE:,} bytes")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise TimelineError(f"{where}: not UTF-8") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise TimelineError("not a JSON object")
                time = parse_time(record["time"])
                jail = record["jail"]
                resource = Resource(record["resource"])
                value = record["value"]
            except json.JSONDecodeError as error:
                raise TimelineError(f"{where}: not JSON ({error.msg})") from None
            except KeyError as error:
                raise TimelineError(f"{where}: no {error.args[0]!r}") from None
            except TimelineError as error:
                raise TimelineError(f"{where}: {error}") from None
            except (ValueError, TypeError):
                raise TimelineError(
                    f"{where}: unknown resource {record.get('resource')!r}"
                ) from None
            if not isinstance(jail, str) or not jail:
                raise TimelineError(f"{where}: 'jail' must be a jail's name")
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value < 0
            ):
                raise TimelineError(f"{where}: 'value' must be a number >= 0")
            timeline.add(time, jail, resource, round(value))
    return timeline.finish()
