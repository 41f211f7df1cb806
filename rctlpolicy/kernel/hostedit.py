"""Changing what a subject of the simulated host uses: `rctlpolicy sim set jail:db1 swapuse=1g`.

Only the values named change: the rest of the host file stays as it was, byte for byte (its
comments, order, quoting and layout). A value already in the file is replaced where it stands;
a resource or subject the file does not mention yet is added in the style of its neighbours.
The edited text must read back as the same host with only those values changed, or nothing is
written. The file is replaced atomically (`rctlpolicy.safeio`), keeping its permissions, under
an exclusive lock (`<host file>.lock`) so that two edits never lose one another.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from rctlpolicy import safeio, yamlload
from rctlpolicy.amounts import INT64_MAX, AmountError, expand_number
from rctlpolicy.kernel.hostfile import (
    DEFAULT_LOGINCLASS,
    HostFileError,
    HostSpec,
    container_key,
    parse_host,
    suggest,
)
from rctlpolicy.model import HOST_JAIL, IN_MILLIONS_MAX, Resource, SubjectType


class HostEditError(ValueError):
    """The edit cannot be made: the message says why and what to do instead."""


@dataclass(frozen=True, slots=True)
class UsageChange:
    """One resource's usage set to an amount (in `rctl -u` units)."""

    resource: Resource
    amount: int


@dataclass(frozen=True, slots=True)
class UsageEdit:
    """What an edit did: the container, and each resource's (before, after)."""

    container: str
    changed: tuple[tuple[Resource, int, int], ...]


def parse_usage_change(text: str) -> UsageChange:
    """`RESOURCE=AMOUNT`, the amount with rctl(8)'s suffixes (k, m, g, t, p, e)."""
    name, equals, amount_text = text.partition("=")
    if not equals or not name:
        raise HostEditError(f"'{text}' is not RESOURCE=AMOUNT (e.g. swapuse=1g)")
    try:
        resource = Resource(name.lower())
    except ValueError:
        raise HostEditError(f"unknown resource '{name}'{suggest(name, list(Resource))}") from None
    try:
        amount = expand_number(amount_text).value
    except AmountError as error:
        raise HostEditError(
            f"'{amount_text}' is not an amount for {resource} ({error.problem}); "
            "use a number with an optional k, m, g, t, p or e suffix"
        ) from None
    high = IN_MILLIONS_MAX if resource.in_millions else INT64_MAX
    if amount > high:
        raise HostEditError(f"{amount} is more than {resource} can hold ({high})")
    return UsageChange(resource, amount)


def container_of(host: HostSpec, subject_text: str) -> str:
    """The container key of `jail:db1`, `user:www`, `user:80`, `loginclass:daemon` or
    `process:4242`, which must be one the host has."""
    subject_name, colon, subject_id = subject_text.partition(":")
    if not colon or not subject_id:
        raise HostEditError(f"'{subject_text}' is not SUBJECT:ID (e.g. jail:db1 or user:www)")
    try:
        subject = SubjectType(subject_name)
    except ValueError:
        raise HostEditError(
            f"unknown subject '{subject_name}'{suggest(subject_name, list(SubjectType))}"
        ) from None
    if subject is SubjectType.JAIL:
        names = [jail.name for jail in host.jails]
        if subject_id != HOST_JAIL and subject_id not in names:
            known = ", ".join(names) or "none"
            raise HostEditError(
                f"no jail '{subject_id}' on the simulated host{suggest(subject_id, names)} "
                f"(its jails: {known}; 0 is the host itself)"
            )
    elif subject is SubjectType.USER:
        if not subject_id.isdigit():
            uid = host.uid_of(subject_id)
            if uid is None:
                raise HostEditError(
                    f"no user '{subject_id}' on the simulated host{suggest(subject_id, host.users)}"
                )
            subject_id = str(uid)
    elif subject is SubjectType.PROCESS:
        if not subject_id.isdigit() or int(subject_id) not in host.processes:
            raise HostEditError(f"no process {subject_id} on the simulated host")
        subject_id = str(int(subject_id))
    elif subject_id != DEFAULT_LOGINCLASS and subject_id not in host.loginclasses:
        raise HostEditError(
            f"no login class '{subject_id}' on the simulated host"
            f"{suggest(subject_id, host.loginclasses)}"
        )
    return container_key(subject, subject_id)


