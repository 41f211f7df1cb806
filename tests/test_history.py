"""rctlpolicy.history: the store (rollups, retention, damage, a full disk), the sampler's
threads, the daemon writing a real SQLite file (killed -9 mid-write), and `rctlpolicy history`.
"""

from __future__ import annotations

import json
import logging
import signal
import sqlite3
import threading
from pathlib import Path

import pytest
from daemon_helpers import Env, wait_until
from test_cli_kernel import edit_host

from rctlpolicy.cli import main
from rctlpolicy.clock import ManualClock
from rctlpolicy.history import HISTORY_FILE_NAME, HistoryStats
from rctlpolicy.history.sampler import HistorySampler, Sample
from rctlpolicy.history.store import (
    HistoryError,
    HistoryFullError,
    HistoryStore,
    decode_values,
    encode_values,
    percentile,
    rollup,
)
from rctlpolicy.kernel import open_simulator
from rctlpolicy.model import Resource

T0 = 1_800_000_000 - 1_800_000_000 % 3600  # an hour's start


@pytest.mark.parametrize(
    "values", [[], [0], [127, 128, 300], [2**32, 4 * 2**30, 0, 1], [2**63 - 1]]
)
def test_varints_round_trip(values: list[int]) -> None:
    assert decode_values(encode_values(values)) == values


def test_a_zero_costs_a_byte_and_four_gib_five() -> None:
    assert len(encode_values([0] * 25)) == 25
    assert len(encode_values([4 * 2**30])) == 5


@pytest.mark.parametrize(
    ("values", "fraction", "expected"),
    [([], 0.99, 0), ([5], 0.5, 5), (list(range(1, 101)), 0.99, 99), (list(range(1, 101)), 0.5, 50),
     (list(range(1, 11)), 0.95, 10), ([1, 2], 0.5, 1)],
)  # fmt: skip
def test_nearest_rank_percentiles(values: list[int], fraction: float, expected: int) -> None:
    assert percentile(values, fraction) == expected


def test_rollup_is_max_mean_p50_p95_p99() -> None:
    assert rollup([3, 1, 2, 10]) == (10, 4, 2, 10, 10)


def _fill(store: HistoryStore, hours: int, step: int = 60) -> None:
    for offset in range(0, hours * 3600, step):
        store.write(
            T0 + offset,
            {"db1": {Resource.MEMORYUSE: 1000 + offset, Resource.MAXPROC: 5}, "web1": {}},
        )


def test_samples_are_rolled_up_per_hour_and_pruned_past_retention(tmp_path: Path) -> None:
    path = tmp_path / HISTORY_FILE_NAME
    store = HistoryStore(path, raw_retention=2 * 3600, retention=3 * 3600)
    _fill(store, 5)
    store.close()
    reader = HistoryStore(path, readonly=True)
    raw = list(reader.raw(["db1"]))
    # Pruned at the last hour boundary (T0 + 4h): samples from T0 + 2h on are kept.
    assert raw[0].time == T0 + 2 * 3600
    assert raw[-1].time == T0 + 5 * 3600 - 60
    assert raw[0].values[Resource.MEMORYUSE] == 1000 + 2 * 3600
    hours = list(reader.hourly(["db1"]))
    assert [h.hour - T0 for h in hours] == [3600, 7200, 10800]  # retention: 3 h before T0 + 4h
    first = hours[0]
    assert first.samples == 60
    values = [1000 + 3600 + i * 60 for i in range(60)]
    assert first.stats[Resource.MEMORYUSE] == rollup(values)
    assert first.stats[Resource.MAXPROC] == (5, 5, 5, 5, 5)
    assert reader.jails() == ["db1", "web1"]
    reader.close()
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_a_damaged_file_is_renamed_aside_once_and_a_new_one_started(tmp_path: Path) -> None:
    path = tmp_path / HISTORY_FILE_NAME
    path.write_bytes(b"this is not a database, it is a mess " * 200)
    store = HistoryStore(path)
    assert store.write(T0, {"db1": {Resource.MAXPROC: 3}}) == 1
    assert store.renamed is not None
    assert store.renamed.read_bytes().startswith(b"this is not a database")
    store.close()
    assert [s.values[Resource.MAXPROC] for s in HistoryStore(path, readonly=True).raw()] == [3]


def test_a_full_disk_is_its_own_error(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path / HISTORY_FILE_NAME, max_bytes=64 * 1024)
    with pytest.raises(HistoryFullError, match="full"):
        for minute in range(2000):
            store.write(
                T0 + 60 * minute, {f"jail{n}": {Resource.MEMORYUSE: 2**33} for n in range(50)}
            )
    store.close()


# --- the sampler -------------------------------------------------------------------------------


