"""Editing the simulated host file's usage in place: only the values named change."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rctlpolicy.kernel.hostedit import (
    HostEditError,
    UsageChange,
    parse_usage_change,
    set_usage,
)
from rctlpolicy.kernel.hostfile import parse_host
from rctlpolicy.model import Resource, SubjectType

HEAD = "users: {root: 0, www: 80}  # who\njails:\n  db1: {jid: 3}\n"


@pytest.mark.parametrize(
    ("before", "subject", "change", "after"),
    [
        # a value in a block mapping, its comment kept
        (
            HEAD + 'usage:\n  "jail:db1":\n    swapuse: 5  # leaks\n    maxproc: 2\n',
            "jail:db1",
            "swapuse=1k",
            HEAD + 'usage:\n  "jail:db1":\n    swapuse: 1024  # leaks\n    maxproc: 2\n',
        ),
        # a new resource in a block mapping goes after its last entry, indented alike
        (
            HEAD + 'usage:\n  "jail:db1":\n    maxproc: 2   # two\n# the end\n',
            "jail:db1",
            "nthr=7",
            HEAD + 'usage:\n  "jail:db1":\n    maxproc: 2   # two\n    nthr: 7\n# the end\n',
        ),
        # flow mappings stay flow mappings
        (
            HEAD + 'usage: {"jail:db1": {maxproc: 2}}\n',
            "jail:db1",
            "nthr=7",
            HEAD + 'usage: {"jail:db1": {maxproc: 2, nthr: 7}}\n',
        ),
        (
            HEAD + 'usage: {"user:www": {}}\n',
            "jail:db1",
            "maxproc=1",
            HEAD + 'usage: {"user:www": {}, "jail:db1": {maxproc: 1}}\n',
        ),
        # a user named by name or uid is one container
        (
            HEAD + "usage:\n  user:www: {maxproc: 3}\n",
            "user:80",
            "maxproc=4",
            HEAD + "usage:\n  user:www: {maxproc: 4}\n",
        ),
        # no usage yet, a file without a final newline, an empty file
        (HEAD, "jail:0", "pcpu=50", HEAD + 'usage:\n  "jail:0": {pcpu: 50}\n'),
        (
            HEAD + 'usage:\n  "jail:db1": {maxproc: 2}',
            "process:1",
            "maxproc=1",
            HEAD + 'usage:\n  "jail:db1": {maxproc: 2}\n  "process:1": {maxproc: 1}\n',
        ),
        ("", "loginclass:default", "maxproc=3", 'usage:\n  "loginclass:default": {maxproc: 3}\n'),
    ],
)
def test_edits_change_only_what_they_name(
    tmp_path: Path, before: str, subject: str, change: str, after: str
) -> None:
    path = tmp_path / "host.yaml"
    path.write_text(before)
    set_usage(path, subject, [parse_usage_change(change)])
    assert path.read_text() == after


def test_an_edit_reports_before_and_after(tmp_path: Path) -> None:
    path = tmp_path / "host.yaml"
    path.write_text(HEAD + "usage:\n  jail:db1: {maxproc: 2}\n")
    edit = set_usage(path, "jail:db1", [UsageChange(Resource.MAXPROC, 5)])
    assert (edit.container, edit.changed) == ("jail:db1", ((Resource.MAXPROC, 2, 5),))
    assert parse_host(path.read_text()).usage_of(SubjectType.JAIL, "db1") == {Resource.MAXPROC: 5}


def test_an_edit_the_file_would_not_read_back_as_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "host.yaml"
    # two subjects share one mapping through an anchor: changing one would change both
    text = HEAD + 'usage:\n  "jail:db1": &same {maxproc: 2}\n  "jail:0": *same\n'
    path.write_text(text)
    with pytest.raises(HostEditError, match="edit it by hand"):
        set_usage(path, "jail:db1", [UsageChange(Resource.MAXPROC, 5)])
    assert path.read_text() == text


@pytest.mark.parametrize(
    ("text", "resource", "amount"),
    [
        ("swapuse=1g", Resource.SWAPUSE, 2**30),
        ("MEMORYUSE=512m", Resource.MEMORYUSE, 512 * 2**20),
        ("maxproc=0", Resource.MAXPROC, 0),
        ("cputime=9223372036854", Resource.CPUTIME, 9223372036854),
    ],
)
def test_usage_changes_read_like_rctl_amounts(text: str, resource: Resource, amount: int) -> None:
    assert parse_usage_change(text) == UsageChange(resource, amount)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cputime=9223372036855", "more than cputime can hold"),
        ("swapuse=-1", "'-1' is not an amount for swapuse (negative)"),
        ("=5", "is not RESOURCE=AMOUNT"),
    ],
)
def test_bad_usage_changes(text: str, message: str) -> None:
    with pytest.raises(HostEditError, match=re.escape(message)):
        parse_usage_change(text)
