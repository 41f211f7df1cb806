"""The usage history database: raw samples, hourly rollups, retention, and a damaged file.

Layout (SQLite, WAL, `synchronous=NORMAL`: a killed daemon loses nothing it committed):

- `jails(id, name)`: a small integer per jail name;
- `raw(jail, time, vals)`: one row per jail and sample (`time` in milliseconds), every
  resource's value in one blob of varints in `Resource` order (500 jails x 48 h at 60 s is
  1.4 million rows: a row per resource would be 25 times as many);
- `hourly(jail, hour, samples, stats)`: per jail and hour, for every resource its max, mean,
  p50, p95 and p99 (nearest rank), the same varint blob (the max, then each other statistic
  as its distance below the max);
- `meta`: the schema version, the resource order of the blobs, the hour rolled up to.

Both tables are keyed (jail, time) without rowids, so a jail's range is one index range and
retention is one range delete per jail.

Errors: `HistoryFullError` when SQLite says the disk (or the database's size limit) is full,
`HistoryError` for other I/O failures. A file that is not a database, or a damaged one, is
renamed aside (`history.sqlite.damaged-<unix time>`) and a new one started; the caller is told
through `HistoryStore.renamed`.
"""

from __future__ import annotations

import math
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from rctlpolicy import safeio
from rctlpolicy.model import Resource

SCHEMA_VERSION = "1"
HOUR = 3600
#: The resources of the blobs, in order, for a new database (an old one says its own).
RESOURCES: tuple[Resource, ...] = tuple(Resource)
#: Rollup statistics, in the order of the hourly blob.
STATS = ("max", "mean", "p50", "p95", "p99")