def _sampler(host: Path, path: Path, **kwargs: object) -> tuple[HistorySampler, HistoryStats]:
    setup = open_simulator(str(host))
    stats = HistoryStats()
    sampler = HistorySampler(
        setup.kernel, path, ManualClock(T0), 60.0, stats, raw_retention=7200, retention=36000,
        **kwargs,  # type: ignore[arg-type]
    )  # fmt: skip
    return sampler, stats


def test_a_sample_is_every_running_jails_usage(host: Path, tmp_path: Path) -> None:
    sampler, stats = _sampler(host, tmp_path / HISTORY_FILE_NAME)
    sampler.sample()
    sample = sampler._items.get_nowait()
    assert set(sample.usage) == {"db1", "web1", "web2"}
    assert sample.usage["db1"][Resource.MAXPROC] == 24
    sampler.write(sample)
    assert stats.samples == 3
    sampler.store.close()


def test_a_sampling_round_reads_the_host_file_once_even_just_after_an_edit(
    host: Path, tmp_path: Path
) -> None:
    sampler, _ = _sampler(host, tmp_path / HISTORY_FILE_NAME)
    setup = open_simulator(str(host))
    sampler.kernel = setup.kernel
    assert setup.simulator is not None
    edit_host(host, racct_enable=True)  # just written: every unbatched call would read it
    reads = setup.simulator.host_file.reads
    sampler.sample()
    assert setup.simulator.host_file.reads - reads == 1
    assert set(sampler._items.get_nowait().usage) == {"db1", "web1", "web2"}
    sampler.store.close()


def test_a_full_queue_drops_the_sample_and_counts_it(host: Path, tmp_path: Path) -> None:
    sampler, stats = _sampler(host, tmp_path / HISTORY_FILE_NAME, queue_size=2)
    for _ in range(5):
        sampler.sample()  # nobody writes: the third sample on finds the queue full
    assert stats.dropped == 3 * 3
    assert sampler._items.qsize() == 2


def test_a_full_disk_pauses_says_it_once_and_resumes(
    host: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / HISTORY_FILE_NAME
    store = HistoryStore(path, raw_retention=7200, retention=36000, max_bytes=48 * 1024)
    sampler, stats = _sampler(host, path, store=store)
    big = {f"jail{n}": {r: 2**40 for r in Resource} for n in range(40)}
    caplog.set_level(logging.INFO, logger="rctlpolicy")
    for minute in range(60):
        sampler.write(Sample(T0 + 60 * minute, big))
    assert stats.paused
    assert stats.dropped > 0
    assert caplog.text.count("usage history paused: the disk is full") == 1
    store.close()
    store.max_bytes = None  # room again
    sampler.write(Sample(T0 + 3600 * 2, {"db1": {Resource.MAXPROC: 1}}))
    assert not stats.paused
    assert "usage history resumed" in caplog.text


def test_stop_joins_both_threads(host: Path, tmp_path: Path) -> None:
    sampler, _ = _sampler(host, tmp_path / HISTORY_FILE_NAME)
    sampler.start()
    sampler.stop()
    names = {t.name for t in threading.enumerate()}
    assert not names & {"rctlpolicy-history-sample", "rctlpolicy-history-write"}


# --- the daemon --------------------------------------------------------------------------------


def test_the_daemon_samples_into_sqlite_and_survives_kill_9_mid_write(env: Env) -> None:
    env.policy("p.yaml", ["jail:db1:maxproc:deny=100"])
    daemon = env.start("--history.interval", "0.05", devd=False)
    wait_until(lambda: daemon.value("rctlpolicy_history_samples_total") >= 30, 15, "samples")
    assert daemon.value("rctlpolicy_history_paused") == 0
    env.host.set_usage("jail:db1", "maxproc", 77)
    wait_until(lambda: daemon.value("rctlpolicy_history_samples_total") >= 60, 15, "samples")
    daemon.send_signal(signal.SIGKILL)  # while it samples every 50 ms
    daemon.proc.wait(10)
    path = env.state / HISTORY_FILE_NAME
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db.close()
    maxprocs = [s.values[Resource.MAXPROC] for s in HistoryStore(path, readonly=True).raw(["db1"])]
    assert len(maxprocs) >= 10
    assert maxprocs[0] == 24 and maxprocs[-1] == 77
    # A daemon started on the same file goes on writing it.
    daemon = env.start("--history.interval", "0.05", devd=False)
    wait_until(lambda: daemon.value("rctlpolicy_history_samples_total") >= 3, 15, "samples")
    assert daemon.stop() == 0


def test_history_interval_0_writes_nothing(env: Env) -> None:
    env.policy("p.yaml", ["jail:db1:maxproc:deny=100"])
    daemon = env.start("--history.interval", "0", devd=False)
    assert daemon.stop() == 0
    assert not (env.state / HISTORY_FILE_NAME).exists()


# --- rctlpolicy history ------------------------------------------------------------------------


@pytest.fixture
def state(tmp_path: Path) -> Path:
    store = HistoryStore(tmp_path / HISTORY_FILE_NAME, raw_retention=2 * 3600, retention=10 * 3600)
    _fill(store, 4)
    store.close()
    return tmp_path


WINDOW = ["--start", str(T0), "--end", str(T0 + 3 * 3600)]


def test_history_json_has_samples_and_older_hourly_rollups(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["history", "jail:db1:memoryuse", "--state-dir", str(state), *WINDOW,
                 "--format", "json"]) == 0  # fmt: skip
    document = json.loads(capsys.readouterr().out)
    assert document["start"] == "2027-01-15T08:00:00Z"
    samples = document["samples"]
    assert samples[0] == {"time": "2027-01-15T09:00:00Z", "jail": "db1",
                          "resource": "memoryuse", "value": 1000 + 3600}  # fmt: skip
    assert len(samples) == 120
    assert document["hourly"] == [
        {"hour": "2027-01-15T08:00:00Z", "jail": "db1", "resource": "memoryuse", "samples": 60,
         "max": 4540, "mean": 2770, "p50": 2740, "p95": 4360, "p99": 4540}
    ]  # fmt: skip


def test_history_text_and_csv_leave_out_what_a_jail_never_used(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["history", "--state-dir", str(state), *WINDOW]) == 0
    text = capsys.readouterr().out
    assert "maxproc" in text and "memoryuse" in text
    assert "web1" not in text and "cputime" not in text
    assert main(["history", "db1", "--state-dir", str(state), *WINDOW, "--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "time,jail,resource,kind,samples,value,max,mean,p50,p95,p99"
    assert "2027-01-15T09:00:00Z,db1,memoryuse,sample,1,4600,,,,," in lines


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["user:www"], "the history is per jail"), (["jail:db1:memoryuze"], "unknown resource")],
)
def test_history_errors(
    state: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["history", *argv, "--state-dir", str(state)]) == 2
    assert message in capsys.readouterr().err


