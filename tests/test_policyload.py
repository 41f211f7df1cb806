"""Loading the rules directory as the daemon does: lint, unsafe files, expansion, editor saves."""

from __future__ import annotations

import os
from pathlib import Path

from corpus_host import rule

from rctlpolicy.policy_model import OnMatch, Policy, PolicyRule, SourceLocation
from rctlpolicy.policyload import expand, load_rules, save_in_progress
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
