"""contrib/grafana/rctlpolicy.json: a valid dashboard that only queries metrics rctlpolicy exports.

Every PromQL expression is checked against rctlpolicy.metric_names: its metric names and the
label names it matches on, so a renamed metric or label fails here instead of leaving a blank
panel.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from promql import promql_selectors

from rctlpolicy import metric_names
from rctlpolicy.metric_names import ALL_SAMPLE_NAMES, MetricType

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "contrib" / "grafana" / "rctlpolicy.json"
#: Labels Prometheus adds to every scraped series.
TARGET_LABELS = frozenset({"instance", "job"})
DATASOURCE = "${datasource}"

Panel = dict[str, Any]


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def all_panels(panels: list[Panel]) -> Iterator[Panel]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))  # collapsed rows nest theirs


def expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (panel["title"], target["expr"])
        for panel in all_panels(dashboard["panels"])
        for target in panel.get("targets", [])
    ]


def labels_of(series_name: str) -> frozenset[str]:
    """The label names a scraped series of this name carries."""
    return metric_names.sample_labels(series_name) | TARGET_LABELS


def check_expression(expr: str) -> list[str]:
    """Problems with one expression: unknown metrics, or labels those metrics do not have."""
    problems = []
    for name, labels in promql_selectors(expr):
        if name not in ALL_SAMPLE_NAMES:
            problems.append(f"{name} is not exported by rctlpolicy")
        elif unknown := labels - labels_of(name):
            problems.append(f"{name} has no label {sorted(unknown)}")
    return problems


def test_check_expression_catches_typos() -> None:
    assert check_expression('rate(rctlpolicy_events_total{outcome="acted"}[5m])') == []
    assert check_expression("rctlpolicy_event_total") == [
        "rctlpolicy_event_total is not exported by rctlpolicy"
    ]
    assert check_expression('jail_memoryuse_bytes{jail="pg"}') == [
        "jail_memoryuse_bytes has no label ['jail']"
    ]
    assert check_expression("rctlpolicy_action_duration_seconds_bucket{le='1'}") == []


def test_is_a_grafana_dashboard(dashboard: dict[str, Any]) -> None:
    assert dashboard["schemaVersion"] >= 36
    assert dashboard["uid"] == "rctlpolicy"
    assert dashboard["title"]
    assert dashboard["id"] is None  # importable anywhere


def test_panels_have_unique_ids_and_non_overlapping_positions(dashboard: dict[str, Any]) -> None:
    panels = list(all_panels(dashboard["panels"]))
    ids = [panel["id"] for panel in panels]
    assert all(isinstance(i, int) for i in ids)
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        grid = panel["gridPos"]
        assert {"h", "w", "x", "y"} <= grid.keys(), panel["title"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_every_query_uses_the_datasource_variable(dashboard: dict[str, Any]) -> None:
    for panel in all_panels(dashboard["panels"]):
        if panel["type"] == "row":
            continue
        assert panel["targets"], f"{panel['title']} has no query"
        assert panel["datasource"]["uid"] == DATASOURCE, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == DATASOURCE, panel["title"]


def test_every_expression_uses_exported_metrics_and_labels(dashboard: dict[str, Any]) -> None:
    problems = [
        f"{title}: {problem}"
        for title, expr in expressions(dashboard)
        for problem in check_expression(expr)
    ]
    assert problems == []


def test_counters_and_histograms_are_only_read_through_rate_or_increase(
    dashboard: dict[str, Any],
) -> None:
    cumulative = {
        sample
        for spec in metric_names.METRIC_SPECS
        if spec.type is not MetricType.GAUGE
        for sample in spec.sample_names
    }
    for title, expr in expressions(dashboard):
        for name in cumulative:
            for found in re.finditer(rf"\b{name}\b", expr):
                before = expr[: found.start()]
                assert re.search(r"\b(rate|increase|irate)\($", before), f"{title}: {expr}"


VARIABLE_QUERY = re.compile(r"label_values\((?P<selector>.+),\s*(?P<label>\w+)\)")


def test_variables(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("instance", "name"):
        variable = variables[name]
        assert variable["datasource"]["uid"] == DATASOURCE
        match = VARIABLE_QUERY.fullmatch(variable["query"])
        assert match, variable["query"]
        assert check_expression(match["selector"]) == []
        (metric,) = (metric for metric, _ in promql_selectors(match["selector"]))
        assert match["label"] in labels_of(metric)
    assert re.fullmatch(r"label_values\(jail_id(\{.*\})?, name\)", variables["name"]["query"])


def test_covers_what_operators_need(dashboard: dict[str, Any]) -> None:
    used = {name for _, expr in expressions(dashboard) for name, _ in promql_selectors(expr)}
    assert {
        metric_names.JAIL_MEMORYUSE_BYTES,
        metric_names.JAIL_MEMORYUSE_LIMIT_BYTES,
        metric_names.JAIL_PCPU_USED,
        metric_names.JAIL_PCPU_LIMIT,
        metric_names.JAIL_MAXPROC,
        metric_names.JAIL_MAXPROC_LIMIT,
        metric_names.JAIL_SWAPUSE_BYTES,
        metric_names.JAIL_SWAPUSE_LIMIT_BYTES,
        metric_names.JAIL_CPUTIME_SECONDS_TOTAL,
        metric_names.RCTLPOLICY_EVENTS_TOTAL,
        metric_names.RCTLPOLICY_ACTIONS_TOTAL,
        metric_names.RCTLPOLICY_EXHAUSTED_ACTIONS,
        metric_names.RCTLPOLICY_CONFIG_LAST_RELOAD_SUCCESSFUL,
        metric_names.RCTLPOLICY_DEVD_CONNECTED,
        metric_names.RCTLPOLICY_DEVD_RECONNECTS_TOTAL,
    } <= used
    exprs = [expr for _, expr in expressions(dashboard)]
    assert any("topk(" in e and metric_names.JAIL_MEMORYUSE_BYTES in e for e in exprs)
    assert any("topk(" in e and metric_names.JAIL_CPUTIME_SECONDS_TOTAL in e for e in exprs)
    assert any("by (outcome)" in e and metric_names.RCTLPOLICY_EVENTS_TOTAL in e for e in exprs)
    assert any("by (outcome)" in e and metric_names.RCTLPOLICY_ACTIONS_TOTAL in e for e in exprs)
    assert any('action="deny"' in e and metric_names.JAIL_MEMORYUSE_LIMIT_BYTES in e for e in exprs)


def test_fleet_views_aggregate_across_every_host(dashboard: dict[str, Any]) -> None:
    panels = list(all_panels(dashboard["panels"]))
    [row] = [p for p in panels if p["type"] == "row" and p["title"].startswith("Fleet")]
    fleet = [p for p in panels if p["type"] != "row" and p["gridPos"]["y"] > row["gridPos"]["y"]]
    titles = {p["title"] for p in fleet}
    assert {"Top 10 jails by memory use across the fleet", "Actions per host"} <= titles
    for panel in fleet:
        for target in panel["targets"]:
            assert "$instance" not in target["expr"], panel["title"]  # every host
    by_title = {p["title"]: p["targets"][0]["expr"] for p in fleet}
    assert by_title["Actions per host"].startswith("sum by (instance")