def test_history_without_a_file_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["history", "--state-dir", str(tmp_path)]) == 2
    assert "no usage history" in capsys.readouterr().err


def test_history_finds_the_daemons_state_dir_in_its_config_file_as_plan_does(
    state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "rctlpolicy.yaml"
    config.write_text(f"rules-dir: {tmp_path}\nstate-dir: {state}\n")
    assert main(["history", "db1", "--config", str(config), *WINDOW, "--format", "csv"]) == 0
    assert "2027-01-15T09:00:00Z,db1,memoryuse,sample,1,4600,,,,," in capsys.readouterr().out
    # The flag wins over the file, as for the daemon.
    assert main(["history", "--config", str(config), "--state-dir", str(tmp_path / "x")]) == 2
    assert "no usage history" in capsys.readouterr().err


def test_the_daemon_renames_a_damaged_history_aside_says_so_once_and_goes_on(env: Env) -> None:
    env.policy("p.yaml", ["jail:db1:maxproc:deny=100"])
    env.state.mkdir(mode=0o700)
    (env.state / HISTORY_FILE_NAME).write_bytes(b"garbage, not SQLite " * 500)
    daemon = env.start("--history.interval", "0.05", devd=False)
    wait_until(lambda: daemon.value("rctlpolicy_history_samples_total") >= 9, 15, "samples")
    assert daemon.stop() == 0
    assert daemon.log.count(r"usage history: .* was damaged; it was renamed to ") == 1
    aside = list(env.state.glob(f"{HISTORY_FILE_NAME}.damaged-*"))
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"garbage")
    assert len(list(HistoryStore(env.state / HISTORY_FILE_NAME, readonly=True).raw())) >= 3


def test_the_daemon_never_follows_a_symlink_planted_at_its_history(env: Env) -> None:
    env.policy("p.yaml", ["jail:db1:maxproc:deny=100"])
    env.state.mkdir(mode=0o700)
    victim = env.state.parent / "victim"
    victim.write_bytes(b"not yours " * 100)
    victim.chmod(0o644)
    (env.state / HISTORY_FILE_NAME).symlink_to(victim)
    daemon = env.start("--history.interval", "0.05", devd=False)
    wait_until(lambda: daemon.value("rctlpolicy_history_paused") == 1, 15, "paused")
    assert daemon.stop() == 0
    assert daemon.log.count(r"usage history paused: .* is a symbolic link") == 1
    assert victim.read_bytes() == b"not yours " * 100
    assert victim.stat().st_mode & 0o777 == 0o644
    assert (env.state / HISTORY_FILE_NAME).is_symlink()
    assert not list(env.state.glob(f"{HISTORY_FILE_NAME}.damaged-*"))


