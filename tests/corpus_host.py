"""The host the conformance corpus assumes (spec: Host assumptions)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CorpusHost:
    checks_names: bool = True

    def uid_of(self, name: str) -> int | None:
        return {"www": 80, "root": 0}.get(name)

    def gid_of(self, name: str) -> int | None:
        return {"wheel": 0}.get(name)

    def process_exists(self, pid: int) -> bool | None:
        return pid == 1

    def name_of_uid(self, uid: int) -> str | None:
        return {80: "www", 0: "root"}.get(uid)


CORPUS_HOST = CorpusHost()
