"""Usage timelines from Prometheus: `query_range` over the `jail_*` usage series.

The series are the ones `rctlpolicy daemon` exports, which are jail_exporter's names with its
`name` label (rctlpolicy.metric_names), so a jail_exporter user's existing data works too. One
query per resource, in chunks of at most `MAX_POINTS` steps (Prometheus refuses more than
11,000 points per series in one answer).
"""

from __future__ import annotations

import base64
import json
import math
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from rctlpolicy.history.timeline import Timeline, TimelineError
from rctlpolicy.metric_names import LABEL_JAIL_NAME, resource_metrics
from rctlpolicy.model import Resource

MAX_POINTS = 10_000
DEFAULT_STEP = 60.0
TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class PrometheusAuth:
    """How to reach a protected Prometheus: basic auth, a bearer token, a CA to trust."""

    username: str | None = None
    password_file: Path | None = None
    bearer_token_file: Path | None = None
    ca_file: Path | None = None

    def headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self.bearer_token_file is not None:
            token = _read_secret(self.bearer_token_file)
            headers["Authorization"] = f"Bearer {token}"
        elif self.username is not None:
            password = _read_secret(self.password_file) if self.password_file else ""
            pair = f"{self.username}:{password}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        return headers

    def context(self) -> ssl.SSLContext | None:
        if self.ca_file is None:
            return None
        try:
            return ssl.create_default_context(cafile=str(self.ca_file))
        except (OSError, ssl.SSLError) as error:
            raise TimelineError(f"{self.ca_file}: cannot use as a CA file: {error}") from error


def _read_secret(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as error:
        raise TimelineError(f"{path}: {error.strerror or error}") from error


def query_range(
    base_url: str,
    query: str,
    start: float,
    end: float,
    step: float,
    auth: PrometheusAuth,
) -> list[dict[str, object]]:
    """One `/api/v1/query_range` call: the matrix's series (metric labels and values)."""
    parameters = urllib.parse.urlencode(
        {"query": query, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
    )
    url = base_url.rstrip("/") + "/api/v1/query_range?" + parameters
    request = urllib.request.Request(url, headers=auth.headers())  # noqa: S310 (http/https only)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT, context=auth.context()) as answer:  # noqa: S310
            body = json.loads(answer.read())
    except urllib.error.HTTPError as error:
        detail = ""
        try:
            detail = json.loads(error.read()).get("error", "")
        except (ValueError, OSError, AttributeError):
            pass
        raise TimelineError(
            f"Prometheus at {base_url}: HTTP {error.code} {error.reason}"
            + (f": {detail}" if detail else "")
        ) from error
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise TimelineError(f"Prometheus at {base_url}: {reason}") from error
    except ValueError as error:
        raise TimelineError(f"Prometheus at {base_url}: the answer is not JSON") from error
    if body.get("status") != "success":
        raise TimelineError(f"Prometheus at {base_url}: {body.get('error', 'query failed')}")
    data = body.get("data", {})
    if data.get("resultType") != "matrix":
        raise TimelineError(f"Prometheus at {base_url}: expected a matrix, got {data}")
    result = data.get("result", [])
    assert isinstance(result, list)
    return result


def from_prometheus(
    base_url: str,
    start: float,
    end: float,
    *,
    step: float = DEFAULT_STEP,
    auth: PrometheusAuth | None = None,
    jails: list[str] | None = None,
) -> Timeline:
    """Every jail's usage series between start and end, sampled every `step` seconds."""
    if not base_url.startswith(("http://", "https://")):
        raise TimelineError(f"prometheus={base_url}: the URL must start with http:// or https://")
    auth = auth or PrometheusAuth()
    timeline = Timeline(start, end, source=f"prometheus {base_url} (step {step:g}s)")
    selector = ""
    if jails:
        names = "|".join(_regex_escape(j) for j in jails)
        selector = f'{LABEL_JAIL_NAME}=~"{names}"'
    chunk = step * MAX_POINTS
    for resource in Resource:
        metric = resource_metrics(resource).usage
        query = f"{metric}{{{selector}}}"
        # Prometheus' range is inclusive at both ends; ours is [start, end).
        chunk_start = start
        while chunk_start < end:
            chunk_end = min(end, chunk_start + chunk)
            for series in query_range(base_url, query, chunk_start, chunk_end, step, auth):
                labels = series.get("metric", {})
                assert isinstance(labels, dict)
                jail = labels.get(LABEL_JAIL_NAME)
                values = series.get("values", [])
                if not isinstance(jail, str) or not isinstance(values, list):
                    continue
                for when, text in values:
                    value = float(text)
                    if math.isfinite(value) and value >= 0:
                        timeline.add(float(when), jail, resource, round(value))
            chunk_start = chunk_end + step
    return timeline.finish()


def _regex_escape(text: str) -> str:
    special = set(r".^$*+?()[]{}|\"")
    return "".join("\\\\" + c if c in special else c for c in text)
