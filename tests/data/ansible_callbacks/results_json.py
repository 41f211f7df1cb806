"""A stdout callback for tests/test_ansible.py: every task result and the stats as one JSON
document (ansible-core's own `json` callback moved to the ansible.posix collection)."""

from __future__ import annotations

import json
from typing import Any

from ansible.plugins.callback import CallbackBase


def _parts(result: Any) -> tuple[Any, Any, dict[str, Any]]:
    # ansible-core 2.19 names them task, host and result; earlier releases _task, _host, _result.
    if hasattr(type(result), "result"):
        return result.task, result.host, dict(result.result)
    return result._task, result._host, dict(result._result)


class CallbackModule(CallbackBase):  # type: ignore[misc]
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "stdout"
    CALLBACK_NAME = "results_json"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tasks: list[dict[str, Any]] = []

    def _record(self, result: Any, status: str) -> None:
        task, host, data = _parts(result)
        self.tasks.append(
            {"name": task.name, "host": host.get_name(), "status": status, "result": data}
        )

    def v2_runner_on_ok(self, result: Any) -> None:
        self._record(result, "ok")

    def v2_runner_on_failed(self, result: Any, ignore_errors: bool = False) -> None:
        self._record(result, "failed")

    def v2_runner_on_skipped(self, result: Any) -> None:
        self._record(result, "skipped")

    def v2_runner_on_unreachable(self, result: Any) -> None:
        self._record(result, "unreachable")

    def v2_playbook_on_stats(self, stats: Any) -> None:
        summary = {host: stats.summarize(host) for host in sorted(stats.processed)}
        self._display.display(json.dumps({"tasks": self.tasks, "stats": summary}, default=str))
