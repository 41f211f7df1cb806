"""Loading the rules directory as the daemon does: what is read and what refused, lint, unsafe
files, what the log may quote, expansion, editor saves."""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import pytest
from corpus_host import rule

from rctlpolicy import policy_yaml
from rctlpolicy.diagnostics import Diagnostic
from rctlpolicy.model import Severity
from rctlpolicy.onmatch import OnMatch
from rctlpolicy.policy_model import Policy, PolicyRule, SourceLocation
from rctlpolicy.policyload import (
    PolicyLoad,
    expand,
    for_the_log,
    load_rules,
    read_rules_dir,
    save_in_progress,
)
from rctlpolicy.semantics.resolver import OFFLINE

DB1 = "jail:db1:memoryuse:devctl=4294967296"
RUN = OnMatch(run=("/usr/bin/true", "{jail}"))


def policy_rule(text: str, on_match: OnMatch | None = RUN) -> PolicyRule:
    return PolicyRule(rule(text), SourceLocation("p.yaml", 1, 1), text, on_match, None, None)


def test_expand_prefers_the_rule_with_an_action_for_a_canonical_form_named_twice() -> None:
    plain = policy_rule(DB1, on_match=None)
    acting = policy_rule(DB1)
    loaded = expand(Policy((plain, acting)), {"db1"})
    assert loaded.by_canonical[DB1].on_match == RUN
    assert len(loaded.expanded) == 2


