"""tests/promql.py: the PromQL scanner the dashboard and alert tests use."""

from __future__ import annotations

import pytest
from promql import promql_metric_names, promql_selectors

SELECTORS = [
    ("up", [("up", set())]),
    ('up{job="rctlpolicy"} == 0', [("up", {"job"})]),
    (
        'sum by (outcome) (rate(rctlpolicy_events_total{instance=~"$instance"}[$__rate_interval]))',
        [("rctlpolicy_events_total", {"instance"})],
    ),
    (
        "sum(rate(x[5m])) without (a) / ignoring (b) group_left (c) y offset 1h",
        [("x", set()), ("y", set())],
    ),
    (
        'histogram_quantile(0.9, sum by (le) (rate(h_bucket{le!="+Inf"}[5m])))',
        [("h_bucket", {"le"})],
    ),
    ("topk(10, a) * 1e3 > bool 0.5 or b and on (x) c unless d", [(n, set()) for n in "abcd"]),
    ('count_values("value", a) > atan2 b', [("a", set()), ("b", set())]),
    ("time() - start_time:seconds # comment", [("start_time:seconds", set())]),
    ('a @ start() + absent(b{c="d"})', [("a", set()), ("b", {"c"})]),
    ("a{b=~'x.*', c!~\"y\", d!=`z`}", [("a", {"b", "c", "d"})]),
]


@pytest.mark.parametrize(("expr", "expected"), SELECTORS)
def test_promql_selectors(expr: str, expected: list[tuple[str, set[str]]]) -> None:
    assert [(name, set(labels)) for name, labels in promql_selectors(expr)] == expected
    assert promql_metric_names(expr) == {name for name, _ in expected}


@pytest.mark.parametrize("expr", ["rat(x[5m])", "sum(x", "x{a='b'", "x[5m"])
def test_promql_scanner_reports_typos_and_unbalanced_brackets(expr: str) -> None:
    with pytest.raises(ValueError):
        promql_metric_names(expr)
