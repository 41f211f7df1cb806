"""Loading the policy in a child process: the result comes back whole, and a stop kills it."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import pytest
from corpus_host import rule

from rctlpolicy import loadworker
from rctlpolicy.codes import Code
from rctlpolicy.diagnostics import Diagnostic
from rctlpolicy.kernel import open_kernel
from rctlpolicy.loadworker import ChildLoader, decode_load, encode_load
from rctlpolicy.loops import Wakeup
from rctlpolicy.model import Severity
from rctlpolicy.onmatch import OnMatch, RunLimit
from rctlpolicy.policy_model import Policy, PolicyRule, SourceLocation
from rctlpolicy.policyload import FileMark, Fingerprint, PolicyLoad, load_rules

STOP = b"S"


def test_the_codec_knows_every_field_of_what_it_carries() -> None:
    for cls, names in loadworker._FIELDS.items():
        assert tuple(cls._fields) == names, cls.__name__


def test_a_load_comes_back_equal_through_the_codec() -> None:
    acting = OnMatch(run=("/bin/echo", "{jail}"), cooldown=60.0, max_runs=RunLimit(3, 3600.0))
    rules = tuple(
        PolicyRule(rule(text), SourceLocation(path, line, 3), text, on_match, comment, pattern)
        for path, line, text, on_match, comment, pattern in [
            ("/r/a.conf", 1, "jail:db1:maxproc:deny=100", None, None, None),
            ("/r/p.yaml", 4, "jail:db1:memoryuse:devctl=1073741824", acting, "page the DBA", None),
            ("/r/p.yaml", 9, "user:80:swapuse:devctl=1048576", OnMatch(service=("pg", "restart")),
             None, None),
            ("/r/p.yaml", 12, "jail:web1:maxproc:deny=50", None, None, "web*"),
        ]
    )  # fmt: skip
    diagnostics = (
        Diagnostic("/r/a.conf", 2, 5, Severity.WARNING, "duplicate-rule", "twice", "remove one",
                   "jail:db1:maxproc:deny=100", 25),
        Diagnostic("/r/p.yaml", 0, 0, Severity.INFO, Code.IO_ERROR, "no source"),
    )  # fmt: skip
    marks = (("/r/a.conf", FileMark(26, 5, "ab", True)), ("/r/p.yaml", FileMark(9, 6, "cd")))
    load = PolicyLoad(
        Policy(rules, ("/r/a.conf", "/r/p.yaml")),
        diagnostics,
        {"/r/a.conf": 26, "/r/p.yaml": 9},
        Fingerprint(marks),
        frozenset({"/r/p.yaml"}),
    )
    assert decode_load(encode_load(load)) == load
    assert type(decode_load(encode_load(load)).diagnostics[1].code) is type(Code.IO_ERROR)
    refused = PolicyLoad(None, diagnostics, fingerprint=Fingerprint((), "No such directory"))
    assert decode_load(encode_load(refused)) == refused
    with pytest.raises(ValueError, match="unreadable"):
        decode_load(b"garbage")


def _policy_dir(tmp_path: Path) -> Path:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "base.conf").write_text("jail:db1:maxproc:deny=100\nuser:www:maxproc:deny=200\n")
    (rules / "p.yaml").write_text(
        "rules:\n  - rule: jail:db1:memoryuse:devctl=4g\n"
        "    on_match: {run: [/usr/bin/logger, '{jail}'], cooldown: 1h}\n"
        "  - jail:web*:openfiles:deny=4096\n"
    )
    return rules


def test_the_child_loads_what_the_daemon_itself_would(tmp_path: Path, host: Path) -> None:
    rules = _policy_dir(tmp_path)
    wakeup = Wakeup()
    try:
        loaded = ChildLoader("sim", host).load(rules, wakeup, STOP)
    finally:
        wakeup.close()
    assert loaded is not None and loaded.policy is not None
    assert loaded == load_rules(rules, open_kernel("sim", host).resolver)


def test_a_host_that_cannot_be_opened_is_an_error_diagnostic(tmp_path: Path) -> None:
    rules = _policy_dir(tmp_path)
    wakeup = Wakeup()
    try:
        loaded = ChildLoader("sim", tmp_path / "no-such-host.yaml").load(rules, wakeup, STOP)
    finally:
        wakeup.close()
    assert loaded is not None and loaded.policy is None
    [problem] = loaded.diagnostics
    assert problem.code == "io-error" and "no-such-host.yaml" in problem.message


def test_a_stop_abandons_the_load_and_kills_the_child(
    tmp_path: Path, host: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    # Seconds of parsing: the stop comes long before the child could finish.
    lines = (f"jail:j{n}:maxproc:deny={n + 1}\n" for n in range(100_000))
    (rules / "big.conf").write_text("".join(lines))
    wakeup = Wakeup()
    wakeup.post(b"H")  # another request: stays pending, does not stop the load
    wakeup.post(STOP)
    caplog.set_level(logging.DEBUG, logger="rctlpolicy")
    try:
        assert ChildLoader("sim", host).load(rules, wakeup, STOP) is None
        assert wakeup.wait(0) == {b"H", STOP}
    finally:
        wakeup.close()
    started = re.search(r"in process (\d+)", caplog.text)
    assert started is not None
    with pytest.raises(ProcessLookupError):  # killed, and reaped
        os.kill(int(started.group(1)), 0)
    assert "policy load abandoned: stopping" in caplog.text
