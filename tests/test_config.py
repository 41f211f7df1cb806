"""The daemon's configuration: the YAML file, the flags, and which wins."""

from __future__ import annotations

from pathlib import Path

import pytest

from rctlpolicy.cli import main
from rctlpolicy.config import (
    DEFAULT_LISTEN_ADDRESS,
    FILE_KEYS,
    ConfigError,
    DaemonConfig,
    build_config,
    load_config_file,
    split_address,
)


def config_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rctlpolicy.yaml"
    path.write_text(text)
    return path


def test_every_setting_can_be_read_from_the_file(tmp_path: Path) -> None:
    path = config_file(
        tmp_path,
        """\
rules-dir: /etc/rp/rules
kernel: sim
sim-host: /var/sim/host.yaml
devd-socket: /run/devd.seqpacket.pipe
web.listen-address: "[::1]:9999"
web.telemetry-path: /m
web.config.file: /etc/rp/web.yml
pidfile: /run/rp.pid
syslog: true
syslog-socket: /dev/log
log.level: debug
log.format: logfmt
flush-on-exit: true
output-file: /var/tmp/rp.prom
state-dir: /var/db/rp
jail-poll-interval: 2
reload-debounce: 0.5
reload-settle: 4
max-policy-file-size: 1m
shutdown-timeout: 3
history.interval: 30s
history.raw-retention: 24h
history.retention: 10d
""",
    )
    values = load_config_file(path)
    assert set(values) == set(FILE_KEYS.values())
    config = build_config(values, {})
    assert config == DaemonConfig(
        rules_dir=Path("/etc/rp/rules"),
        kernel="sim",
        sim_host=Path("/var/sim/host.yaml"),
        devd_socket=Path("/run/devd.seqpacket.pipe"),
        listen_address="[::1]:9999",
        telemetry_path="/m",
        web_config_file=Path("/etc/rp/web.yml"),
        pidfile=Path("/run/rp.pid"),
        syslog=True,
        syslog_socket="/dev/log",
        log_level="debug",
        log_format="logfmt",
        flush_on_exit=True,
        output_file=Path("/var/tmp/rp.prom"),
        state_dir=Path("/var/db/rp"),
        jail_poll_interval=2.0,
        reload_debounce=0.5,
        reload_settle=4.0,
        max_policy_file_size=1024 * 1024,
        shutdown_timeout=3.0,
        history_interval=30.0,
        history_raw_retention=86400.0,
        history_retention=864000.0,
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rules_dir: /x\n", "unknown setting 'rules_dir'; did you mean 'rules-dir'?"),
        ("web.listen-adress: ':1'\n", "did you mean 'web.listen-address'?"),
        ("colour: red\n", "unknown setting 'colour'"),
        ("syslog: yes please\n", "syslog: must be true or false"),
        ("jail-poll-interval: 0\n", "must be a positive number of seconds"),
        ("shutdown-timeout: true\n", "must be a positive number of seconds"),
        ("rules-dir: ''\n", "rules-dir: must be a non-empty string"),
        ("history.interval: -1\n", "is not 0 (off) or a duration"),
        ("history.retention: 0\n", "is not a duration"),
        ("history.raw-retention: soon\n", "is not a duration"),
        ("history.retention: .inf\n", "is not a duration"),
        ("history.interval: .nan\n", "is not 0 (off) or a duration"),
        ("web.listen-address: 10217\n", "must be a non-empty string"),
        ("reload-settle: -1\n", "must be a positive number of seconds"),
        ("max-policy-file-size: 16MiB\n", "'16MiB' is not a size in bytes (such as 16m"),
        ("max-policy-file-size: 0\n", "is not a size in bytes"),
        ("max-policy-file-size: [1]\n", "must be a size in bytes"),
        ("- a list\n", "the configuration is a mapping of settings"),
        ("key: [unclosed\n", "YAML error"),
    ],
)
def test_file_errors_say_what_and_where(tmp_path: Path, text: str, message: str) -> None:
    path = config_file(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config_file(path)
    assert message in str(caught.value)
    assert str(path) in str(caught.value)


def test_a_setting_given_twice_is_an_error_not_the_last_one(tmp_path: Path) -> None:
    path = config_file(tmp_path, "rules-dir: /etc/rp/rules\nlog.level: info\nrules-dir: /tmp/x\n")
    with pytest.raises(ConfigError) as caught:
        load_config_file(path)
    message = str(caught.value)
    assert str(path) in message
    assert "line 3" in message and "'rules-dir' is given twice (first on line 1)" in message


def test_the_size_limit_reads_as_freebsds_tools_read_sizes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert load_config_file(config_file(tmp_path, "max-policy-file-size: 65536\n")) == {
        "max_policy_file_size": 65536
    }
    assert build_config({}, {}).max_policy_file_size == 16 * 1024 * 1024
    assert main(["daemon", "--max-policy-file-size", "lots"]) == 2
    assert "'lots' is not a size in bytes" in capsys.readouterr().err


def test_an_unknown_key_suggests_nothing_when_nothing_is_close(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config_file(config_file(tmp_path, "zzz: 1\n"))
    assert "did you mean" not in str(caught.value)


def test_an_empty_file_is_all_defaults(tmp_path: Path) -> None:
    assert load_config_file(config_file(tmp_path, "# nothing set\n")) == {}
    assert build_config({}, {}) == DaemonConfig()


def test_a_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="No such file"):
        load_config_file(tmp_path / "absent.yaml")


def test_relative_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    path = config_file(tmp_path, "rules-dir: rules\npidfile: run/rp.pid\nsim-host: ../h.yaml\n")
    values = load_config_file(path)
    assert values["rules_dir"] == tmp_path / "rules"
    assert values["pidfile"] == tmp_path / "run" / "rp.pid"
    assert values["sim_host"] == tmp_path.parent / "h.yaml"


def test_flags_given_override_the_file_and_flags_not_given_do_not(tmp_path: Path) -> None:
    values = load_config_file(
        config_file(tmp_path, "log.level: debug\nweb.listen-address: ':1234'\nsyslog: true\n")
    )
    config = build_config(values, {"log_level": "error", "listen_address": None, "syslog": None})
    assert config.log_level == "error"  # the flag wins
    assert config.listen_address == ":1234"  # not given on the command line: the file's
    assert config.syslog is True


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"kernel": "linux"}, "kernel: 'linux' is not one of auto, freebsd, sim"),
        ({"log_level": "loud"}, "log.level: 'loud' is not one of"),
        ({"log_format": "xml"}, "log.format: 'xml' is not one of text, logfmt, json"),
        ({"telemetry_path": "metrics"}, "must start with '/'"),
        ({"listen_address": "localhost"}, "is not HOST:PORT"),
        ({"listen_address": "h:99999"}, "is not HOST:PORT"),
        ({"listen_address": "http://127.0.0.1:10217/metrics"}, "is HOST:PORT, not a URL"),
        ({"listen_address": "https://[::1]:10217"}, "is HOST:PORT, not a URL"),
        ({"listen_address": "::1:10217"}, r"in brackets, as in \[::1\]:10217"),
        ({"listen_address": "[127.0.0.1]:10217"}, "brackets hold an IPv6 address"),
        ({"colour": "red"}, "unknown settings: colour"),
    ],
)
def test_invalid_values_are_refused(flags: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_config({}, flags)


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:10217", ("127.0.0.1", 10217)),
        ("[::1]:0", ("::1", 0)),
        (":10217", ("0.0.0.0", 10217)),
        ("[fe80::1%em0]:9100", ("fe80::1%em0", 9100)),
        ("localhost:10217", ("localhost", 10217)),
        (DEFAULT_LISTEN_ADDRESS, ("127.0.0.1", 10217)),
    ],
)
def test_split_address(address: str, expected: tuple[str, int]) -> None:
    assert split_address(address) == expected


