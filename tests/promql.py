"""A small PromQL scanner, enough to list the metrics and label names an expression uses, so the
Grafana dashboard and the alert rules can be checked against `rctlpolicy.metric_names`.

Only the tests read PromQL, so the scanner lives with them.
"""

from __future__ import annotations

import re

# PromQL as far as telling metric names apart from functions, keywords and label names.
_PROMQL_FUNCTIONS = frozenset({
    "abs", "absent", "absent_over_time", "acos", "acosh", "asin", "asinh", "atan", "atanh",
    "avg_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min", "cos", "cosh",
    "count_over_time", "day_of_month", "day_of_week", "day_of_year", "days_in_month", "deg",
    "delta", "deriv", "exp", "floor", "histogram_count", "histogram_fraction",
    "histogram_quantile", "histogram_stddev", "histogram_stdvar", "histogram_sum",
    "holt_winters", "hour", "idelta", "increase", "irate", "label_join", "label_replace",
    "last_over_time", "ln", "log10", "log2", "mad_over_time", "max_over_time", "min_over_time",
    "minute", "month", "pi", "predict_linear", "present_over_time", "quantile_over_time", "rad",
    "rate", "resets", "round", "scalar", "sgn", "sin", "sinh", "sort", "sort_desc", "sqrt",
    "stddev_over_time", "stdvar_over_time", "sum_over_time", "tan", "tanh", "time", "timestamp",
    "vector", "year", "start", "end",
})  # fmt: skip
_PROMQL_AGGREGATIONS = frozenset({
    "avg", "bottomk", "count", "count_values", "group", "max", "min", "quantile", "stddev",
    "stdvar", "sum", "topk",
})  # fmt: skip
_PROMQL_LABEL_LIST_KEYWORDS = frozenset({
    "by", "without", "on", "ignoring", "group_left", "group_right",
})  # fmt: skip
_PROMQL_KEYWORDS = _PROMQL_LABEL_LIST_KEYWORDS | frozenset({
    "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan",
})  # fmt: skip
_PROMQL_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
    |(?P<comment>\#[^\n]*)
    |(?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
    |(?P<variable>\$(?:\{[^}]*\}|\w+))
    |(?P<number>0[xX][0-9a-fA-F]+|(?:\d+(?:ms|[smhdwy]))+(?![\w.])
        |(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
    |(?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
    |(?P<punct>[{}()\[\],])
    |(?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)


def promql_metric_names(expr: str) -> frozenset[str]:
    """The metric names a PromQL expression selects (Grafana's `$variables` allowed).

    Label names inside `{...}` and `by/without/on/ignoring/group_*(...)` lists, functions,
    aggregations and keywords are not metric names. Raises ValueError for an identifier called
    like a function that PromQL does not know, so a typo is reported rather than skipped.
    """
    return frozenset(name for name, _ in promql_selectors(expr))


def promql_selectors(expr: str) -> tuple[tuple[str, frozenset[str]], ...]:
    """Each metric selector of a PromQL expression: (metric name, label names it matches on).

    `jail_memoryuse_limit_bytes{action="deny", per="jail"}` gives
    `("jail_memoryuse_limit_bytes", {"action", "per"})`. Raises ValueError as
    `promql_metric_names` does.
    """
    tokens = [
        (m.lastgroup or "", m.group())
        for m in _PROMQL_TOKEN.finditer(expr)
        if m.lastgroup not in ("space", "comment")
    ]
    selectors: list[tuple[str, set[str]]] = []
    braces = brackets = paren_depth = 0
    # Parenthesis depths at which a `by (...)`, `on (...)`, ... label list is open.
    label_list_opened_at: list[int] = []
    expect_label_list = False
    # The selector whose `{...}` is open, if its metric name came just before it.
    open_selector: set[str] | None = None
    for index, (kind, text) in enumerate(tokens):
        following = tokens[index + 1][1] if index + 1 < len(tokens) else ""
        if kind == "punct":
            if text == "{":
                braces += 1
            elif text == "}":
                braces -= 1
                open_selector = None
            elif text == "[":
                brackets += 1
            elif text == "]":
                brackets -= 1
            elif text == "(":
                paren_depth += 1
                if expect_label_list:
                    label_list_opened_at.append(paren_depth)
            elif text == ")":
                if label_list_opened_at and label_list_opened_at[-1] == paren_depth:
                    label_list_opened_at.pop()
                paren_depth -= 1
            expect_label_list = False
            continue
        expect_label_list = False
        if kind != "ident" or brackets or label_list_opened_at:
            continue
        if braces:
            if open_selector is not None and following in ("=", "!"):  # =, =~, !=, !~
                open_selector.add(text)
            continue
        lowered = text.lower()
        if lowered in _PROMQL_LABEL_LIST_KEYWORDS:
            expect_label_list = following == "("
            continue
        if text in _PROMQL_AGGREGATIONS and following.lower() in ("(", "by", "without"):
            continue  # `sum (...)`, `sum by (x) (...)`
        if lowered in _PROMQL_KEYWORDS:
            continue  # `or (...)` is not a call
        if following == "(":
            if text not in _PROMQL_FUNCTIONS:
                raise ValueError(f"unknown PromQL function {text!r} in {expr!r}")
            continue
        labels: set[str] = set()
        selectors.append((text, labels))
        if following == "{":
            open_selector = labels
    if braces or brackets or paren_depth:
        raise ValueError(f"unbalanced brackets in {expr!r}")
    return tuple((name, frozenset(labels)) for name, labels in selectors)
