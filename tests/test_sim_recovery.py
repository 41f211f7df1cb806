"""A damaged or removed simulated kernel state, seen through a running daemon (a subprocess):
the damage is said in the log and counted in the metrics, and the daemon puts its rules back."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from daemon_helpers import DaemonProcess, SimHost, wait_until, write_config

RULES = [
    "jail:db1:maxproc:deny=100",
    "jail:web1:memoryuse:deny=1073741824",
    "user:80:maxproc:deny=200",
]


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[DaemonProcess, SimHost]]:
    host = SimHost(tmp_path / "host.yaml")
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    (rules_dir / "rctl.conf").write_text("".join(f"{rule}\n" for rule in RULES))
    config = write_config(
        tmp_path / "rctlpolicy.yaml",
        {"jail-poll-interval": 0.2, "reload-debounce": 0.1, "shutdown-timeout": 5},
    )
    args = ["--config", str(config), "--kernel", "sim", "--sim-host", str(host.path),
            "--rules-dir", str(rules_dir), "--state-dir", str(tmp_path / "state"),
            "--web.listen-address", "127.0.0.1:0",
            # rewritten on every pass of the jail watcher, which also looks at the kernel
            "--output-file", str(tmp_path / "rctlpolicy.prom")]  # fmt: skip
    process = DaemonProcess(args)
    try:
        process.wait_started()
        yield process, host
        assert process.stop() == 0
    finally:
        process.close()


def _wait_for_a_new_file(path: Path) -> None:
    inode = path.stat().st_ino  # each pass renames a new file into place
    wait_until(lambda: path.stat().st_ino != inode, 15, f"a new {path.name}")


def _in_force(host: SimHost) -> bool:
    return host.rules() == sorted(RULES)


def _cut_in_half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _garbage(data: bytes) -> bytes:
    return b"\x00\xffnot a state file\n" * 7


@pytest.mark.parametrize(
    ("damage", "said"),
    [(_cut_in_half, "damaged"), (_garbage, "damaged"), (None, "removed")],
    ids=["truncated", "garbage", "removed"],
)
def test_the_daemon_puts_back_rules_the_simulated_kernel_lost(
    daemon: tuple[DaemonProcess, SimHost],
    damage: Callable[[bytes], bytes] | None,
    said: str,
) -> None:
    process, host = daemon
    wait_until(lambda: _in_force(host), 15, "the policy's rules in force")
    state = host.path.with_name(host.path.name + ".state.json")
    mark = process.log.mark
    if damage is None:
        state.unlink()
    else:
        state.write_bytes(damage(state.read_bytes()))
    line = process.log.wait_for(r"lost the rules this daemon applied", 15, mark)
    assert said in line.string and "re-applying the policy" in line.string
    process.log.wait_for(r"rules reconciled \(the kernel lost its rules\)", 15, mark)
    assert _in_force(host)
    # Said once: a few passes of the watcher later, the rebuilt state is not lost again.
    textfile = host.path.with_name("rctlpolicy.prom")
    for _ in range(3):
        _wait_for_a_new_file(textfile)
    assert process.log.count(r"lost the rules", mark) == 1
    assert process.value("rctlpolicy_kernel_rules_lost_total") == 1