def set_usage(path: Path, subject_text: str, changes: Sequence[UsageChange]) -> UsageEdit:
    """Set usage values of one subject in the host file at `path`; returns what changed.

    Raises HostEditError (the request) or HostFileError (the file as it is, or its writing).
    """
    with safeio.locked(path.with_name(path.name + ".lock")):
        try:
            data = path.read_bytes()
        except OSError as error:
            raise HostFileError(path, f"cannot read the host file: {error.strerror}") from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise HostFileError(path, "not UTF-8 text") from None
        host = parse_host(text, path)
        container = container_of(host, subject_text)
        before = _own_usage(text, host).get(container, {})
        wanted = {change.resource: change.amount for change in changes}
        edited = _edited(text, host, container, wanted)
        _check(text, edited, host, container, wanted, path)
        mode = os.stat(path).st_mode & 0o7777
        try:
            safeio.write_atomic(path, edited, mode=mode)
        except OSError as error:
            raise HostFileError(path, f"cannot write the host file: {error}") from None
    return UsageEdit(
        container,
        tuple((resource, before.get(resource, 0), amount) for resource, amount in wanted.items()),
    )


# --- the text edit --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Insert:
    """Replace text[start:end] by `text` (an insertion when start == end)."""

    start: int
    end: int
    text: str


def _edited(text: str, host: HostSpec, container: str, wanted: Mapping[Resource, int]) -> str:
    try:
        root = yamlload.compose(text)
    except yamlload.YamlError as error:  # parse_host read it: cannot happen, but say so
        raise HostEditError(f"cannot read the host file's layout: {error}") from None
    entry_text = _flow_entry(container, wanted)
    if root is None:
        return f"{text.rstrip()}\nusage:\n  {entry_text}\n".lstrip("\n")
    if not isinstance(root, yaml.MappingNode):
        raise HostEditError("the host file is not a mapping")
    usage = _value_of(root, "usage")
    if usage is None:
        if root.flow_style:
            raise HostEditError("the host file is a single {...} mapping: add usage: by hand")
        tail = text if text.endswith("\n") or not text else text + "\n"
        return f"{tail}usage:\n  {entry_text}\n"
    if not isinstance(usage, yaml.MappingNode):  # parse_host read it: cannot happen
        raise HostEditError("usage: in the host file is not a mapping")
    entry = _entry_for(usage, container, host)
    edits: list[_Insert]
    if entry is None:
        edits = [_new_item(text, usage, entry_text)]
    elif isinstance(entry, yaml.MappingNode):
        edits = _set_values(text, entry, wanted)
    else:
        raise HostEditError(f"usage: {container} in the host file is not a mapping")
    for edit in sorted(edits, key=lambda e: e.start, reverse=True):
        text = text[: edit.start] + edit.text + text[edit.end :]
    return text


def _flow_entry(container: str, wanted: Mapping[Resource, int]) -> str:
    values = ", ".join(f"{resource}: {amount}" for resource, amount in wanted.items())
    return f"{json.dumps(container)}: {{{values}}}"


def _pairs(mapping: yaml.MappingNode) -> list[tuple[yaml.Node, yaml.Node]]:
    pairs: list[tuple[yaml.Node, yaml.Node]] = mapping.value
    return pairs


def _value_of(mapping: yaml.MappingNode, key: str) -> yaml.Node | None:
    for key_node, value_node in _pairs(mapping):
        if isinstance(key_node, yaml.ScalarNode) and key_node.value == key:
            return value_node
    return None


