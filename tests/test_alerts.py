"""contrib/prometheus/rctlpolicy-alerts.yml: valid rules, unit-tested, on exported metrics only.

`promtool check rules` and `promtool test rules` (Debian's prometheus package) run the real
checks; the rest holds the rules to rctlpolicy.metric_names and to the conventions below.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from promql import promql_selectors

from rctlpolicy.daemonmetrics import ACTION_OUTCOMES, EVENT_OUTCOMES
from rctlpolicy.metric_names import (
    ALL_SAMPLE_NAMES,
    RCTLPOLICY_ACTIONS_TOTAL,
    RCTLPOLICY_EVENTS_TOTAL,
    sample_labels,
)

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "contrib" / "prometheus" / "rctlpolicy-alerts.yml"
RULE_TESTS = REPO / "contrib" / "prometheus" / "rctlpolicy-alerts.test.yml"
#: Series Prometheus itself makes for every target, and the labels it adds to all.
SCRAPE_SERIES: dict[str, frozenset[str]] = {"up": frozenset()}
TARGET_LABELS = frozenset({"instance", "job"})
SEVERITIES = {"warning", "critical"}

#: What the alerts must cover (the names are the contract with alertmanager routes).
REQUIRED_ALERTS = {
    "RctlpolicyJailMemoryNearLimit",
    "RctlpolicyJailSwapping",
    "RctlpolicyActionFailing",
    "RctlpolicyActionExhausted",
    "RctlpolicyReloadFailed",
    "RctlpolicyDevdDisconnected",
    "RctlpolicyRacctDisabled",
    "RctlpolicyDown",
}


def load(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(path.read_text())
    return loaded


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load(RULES)["groups"] for rule in group["rules"] if "alert" in rule]


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("promtool") is None:
        pytest.skip("promtool is not installed (Debian package prometheus; dev/system-tools)")
    return subprocess.run(
        ["promtool", *args], capture_output=True, text=True, timeout=60, check=False
    )


def selector_problems(expr: str) -> list[str]:
    problems = []
    for name, labels in promql_selectors(expr):
        if name in SCRAPE_SERIES:
            known = SCRAPE_SERIES[name]
        elif name in ALL_SAMPLE_NAMES:
            known = sample_labels(name)
        else:
            problems.append(f"{name} is not exported by rctlpolicy")
            continue
        if unknown := labels - known - TARGET_LABELS:
            problems.append(f"{name} has no label {sorted(unknown)}")
    return problems


def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass() -> None:
    result = promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_use_only_exported_metrics_and_labels() -> None:
    problems = [
        f"{rule['alert']}: {problem}"
        for rule in alert_rules()
        for problem in selector_problems(rule["expr"])
    ]
    assert problems == []


def test_selector_problems_catches_typos() -> None:
    assert selector_problems('up{job="rctlpolicy"} == 0') == []
    assert selector_problems("rctlpolicy_devd_connect == 0") == [
        "rctlpolicy_devd_connect is not exported by rctlpolicy"
    ]
    assert selector_problems('rctlpolicy_actions_total{result="failure"}') == [
        "rctlpolicy_actions_total has no label ['result']"
    ]


def test_test_series_use_only_exported_metrics_and_labels() -> None:
    problems = [
        problem
        for test in load(RULE_TESTS)["tests"]
        for series in test["input_series"]
        for problem in selector_problems(series["series"])
    ]
    assert problems == []


def test_every_alert_has_for_severity_and_annotations() -> None:
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    assert set(names) >= REQUIRED_ALERTS
    for rule in rules:
        assert "for" in rule, rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        assert {"summary", "description"} <= rule["annotations"].keys(), rule["alert"]


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for test in load(RULE_TESTS)["tests"]:
        for case in test.get("alert_rule_test", []):
            (firing if case["exp_alerts"] else quiet).add(case["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - firing == set(), "never shown firing"
    assert names - quiet == set(), "never shown not firing"


def test_daemon_down_is_caught_whether_scraped_or_not() -> None:
    exprs = {rule["alert"]: rule["expr"] for rule in alert_rules()}
    assert exprs["RctlpolicyDown"].strip() == 'up{job="rctlpolicy"} == 0'
    assert 'absent(up{job="rctlpolicy"})' in exprs.values()


OUTCOME_MATCHER = re.compile(
    r'(?P<metric>\w+)\{[^}]*\boutcome\s*(?:=~|!~|!=|=)\s*"(?P<values>[^"]*)"'
)


def test_outcome_values_are_the_ones_the_exporter_uses() -> None:
    """An alert on outcome="failure" when the exporter says "failed" would never fire."""
    known = {
        RCTLPOLICY_ACTIONS_TOTAL: set(ACTION_OUTCOMES),
        RCTLPOLICY_EVENTS_TOTAL: set(EVENT_OUTCOMES),
    }
    texts = [rule["expr"] for rule in alert_rules()] + [
        series["series"] for test in load(RULE_TESTS)["tests"] for series in test["input_series"]
    ]
    used = [
        (match["metric"], value)
        for text in texts
        for match in OUTCOME_MATCHER.finditer(text)
        for value in match["values"].split("|")
    ]
    assert used, "no outcome matchers found: is the pattern out of date?"
    assert [(metric, value) for metric, value in used if value not in known[metric]] == []


def test_the_fleet_scrape_config_is_valid_and_names_the_job_the_rules_expect() -> None:
    config = REPO / "contrib" / "prometheus" / "prometheus-fleet.yml"
    result = promtool("check", "config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    [job] = load(config)["scrape_configs"]
    assert job["job_name"] == "rctlpolicy"
    assert job["file_sd_configs"]
    assert any(rule.get("target_label") == "instance" for rule in job["relabel_configs"])
