"""`replay --format html`: the report's tables, and one chart per rule drawn by matplotlib.

matplotlib is the optional extra `rctlpolicy[plot]`; its SVG backend draws each chart (usage
over time, the rule's amount as a line, crossings and actions marked), embedded in the page.
Without it the page says how to get the charts and still gives the tables.
"""

from __future__ import annotations

import html
import io
from datetime import UTC, datetime
from typing import Any

from rctlpolicy.history.timeline import Timeline, format_time

PLOT_HINT = (
    "Charts need matplotlib: pip install 'rctlpolicy[plot]' (or pkg install py311-matplotlib) "
    "and run the replay again."
)

_STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #bbb; padding: 0.3em 0.6em; text-align: left; }
td.n { text-align: right; }
pre { background: #f4f4f4; padding: 1em; white-space: pre-wrap; }
.chart { margin: 1.5em 0; }
"""


def _matplotlib() -> Any:
    try:
        import matplotlib

        matplotlib.use("svg")
        from matplotlib import pyplot
    except ImportError:
        return None
    return pyplot


def chart_svg(pyplot: Any, entry: Any, timeline: Timeline) -> str:
    """One rule's chart as an SVG document (text)."""
    rule = entry.policy_rule.rule
    points = timeline.points(entry.jail, rule.resource)
    figure, axes = pyplot.subplots(figsize=(9, 3))
    try:
        if points:
            times = [datetime.fromtimestamp(t, UTC) for t, _ in points]
            axes.step(times, [v for _, v in points], where="post", label=f"{rule.resource}")
        axes.axhline(rule.amount, color="red", linestyle="--", label=f"{rule.action}={rule.amount}")
        for kind, colour, marker in (
            ("crossing", "orange", "^"),
            ("run", "green", "o"),
            ("suppressed", "grey", "x"),
        ):
            marked = [datetime.fromtimestamp(t, UTC) for t, k in entry.marks if k == kind]
            if marked:
                axes.scatter(
                    marked, [rule.amount] * len(marked), color=colour, marker=marker, label=kind,
                    zorder=3,
                )  # fmt: skip
        axes.set_title(f"{entry.policy_rule.canonical} (jail {entry.jail})", fontsize=9)
        axes.legend(loc="upper left", fontsize=7)
        figure.autofmt_xdate()
        figure.tight_layout()
        out = io.StringIO()
        figure.savefig(out, format="svg")
    finally:
        pyplot.close(figure)
    text = out.getvalue()
    return text[text.index("<svg") :]


def report_html(report: Any, timeline: Timeline, summary: str) -> str:
    """The whole page."""
    document = report.as_json()
    rows = []
    for item in document["rules"]:
        rows.append(
            "<tr>"
            + "".join(
                f'<td class="n">{html.escape(str(item[key]))}</td>'
                if isinstance(item[key], int | float)
                else f"<td>{html.escape(str(item[key] if item[key] is not None else '-'))}</td>"
                for key in (
                    "rule",
                    "jail",
                    "deny_seconds",
                    "crossings",
                    "actions_run",
                    "actions_suppressed",
                    "first",
                    "last",
                )
            )
            + "</tr>"
        )
    head = "".join(
        f"<th>{name}</th>"
        for name in ("rule", "jail", "over (s)", "crossings", "actions run", "suppressed",
                     "first", "last")
    )  # fmt: skip
    pyplot = _matplotlib()
    charts: list[str] = []
    if pyplot is None:
        charts.append(f'<p class="hint">{html.escape(PLOT_HINT)}</p>')
    else:
        for entry in report.rules:
            charts.append(f'<div class="chart">{chart_svg(pyplot, entry, timeline)}</div>')
    return (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
        f"<title>rctlpolicy replay {format_time(report.start)} to {format_time(report.end)}"
        f"</title><style>{_STYLE}</style></head><body>\n"
        f"<h1>rctlpolicy replay</h1>\n<table><tr>{head}</tr>\n" + "\n".join(rows) + "</table>\n"
        f"<pre>{html.escape(summary)}</pre>\n<h2>Charts</h2>\n" + "\n".join(charts)
        + "\n</body></html>\n"
    )  # fmt: skip