def test_the_store_makes_its_directory_0700_and_its_file_0600(tmp_path: Path) -> None:
    path = tmp_path / "state" / "deeper" / HISTORY_FILE_NAME
    store = HistoryStore(path)
    store.write(T0, {"db1": {Resource.MAXPROC: 1}})
    store.close()
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_planted_wal_symlink_is_refused(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"x")
    path = tmp_path / HISTORY_FILE_NAME
    path.with_name(HISTORY_FILE_NAME + "-wal").symlink_to(victim)
    with pytest.raises(HistoryError, match="is a symbolic link"):
        HistoryStore(path).write(T0, {"db1": {Resource.MAXPROC: 1}})
    assert victim.read_bytes() == b"x"


def _damage_meta(path: Path, key: str, value: str) -> None:
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = ? WHERE key = ?", (value, key))
    db.commit()
    db.close()


def test_a_damaged_meta_is_one_line_for_commands_and_renamed_aside_by_a_writer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / HISTORY_FILE_NAME
    store = HistoryStore(path)
    store.write(T0, {"db1": {Resource.MAXPROC: 1}})
    store.close()
    _damage_meta(path, "rolled_until", "zz")
    for argv in (["history"], ["suggest"]):
        assert main([*argv, "--state-dir", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "malformed meta rolled_until" in err, err
    store = HistoryStore(path)
    store.write(T0 + 60, {"db1": {Resource.MAXPROC: 2}})
    store.close()
    assert store.renamed is not None and store.renamed.exists()


def test_a_resource_this_version_does_not_know_keeps_its_column(tmp_path: Path) -> None:
    path = tmp_path / HISTORY_FILE_NAME
    store = HistoryStore(path)
    store.write(T0, {"db1": {}})
    store.close()
    names = ",".join(["futureuse", *Resource])
    _damage_meta(path, "resources", names)
    db = sqlite3.connect(path)
    blob = encode_values([999, *(7 if r is Resource.MAXPROC else 0 for r in Resource)])
    db.execute("UPDATE raw SET vals = ?", (blob,))
    db.commit()
    db.close()
    store = HistoryStore(path)
    store.write(T0 + 60, {"db1": {Resource.MAXPROC: 8}})
    store.close()
    samples = list(HistoryStore(path, readonly=True).raw(["db1"]))
    assert [s.values[Resource.MAXPROC] for s in samples] == [7, 8]
    assert all("futureuse" not in map(str, s.values) for s in samples)


def test_history_refuses_a_planted_shm_symlink_it_would_write_through(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    victim = state.parent / "victim"
    victim.write_bytes(b"x" * 100)
    (state / (HISTORY_FILE_NAME + "-shm")).symlink_to(victim)
    assert main(["history", "--state-dir", str(state), *WINDOW]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "-shm: is a symbolic link" in err, err
    assert victim.read_bytes() == b"x" * 100


def test_a_damaged_file_that_cannot_be_renamed_aside_pauses_the_sampler(
    host: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import time

    path = tmp_path / HISTORY_FILE_NAME
    path.write_bytes(b"garbage, not SQLite " * 500)
    now = int(time.time())
    for second in range(now - 1, now + 60):  # os.replace cannot put a file over these
        (tmp_path / f"{HISTORY_FILE_NAME}.damaged-{second}").mkdir()
        (tmp_path / f"{HISTORY_FILE_NAME}.damaged-{second}" / "x").touch()
    sampler, stats = _sampler(host, path)
    caplog.set_level(logging.INFO, logger="rctlpolicy")
    sampler.write(Sample(T0, {"db1": {Resource.MAXPROC: 1}}))
    sampler.write(Sample(T0 + 60, {"db1": {Resource.MAXPROC: 1}}))
    assert stats.paused
    assert caplog.text.count("cannot be renamed aside") == 1
    assert "Traceback" not in caplog.text
    assert path.read_bytes().startswith(b"garbage")
    sampler.store.close()


@pytest.mark.parametrize("since", ["9" * 400, "0", "soon"])
def test_a_window_that_is_not_a_finite_positive_duration_is_refused(
    state: Path, since: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["history", "--state-dir", str(state), "--since", since]) == 2
    assert "is not a duration" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["history"], ["replay", "{rules}"], ["suggest"]])
def test_an_empty_window_is_refused_alike_by_every_command(
    state: Path, tmp_path: Path, command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    rules = tmp_path / "p.conf"
    rules.write_text("jail:db1:maxproc:deny=100\n")
    argv = [part.format(rules=rules) for part in command]
    window = ["--start", str(T0 + 60), "--end", str(T0)]
    assert main([*argv, "--state-dir", str(state), *window]) == 2
    err = capsys.readouterr().err
    assert err == f"rctlpolicy {command[0]}: the window is empty (--start is not before --end)\n"