def test_save_in_progress_recognises_the_moments_of_editor_saves(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("rules: []\n")
    sizes = {str(path): 10}
    assert save_in_progress(sizes) is None
    path.write_text("")  # truncate-and-write, before the write
    assert "p.yaml is empty" in (save_in_progress(sizes) or "")
    path.rename(tmp_path / "p.yaml~")  # vim: the backup, before the new file
    assert "missing while its backup p.yaml~ exists" in (save_in_progress(sizes) or "")
    (tmp_path / "p.yaml~").unlink()  # a file removed for good is not a save
    assert save_in_progress(sizes) is None
    assert save_in_progress({str(path): 0}) is None  # it was empty before: nothing to lose


def test_load_rules_refuses_a_policy_others_can_change(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir(mode=0o755)
    policy = rules / "p.yaml"
    policy.write_text(f"rules:\n  - rule: {DB1}\n    on_match: {{run: [/usr/bin/true]}}\n")
    assert load_rules(rules, OFFLINE).policy is not None
    os.chmod(policy, 0o666)
    load = load_rules(rules, OFFLINE)
    assert load.policy is None
    assert [d.code for d in load.diagnostics if d.severity.value == "error"] == ["unsafe-file"]


def test_load_rules_reports_an_unreadable_directory(tmp_path: Path) -> None:
    load = load_rules(tmp_path / "missing", OFFLINE)
    assert load.policy is None
    assert load.diagnostics[0].code == "io-error"


def test_load_rules_records_the_size_of_each_file(tmp_path: Path) -> None:
    (tmp_path / "a.conf").write_text("jail:db1:maxproc:deny=10\n")
    load = load_rules(tmp_path, OFFLINE)
    assert load.file_sizes == {str(tmp_path / "a.conf"): 25}


# --- what is read, and what is refused -----------------------------------------------------------

GOOD = "jail:db1:maxproc:deny=100\n"


def _errors(load: PolicyLoad) -> list[tuple[str, str]]:
    return [(Path(d.path).name, d.code) for d in load.diagnostics if d.severity.value == "error"]


def test_a_symlink_to_a_safe_regular_file_is_followed(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    target = tmp_path / "shared.conf"
    target.write_text(GOOD)
    os.chmod(target, 0o644)
    (rules / "shared.conf").symlink_to(target)
    load = load_rules(rules, OFFLINE)
    assert load.policy is not None
    assert [r.canonical for r in load.policy.rules] == ["jail:db1:maxproc:deny=100"]


@pytest.mark.parametrize(
    ("plant", "reason"),
    [
        ("directory", "which is a directory"),
        ("group-writable", "which is writable by group or others"),
        ("someone-else's", "which is owned by uid 65534"),
        ("dangling", "cannot be opened"),
        ("fifo", "which is not a regular file"),
    ],
)
def test_a_symlink_to_anything_else_is_an_error_naming_it_and_nothing_is_read(
    tmp_path: Path, plant: str, reason: str
) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "base.conf").write_text(GOOD)
    target = tmp_path / "target"
    if plant == "directory":
        target.mkdir()
    elif plant == "fifo":
        os.mkfifo(target)
    elif plant != "dangling":
        target.write_text("root:$6$secret-hash:19000:0:99999:7:::\n")
        os.chmod(target, 0o664 if plant == "group-writable" else 0o644)
        if plant == "someone-else's":
            if os.geteuid() != 0:
                pytest.skip("only root can give a file away")
            os.chown(target, 65534, 65534)
    (rules / "planted.conf").symlink_to(target)
    load = load_rules(rules, OFFLINE)
    assert load.policy is None  # the kernel keeps its rules
    unsafe = plant in ("group-writable", "someone-else's")
    assert _errors(load) == [("planted.conf", "unsafe-file" if unsafe else "io-error")]
    [problem] = [d for d in load.diagnostics if d.path.endswith("planted.conf")]
    assert reason in problem.message and str(target) in problem.message
    assert "secret-hash" not in repr(load)


def test_a_file_over_the_size_limit_is_refused_before_it_is_read(tmp_path: Path) -> None:
    (tmp_path / "big.conf").write_text(GOOD * 100)  # 2,600 bytes
    load = load_rules(tmp_path, OFFLINE, max_file_bytes=1024)
    assert _errors(load) == [("big.conf", "io-error")]
    assert "2,600 bytes, over the limit of 1,024" in load.diagnostics[0].message
    assert load_rules(tmp_path, OFFLINE, max_file_bytes=4096).policy is not None


def test_a_fifo_under_a_policy_name_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.conf")
    assert _errors(load_rules(tmp_path, OFFLINE)) == [("pipe.conf", "io-error")]


def test_a_file_that_is_not_utf8_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "latin1.conf").write_bytes(b"# caf\xe9\n" + GOOD.encode())
    load = load_rules(tmp_path, OFFLINE)
    assert _errors(load) == [("latin1.conf", "io-error")]
    assert "not UTF-8" in load.diagnostics[0].message


def test_the_fingerprint_tells_a_half_written_rctl_conf(tmp_path: Path) -> None:
    path = tmp_path / "rctl.conf"
    path.write_text("jail:db1:maxproc:deny=100\njail:db1:memoryuse:deny=4")
    first = read_rules_dir(tmp_path).fingerprint
    assert (
        first.unfinished() == f"the last line of {path} has no newline yet (still being written?)"
    )
    path.write_text("jail:db1:maxproc:deny=100\njail:db1:memoryuse:deny=4g\n")
    second = read_rules_dir(tmp_path).fingerprint
    assert second.unfinished() is None
    assert second != first
    assert read_rules_dir(tmp_path).fingerprint == second  # unchanged: equal
    (tmp_path / "p.yaml").write_text("rules: []")  # YAML needs no final newline
    assert read_rules_dir(tmp_path).fingerprint.unfinished() is None


@pytest.mark.skipif(
    "yamlload" not in inspect.getsource(policy_yaml),
    reason="policy_yaml does not read through rctlpolicy.yamlload yet (the lang stream's change)",
)
def test_a_yaml_file_of_more_than_200000_nodes_is_refused(tmp_path: Path) -> None:
    (tmp_path / "huge.yaml").write_text("rules:\n" + "  - x\n" * 200_001)
    load = load_rules(tmp_path, OFFLINE)
    assert load.policy is None
    assert ("huge.yaml", "yaml-too-large") in _errors(load)


# --- what the log may show -----------------------------------------------------------------------


def test_the_log_never_quotes_a_file_others_cannot_read() -> None:
    secret = "root:$6$secret-hash:19000"
    quoting = Diagnostic("/r/p.conf", 1, 1, Severity.ERROR, "unknown-subject",
                         f"unknown subject '{secret}'", "fix it", secret, 4)  # fmt: skip
    about_the_file = Diagnostic("/r/p.conf", 0, 0, Severity.ERROR, "unsafe-file", "owned by 80")
    elsewhere = Diagnostic("/r/q.conf", 1, 1, Severity.ERROR, "unknown-subject", "bad", None, "x")
    shown = for_the_log([quoting, about_the_file, elsewhere], frozenset({"/r/p.conf"}))
    assert secret not in repr(shown)
    assert (shown[1].line, shown[1].code) == (1, "unknown-subject")  # where and what, still
    assert "not quoted: /r/p.conf is not readable by everyone" in shown[1].message
    assert shown[0] == about_the_file  # the loader's own words quote nothing
    assert shown[2] == elsewhere


def test_load_rules_marks_the_files_others_cannot_read(tmp_path: Path) -> None:
    (tmp_path / "open.conf").write_text(GOOD)
    (tmp_path / "closed.conf").write_text("jail:web1:maxproc:deny=1\n")
    os.chmod(tmp_path / "open.conf", 0o644)
    os.chmod(tmp_path / "closed.conf", 0o600)
    assert load_rules(tmp_path, OFFLINE).private == {str(tmp_path / "closed.conf")}