def _entry_for(usage: yaml.MappingNode, container: str, host: HostSpec) -> yaml.Node | None:
    """The value of the usage key naming `container` (`user:www` and `user:80` are one)."""
    for key_node, value_node in _pairs(usage):
        if not isinstance(key_node, yaml.ScalarNode):
            continue
        try:
            if container_of(host, key_node.value) == container:
                return value_node
        except HostEditError:
            # A container the host no longer has (a stopped jail's leftover usage).
            if key_node.value == container:
                return value_node
    return None


def _set_values(
    text: str, entry: yaml.MappingNode, wanted: Mapping[Resource, int]
) -> list[_Insert]:
    edits: list[_Insert] = []
    missing = dict(wanted)
    for key_node, value_node in entry.value:
        if not isinstance(key_node, yaml.ScalarNode):
            continue
        try:
            resource = Resource(str(key_node.value).lower())
        except ValueError:
            continue
        if resource in missing:
            amount = missing.pop(resource)
            start, end = int(value_node.start_mark.index), int(value_node.end_mark.index)
            edits.append(_Insert(start, end, str(amount)))
    if missing:
        items = [f"{resource}: {amount}" for resource, amount in missing.items()]
        if entry.flow_style:
            edits.append(_flow_items(text, entry, items))
        else:
            edits.append(_block_items(text, entry, items))
    return edits


def _new_item(text: str, mapping: yaml.MappingNode, item: str) -> _Insert:
    if mapping.flow_style:
        return _flow_items(text, mapping, [item])
    return _block_items(text, mapping, [item])


def _flow_items(text: str, mapping: yaml.MappingNode, items: list[str]) -> _Insert:
    """Before the closing brace of a `{...}` mapping."""
    close = int(mapping.end_mark.index) - 1
    if text[close] != "}":
        raise HostEditError("cannot find the end of a {...} mapping in the host file")
    separator = ", " if mapping.value else ""
    return _Insert(close, close, separator + ", ".join(items))


def _block_items(text: str, mapping: yaml.MappingNode, items: list[str]) -> _Insert:
    """New lines after the mapping's last entry, indented like its first key."""
    indent = " " * int(mapping.value[0][0].start_mark.column)
    last_value = mapping.value[-1][1]
    return _after_line(
        text, int(last_value.end_mark.index), "\n".join(f"{indent}{item}" for item in items)
    )


def _after_line(text: str, index: int, lines: str) -> _Insert:
    """`lines` on their own, after the line that holds `index` (its comment stays there)."""
    end = text.find("\n", max(index - 1, 0))
    if end < 0:
        return _Insert(len(text), len(text), f"\n{lines}\n")
    return _Insert(end + 1, end + 1, f"{lines}\n")


# --- checking the result ----------------------------------------------------------------------


def _own_usage(text: str, host: HostSpec) -> dict[str, dict[Resource, int]]:
    """The usage table as the file writes it (before child jails are added to parents)."""
    data: Any = yamlload.load(text) or {}
    table: dict[str, dict[Resource, int]] = {}
    for key, values in (data.get("usage") or {}).items():
        try:
            container = container_of(host, str(key))
        except HostEditError:
            container = str(key)
        table[container] = {Resource(str(name).lower()): amount for name, amount in values.items()}
    return table


def _check(
    old: str,
    new: str,
    host: HostSpec,
    container: str,
    wanted: Mapping[Resource, int],
    path: Path,
) -> None:
    """The edited text must be the same host with exactly the wanted values changed."""
    try:
        edited_host = parse_host(new, path)
        old_data: Any = yamlload.load(old) or {}
        new_data: Any = yamlload.load(new) or {}
    except (HostFileError, yamlload.YamlError) as error:
        raise HostEditError(
            f"the edit would break the host file ({error}); edit it by hand"
        ) from None
    expected = _own_usage(old, host)
    expected[container] = {**expected.get(container, {}), **wanted}
    others_same = {k: v for k, v in old_data.items() if k != "usage"} == {
        k: v for k, v in new_data.items() if k != "usage"
    }
    if not others_same or _own_usage(new, edited_host) != expected:
        raise HostEditError(
            "cannot change this host file safely (anchors, aliases or an unusual layout); "
            "edit it by hand"
        )