def test_the_daemon_command_reports_a_bad_config_file_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = config_file(tmp_path, "rule-dir: /x\n")
    assert main(["daemon", "--config", str(path)]) == 2
    error = capsys.readouterr().err
    assert "unknown setting 'rule-dir'; did you mean 'rules-dir'?" in error


@pytest.mark.parametrize(
    "address", ["http://127.0.0.1:10217/metrics", "127.0.0.1:10217/metrics", "::1:10217"]
)
def test_the_daemon_command_explains_a_listen_address_that_is_not_host_port(
    address: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["daemon", "--web.listen-address", address]) == 2
    error = capsys.readouterr().err
    assert f"web.listen-address: '{address}'" in error
    assert "HOST:PORT" in error
    if "/" in address:
        assert "not a URL" in error
    else:
        assert "[::1]:10217" in error


def test_load_daemon_config_says_which_file_gave_what(tmp_path: Path) -> None:
    from rctlpolicy.config import DEFAULT_CONFIG_PATH, config_file_to_read, load_daemon_config

    path = tmp_path / "rctlpolicy.yaml"
    path.write_text("rules-dir: rules\nstate-dir: /var/db/x\n")
    loaded = load_daemon_config(path, {"state_dir": Path("/flag"), "kernel": None})
    assert loaded.path == path
    assert loaded.from_file == {"rules_dir", "state_dir"}
    assert loaded.config.rules_dir == (tmp_path / "rules").resolve()
    assert loaded.config.state_dir == Path("/flag")  # the flag wins, as for the daemon
    assert loaded.config.kernel == "auto"
    # Without --config: the default file if it exists, as the daemon reads it.
    expected = DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.exists() else None
    assert config_file_to_read(None) == expected