DEFAULT_RAW_RETENTION = 48 * HOUR
DEFAULT_RETENTION = 35 * 24 * HOUR

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jails(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS raw(
    jail INTEGER NOT NULL, time INTEGER NOT NULL, vals BLOB NOT NULL,
    PRIMARY KEY(jail, time)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS hourly(
    jail INTEGER NOT NULL, hour INTEGER NOT NULL, samples INTEGER NOT NULL, stats BLOB NOT NULL,
    PRIMARY KEY(jail, hour)) WITHOUT ROWID;
"""


class HistoryError(Exception):
    """The history database cannot be written or read (the message says why)."""


class HistoryFullError(HistoryError):
    """The disk (or the database's size limit) is full: nothing more can be stored now."""


# --- the blobs ---------------------------------------------------------------------------------


def encode_values(values: Iterable[int]) -> bytes:
    """Non-negative integers as LEB128 varints (a zero is one byte, 4 GiB five)."""
    out = bytearray()
    for given in values:
        value = max(0, int(given))
        while value >= 0x80:
            out.append((value & 0x7F) | 0x80)
            value >>= 7
        out.append(value)
    return bytes(out)


def decode_values(blob: bytes) -> list[int]:
    """The integers `encode_values` wrote."""
    values: list[int] = []
    value = shift = 0
    for byte in blob:
        value |= (byte & 0x7F) << shift
        if byte & 0x80:
            shift += 7
        else:
            values.append(value)
            value = shift = 0
    return values


def percentile(ordered: Sequence[int], fraction: float) -> int:
    """Nearest-rank percentile of sorted values (`fraction` in 0..1); 0 for none."""
    if not ordered:
        return 0
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def rollup(values: Sequence[int]) -> tuple[int, int, int, int, int]:
    """max, mean (rounded), p50, p95, p99 of one resource's values in an hour."""
    ordered = sorted(values)
    if not ordered:
        return (0, 0, 0, 0, 0)
    mean = round(sum(ordered) / len(ordered))
    return (
        ordered[-1],
        mean,
        percentile(ordered, 0.50),
        percentile(ordered, 0.95),
        percentile(ordered, 0.99),
    )


def _below_max(stats: tuple[int, int, int, int, int]) -> tuple[int, int, int, int, int]:
    """The hourly blob's form: the max, then how far below it each other statistic is (p99
    is usually close to the max, so its varint is short: a 500-jail month is a third smaller)."""
    top = stats[0]
    return (top, top - stats[1], top - stats[2], top - stats[3], top - stats[4])


def _from_below_max(stored: Sequence[int]) -> tuple[int, int, int, int, int]:
    top = stored[0]
    return (top, top - stored[1], top - stored[2], top - stored[3], top - stored[4])


# --- what is read back ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RawSample:
    """One jail's usage at one sample."""

    time: float
    jail: str
    values: Mapping[Resource, int]


@dataclass(frozen=True, slots=True)
class HourlyRollup:
    """One jail's usage over one hour: per resource (max, mean, p50, p95, p99)."""

    hour: int
    jail: str
    samples: int
    stats: Mapping[Resource, tuple[int, int, int, int, int]]


# --- the store ---------------------------------------------------------------------------------


def _is_full(error: sqlite3.Error) -> bool:
    return getattr(error, "sqlite_errorname", "") == "SQLITE_FULL" or "full" in str(error)


def _is_damage(error: sqlite3.Error) -> bool:
    name = getattr(error, "sqlite_errorname", "")
    return name in ("SQLITE_CORRUPT", "SQLITE_NOTADB") or (
        isinstance(error, sqlite3.DatabaseError)
        and not isinstance(error, sqlite3.OperationalError)
        and ("malformed" in str(error) or "not a database" in str(error))
    )


class HistoryStore:
    """The history database at `path`: opened (and created) on first use, one connection.

    Not thread-safe by itself: the daemon's writer thread owns one, a command another.
    `max_bytes` caps the database's size (SQLite's max_page_count): past it a write fails as
    a full disk would.
    """

    def __init__(
        self,
        path: Path,
        *,
        raw_retention: float = DEFAULT_RAW_RETENTION,
        retention: float = DEFAULT_RETENTION,
        readonly: bool = False,
        max_bytes: int | None = None,
    ) -> None:
        self.path = path
        self.raw_retention = raw_retention
        self.retention = retention
        self.readonly = readonly
        self.max_bytes = max_bytes
        #: Where a damaged file was moved to (set once, when it happens).
        self.renamed: Path | None = None
        self._db: sqlite3.Connection | None = None
        self._jail_ids: dict[str, int] = {}
        self._resources: tuple[Resource | None, ...] = RESOURCES
        self._rolled_until: int | None = None
        self._lock = threading.Lock()

    # opening

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            try:
                self._db = self._open()
            except OSError as error:  # the directory or file: unsafe, or not ours to create
                self._close_quietly()
                raise HistoryError(f"{self.path}: {error.strerror or error}") from error
            except sqlite3.Error as error:
                self._close_quietly()
                if self.readonly or not _is_damage(error):
                    raise self._error(error) from error
                self._rename_aside()
                try:
                    self._db = self._open()
                except sqlite3.Error as again:
                    self._close_quietly()
                    raise self._error(again) from again
        return self._db

    def _open(self) -> sqlite3.Connection:
        if self.readonly:
            if not self.path.exists():
                raise HistoryError(f"{self.path}: no usage history (is the daemon sampling?)")
            self._refuse_planted_companions()  # a reader writes (and may truncate) the -shm
            db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
        else:
            self._create_safely()
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db = db
        if not self.readonly:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            if self.max_bytes is not None:
                page = int(db.execute("PRAGMA page_size").fetchone()[0])
                db.execute(f"PRAGMA max_page_count={max(1, self.max_bytes // page)}")
            db.executescript(_SCHEMA)
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        if not meta and not self.readonly:
            with db:
                db.execute("BEGIN")
                db.executemany(
                    "INSERT INTO meta(key, value) VALUES (?, ?)",
                    [("schema", SCHEMA_VERSION), ("resources", ",".join(RESOURCES))],
                )
            meta = {"schema": SCHEMA_VERSION, "resources": ",".join(RESOURCES)}
        if meta.get("schema", SCHEMA_VERSION) != SCHEMA_VERSION:
            raise HistoryError(f"{self.path}: unknown history schema {meta.get('schema')!r}")
        names = meta.get("resources", ",".join(RESOURCES)).split(",")
        # A name this version does not know keeps its place in the blobs (never read).
        known = set(Resource.__members__.values())
        self._resources = tuple(Resource(n) if n in known else None for n in names)
        rolled = meta.get("rolled_until")
        try:
            self._rolled_until = int(rolled) if rolled is not None else None
        except ValueError:  # damage: renamed aside by the daemon, said by a command
            raise sqlite3.DatabaseError(f"malformed meta rolled_until {rolled!r:.40}") from None
        self._jail_ids = {name: jid for jid, name in db.execute("SELECT id, name FROM jails")}
        return db

    def _create_safely(self) -> None:
        """The daemon runs as root: the directory is made 0700 (safeio), and the database and
        its -wal and -shm companions are never reached through a symlink someone planted
        (SQLite would follow one); the database is created 0600 by us, not by SQLite."""
        safeio.make_directory(self.path.parent)
        self._refuse_planted_companions()
        fd = safeio.open_lock_file(self.path, mode=0o600)
        try:
            os.fchmod(fd, 0o600)
        finally:
            os.close(fd)

    def _refuse_planted_companions(self) -> None:
        for suffix in ("-wal", "-shm", "-journal"):
            companion = self.path.with_name(self.path.name + suffix)
            if companion.is_symlink():
                raise safeio.UnsafeStateFileError(companion, "is a symbolic link")

    def _rename_aside(self) -> None:
        try:
            self._move_aside()
        except OSError as error:
            raise HistoryError(
                f"{self.path}: damaged, and cannot be renamed aside: {error.strerror or error}"
            ) from error

    def _move_aside(self) -> None:
        import time

        aside = self.path.with_name(f"{self.path.name}.damaged-{int(time.time())}")
        os.replace(self.path, aside)
        for suffix in ("-wal", "-shm"):
            companion = self.path.with_name(self.path.name + suffix)
            if companion.exists():
                os.replace(companion, aside.with_name(aside.name + suffix))
        self.renamed = aside

    def _error(self, error: sqlite3.Error) -> HistoryError:
        if _is_full(error):
            return HistoryFullError(f"{self.path}: {error}")
        return HistoryError(f"{self.path}: {error}")

    def _close_quietly(self) -> None:
        if self._db is not None:
            try:
                self._db.close()
            except sqlite3.Error:
                pass
            self._db = None

    def close(self) -> None:
        self._close_quietly()

    def _run(self, work: str, *args: object) -> object:
        """A method's body, with damage handled: renamed aside, retried once on a new file."""
        method = getattr(self, work)
        try:
            return method(*args)
        except sqlite3.Error as error:
            if self.readonly or not _is_damage(error):
                raise self._error(error) from error
            self._close_quietly()
            self._rename_aside()
            try:
                return method(*args)
            except sqlite3.Error as again:
                raise self._error(again) from again

    # writing

    def write(self, time: float, usage: Mapping[str, Mapping[Resource, int]]) -> int:
        """Store one sample of every jail in `usage`; roll up finished hours and prune what
        is past retention. Returns the number of jail rows written."""
        result = self._run("_write", time, usage)
        assert isinstance(result, int)
        return result

    def _write(self, time: float, usage: Mapping[str, Mapping[Resource, int]]) -> int:
        db = self._connection()
        now = int(time)
        rows = []
        with db:
            db.execute("BEGIN")
            for jail, values in usage.items():
                rows.append(
                    (
                        self._jail_id(db, jail),
                        round(time * 1000),
                        encode_values(values.get(r, 0) if r else 0 for r in self._resources),
                    )
                )
            db.executemany("INSERT OR REPLACE INTO raw(jail, time, vals) VALUES (?, ?, ?)", rows)
            self._roll_up(db, now)
        return len(rows)

    def _jail_id(self, db: sqlite3.Connection, name: str) -> int:
        jid = self._jail_ids.get(name)
        if jid is None:
            db.execute("INSERT OR IGNORE INTO jails(name) VALUES (?)", (name,))
            jid = int(db.execute("SELECT id FROM jails WHERE name = ?", (name,)).fetchone()[0])
            self._jail_ids[name] = jid
        return jid

    def _roll_up(self, db: sqlite3.Connection, now: int) -> None:
        """Roll up every finished hour not rolled up yet, then prune (once an hour)."""
        current = now - now % HOUR
        if self._rolled_until is None:
            self._rolled_until = current
            db.execute("INSERT OR REPLACE INTO meta VALUES ('rolled_until', ?)", (str(current),))
            return
        if current <= self._rolled_until:
            return
        start = max(self._rolled_until, current - int(self.raw_retention) - HOUR)
        start -= start % HOUR
        jail_ids = list(self._jail_ids.values())
        for hour in range(start, current, HOUR):
            rows = []
            for jid in jail_ids:
                blobs = db.execute(
                    "SELECT vals FROM raw WHERE jail = ? AND time >= ? AND time < ?",
                    (jid, hour * 1000, (hour + HOUR) * 1000),
                ).fetchall()
                if not blobs:
                    continue
                columns = list(zip(*(decode_values(b[0]) for b in blobs), strict=False))
                stats = [value for column in columns for value in _below_max(rollup(column))]
                rows.append((jid, hour, len(blobs), encode_values(stats)))
            db.executemany(
                "INSERT OR REPLACE INTO hourly(jail, hour, samples, stats) VALUES (?, ?, ?, ?)",
                rows,
            )
        self._rolled_until = current
        db.execute("INSERT OR REPLACE INTO meta VALUES ('rolled_until', ?)", (str(current),))
        self._prune(db, now)

    def _prune(self, db: sqlite3.Connection, now: int) -> None:
        raw_cutoff = now - int(self.raw_retention)
        cutoff = now - int(self.retention)
        for jid in self._jail_ids.values():
            db.execute("DELETE FROM raw WHERE jail = ? AND time < ?", (jid, raw_cutoff * 1000))
            db.execute("DELETE FROM hourly WHERE jail = ? AND hour < ?", (jid, cutoff))

    def checkpoint(self) -> None:
        """Fold the WAL into the database file (the daemon does it at shutdown)."""
        if self._db is not None:
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass

    # reading

    def jails(self) -> list[str]:
        """Every jail the history has a row for, by name."""
        result = self._run("_names")
        assert isinstance(result, list)
        return result

    def _names(self) -> list[str]:
        self._connection()
        return sorted(self._jail_ids)

    def raw(
        self, jails: Iterable[str] | None = None, start: float = 0, end: float = 2**62
    ) -> Iterator[RawSample]:
        """Raw samples with start <= time < end, per jail in name order, then by time."""
        result = self._run("_raw", jails, round(start * 1000), round(min(end, 2**52) * 1000))
        assert isinstance(result, list)
        return iter(result)

    def _raw(self, jails: Iterable[str] | None, start: int, end: int) -> list[RawSample]:
        db = self._connection()
        out: list[RawSample] = []
        names = sorted(self._jail_ids) if jails is None else sorted(set(jails))
        for name in names:
            jid = self._jail_ids.get(name)
            if jid is None:
                continue
            for time, blob in db.execute(
                "SELECT time, vals FROM raw WHERE jail = ? AND time >= ? AND time < ? "
                "ORDER BY time",
                (jid, start, end),
            ):
                decoded = zip(self._resources, decode_values(blob), strict=False)
                values = {r: v for r, v in decoded if r is not None}
                out.append(RawSample(time / 1000, name, values))
        return out

    def hourly(
        self, jails: Iterable[str] | None = None, start: float = 0, end: float = 2**62
    ) -> Iterator[HourlyRollup]:
        """Hourly rollups of the hours starting in start <= hour < end."""
        result = self._run("_hourly", jails, int(start), math.ceil(end))
        assert isinstance(result, list)
        return iter(result)

    def _hourly(self, jails: Iterable[str] | None, start: int, end: int) -> list[HourlyRollup]:
        db = self._connection()
        out: list[HourlyRollup] = []
        names = sorted(self._jail_ids) if jails is None else sorted(set(jails))
        width = len(STATS)
        for name in names:
            jid = self._jail_ids.get(name)
            if jid is None:
                continue
            for hour, samples, blob in db.execute(
                "SELECT hour, samples, stats FROM hourly WHERE jail = ? AND hour >= ? "
                "AND hour < ? ORDER BY hour",
                (jid, start, end),
            ):
                flat = decode_values(blob)
                stats = {
                    resource: _from_below_max(flat[i * width : (i + 1) * width])
                    for i, resource in enumerate(self._resources)
                    if resource is not None and len(flat) >= (i + 1) * width
                }
                out.append(HourlyRollup(int(hour), name, int(samples), stats))
        return out
