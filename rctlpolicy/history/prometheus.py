"""Usage timelines from Prometheus: `query_range` over the `jail_*` usage series.

The series are the ones `rctlpolicy daemon` exports, which are jail_exporter's names with its
`name` label (rctlpolicy.metric_names), so a jail_exporter user's existing data works too. One
query per resource, in chunks of at most `MAX_POINTS` steps (Prometheus refuses more than
11,000 points per series in one answer).
"""

from __future__ import annotations

import base64
import http.client
import json
import math
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from rctlpolicy.history.timeline import Timeline, TimelineError
from rctlpolicy.metric_names import LABEL_JAIL_NAME, resource_metrics
from rctlpolicy.model import Resource

MAX_POINTS = 10_000
DEFAULT_STEP = 60.0
TIMEOUT = 30.0
#: A query_range answer larger than this is refused (10,000 points of 500 jails is ~150 MiB).
MAX_ANSWER = 512 * 2**20


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
    headers: dict[str, str],
    context: ssl.SSLContext | None,
) -> list[dict[str, object]]:
    """One `/api/v1/query_range` call: the matrix's series (metric labels and values).
    `headers` and `context` are the auth's, made once for all the calls of a timeline."""
    parameters = urllib.parse.urlencode(
        {"query": query, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
    )
    url = base_url.rstrip("/") + "/api/v1/query_range?" + parameters
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 (http/https only)
    where = f"Prometheus at {base_url}"
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT, context=context) as answer:  # noqa: S310
            body = json.loads(_read_within(answer, where))
    except urllib.error.HTTPError as error:
        detail = ""
        try:
            detail = str(json.loads(error.read(64 * 1024)).get("error", ""))[:500]
        except (ValueError, OSError, AttributeError, http.client.HTTPException):
            pass
        raise TimelineError(
            f"{where}: HTTP {error.code} {error.reason}" + (f": {detail}" if detail else "")
        ) from error
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise TimelineError(f"{where}: {reason}") from error
    except http.client.HTTPException as error:  # not HTTP, or the answer cut short
        raise TimelineError(f"{where}: not an HTTP answer ({type(error).__name__})") from error
    except ValueError as error:
        raise TimelineError(f"{where}: the answer is not JSON") from error
    if not isinstance(body, dict):
        raise TimelineError(f"{where}: the answer is not a query_range answer")
    if body.get("status") != "success":
        raise TimelineError(f"{where}: {str(body.get('error', 'query failed'))[:500]}")
    data = body.get("data")
    kind = data.get("resultType") if isinstance(data, dict) else None
    if kind != "matrix":
        raise TimelineError(f"{where}: expected a matrix, got {str(kind)[:100]}")
    assert isinstance(data, dict)
    result = data.get("result", [])
    if not isinstance(result, list) or not all(isinstance(s, dict) for s in result):
        raise TimelineError(f"{where}: the matrix is not a list of series")
    return result


def _read_within(answer: http.client.HTTPResponse, where: str) -> bytes:
    """The body, read before TIMEOUT from now and no larger than MAX_ANSWER: the socket's
    timeout is per read, so a server dripping a byte at a time would otherwise never end."""
    deadline = time.monotonic() + TIMEOUT
    chunks: list[bytes] = []
    size = 0
    while chunk := answer.read1(64 * 1024):
        size += len(chunk)
        if size > MAX_ANSWER:
            raise TimelineError(f"{where}: an answer larger than {MAX_ANSWER // 2**20} MiB")
        if time.monotonic() > deadline:
            raise TimelineError(f"{where}: no complete answer within {TIMEOUT:g}s")
        chunks.append(chunk)
    if answer.length:  # the connection closed before Content-Length's bytes came
        raise TimelineError(f"{where}: the answer was cut short")
    return b"".join(chunks)


def from_prometheus(
    base_url: str,
    start: float,
    end: float,
    *,
    step: float = DEFAULT_STEP,
    auth: PrometheusAuth | None = None,
    resources: Iterable[Resource] | None = None,
) -> Timeline:
    """Every jail's usage series between start and end, sampled every `step` seconds."""
    if not base_url.startswith(("http://", "https://")):
        raise TimelineError(f"prometheus={base_url}: the URL must start with http:// or https://")
    auth = auth or PrometheusAuth()
    headers, context = auth.headers(), auth.context()  # the secrets read, the CA loaded: once
    timeline = Timeline(start, end, source=f"prometheus {base_url} (step {step:g}s)")
    chunk = step * MAX_POINTS
    wanted = set(resources) if resources is not None else set(Resource)
    for resource in (r for r in Resource if r in wanted):  # only the series asked for
        metric = resource_metrics(resource).usage
        # Prometheus' range is inclusive at both ends; ours is [start, end).
        chunk_start = start
        while chunk_start < end:
            chunk_end = min(end, chunk_start + chunk)
            for series in query_range(
                base_url, metric, chunk_start, chunk_end, step, headers, context
            ):
                labels = series.get("metric", {})
                jail = labels.get(LABEL_JAIL_NAME) if isinstance(labels, dict) else None
                values = series.get("values", [])
                if not isinstance(jail, str) or not isinstance(values, list):
                    continue
                for point in values:
                    try:
                        when, text = point
                        value = float(text)
                        at = float(when)
                    except (TypeError, ValueError):
                        raise TimelineError(
                            f"Prometheus at {base_url}: {point!r:.100} is not a [time, value]"
                        ) from None
                    if math.isfinite(value) and value >= 0 and math.isfinite(at):
                        timeline.add(at, jail, resource, round(value))
            chunk_start = chunk_end + step
    return timeline.finish()
