"""The simulated host file: parsing, errors, usage of nested jails, reading only when changed."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from rctlpolicy.kernel.hostfile import (
    HostFile,
    HostFileError,
    HostProcess,
    container_key,
    default_host_path,
    load_host,
    parse_host,
)
from rctlpolicy.model import Action, Resource, Rule, SubjectType
from rctlpolicy.semantics.resolver import Resolver

HOST = """
users: {root: 0, www: 80, pgsql: 770}
groups: {wheel: 0}
loginclasses: [default, daemon]
processes:
  1: {comm: init, uid: 0}
  4242: {comm: postgres, uid: pgsql, jail: db1}
  4300: {comm: su, uid: 80, euid: 0, jail: inner, loginclass: daemon}
jails:
  db1: {jid: 3}
  inner: {jid: 7, parent: db1}
devctl_rate_limit: 5
usage:
  "jail:db1": {memoryuse: 1073741824, maxproc: 12}
  "user:www": {maxproc: 40}
  "user:770": {maxproc: 3}
  "process:4242": {cputime: 12}
"""


def rule(text: str) -> Rule:
    subject, subject_id, resource, rest = text.split(":")
    action, amount = rest.split("=")
    return Rule(
        SubjectType(subject),
        subject_id,
        Resource(resource),
        Action(action),
        int(amount),
        SubjectType(subject),
    )


# --- parsing -----------------------------------------------------------------------------------


def test_parse_a_full_host() -> None:
    host = parse_host(HOST, "h.yaml")
    assert host.users == {"root": 0, "www": 80, "pgsql": 770}
    assert host.groups == {"wheel": 0}
    assert host.loginclasses == ("default", "daemon")
    assert host.processes[4242] == HostProcess(4242, "postgres", 770, 770, "db1", "default")
    assert host.processes[4300] == HostProcess(4300, "su", 80, 0, "inner", "daemon")
    assert [(j.name, j.jid, j.parent) for j in host.jails] == [("db1", 3, "0"), ("inner", 7, "db1")]
    assert host.devctl_rate_limit == 5
    assert host.log_rate_limit == 10
    assert host.maxbufsize == 16777216
    assert host.racct_enable and host.privileged
    # user usage given by name or uid lands on the uid's container
    assert host.usage_of(SubjectType.USER, "80") == {Resource.MAXPROC: 40}
    assert host.usage_of(SubjectType.USER, "770") == {Resource.MAXPROC: 3}
    assert host.usage_of(SubjectType.JAIL, "db1")[Resource.MEMORYUSE] == 1073741824
    assert host.usage_of(SubjectType.JAIL, "web9") == {}


def test_the_host_is_a_resolver() -> None:
    host: Resolver = parse_host(HOST)
    assert host.checks_names
    assert host.uid_of("www") == 80
    assert host.uid_of("nobody") is None
    assert host.gid_of("wheel") == 0
    assert host.process_exists(1) is True
    assert host.process_exists(99999) is False


def test_without_a_process_table_only_init_exists() -> None:
    host = parse_host("users: {root: 0}\n")
    assert list(host.processes) == [1]
    assert host.processes[1].comm == "init"
    assert host.process_exists(2) is False


def test_an_empty_file_is_an_empty_host() -> None:
    host = parse_host("")
    assert host.users == {}
    assert host.racct_enable


def test_name_of_uid() -> None:
    host = parse_host(HOST)
    assert host.name_of_uid(80) == "www"
    assert host.name_of_uid(81) is None


def test_jail_chain_and_rule_links() -> None:
    host = parse_host(HOST)
    assert host.jail_chain("inner") == ("inner", "db1", "0")
    assert host.jail_chain("0") == ("0",)
    su = host.processes[4300]
    # a jail rule reaches processes of child jails, jail:0 every process
    assert host.applies_to(rule("jail:db1:maxproc:deny=1"), su)
    assert host.applies_to(rule("jail:0:maxproc:deny=1"), su)
    assert not host.applies_to(rule("jail:db1:maxproc:deny=1"), host.processes[1])
    # a user rule reaches the real and the effective uid
    assert host.applies_to(rule("user:80:maxproc:deny=1"), su)
    assert host.applies_to(rule("user:0:maxproc:deny=1"), su)
    assert host.applies_to(rule("loginclass:daemon:maxproc:deny=1"), su)
    assert not host.applies_to(rule("loginclass:default:maxproc:deny=1"), su)
    assert host.applies_to(rule("process:4300:maxproc:deny=1"), su)
    assert not host.applies_to(rule("process:1:maxproc:deny=1"), su)
    assert [p.pid for p in host.linked_processes(rule("jail:db1:maxproc:deny=1"))] == [4242, 4300]


def test_per_container() -> None:
    host = parse_host(HOST)
    su = host.processes[4300]
    assert host.per_container(SubjectType.PROCESS, su) == (SubjectType.PROCESS, "4300")
    assert host.per_container(SubjectType.USER, su) == (SubjectType.USER, "80")  # real uid
    assert host.per_container(SubjectType.LOGINCLASS, su) == (SubjectType.LOGINCLASS, "daemon")
    assert host.per_container(SubjectType.JAIL, su) == (SubjectType.JAIL, "inner")  # own jail


def test_container_key_prints_uids_like_the_kernel() -> None:
    assert container_key(SubjectType.USER, "4294967295") == "user:-1"
    assert container_key(SubjectType.JAIL, "db1") == "jail:db1"


def test_comm_is_cut_to_maxcomlen() -> None:
    host = parse_host("processes: {7: {comm: a-very-long-command-name-indeed, uid: 0}}")
    assert host.processes[7].comm == "a-very-long-command"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[1, 2]", "the host file: expected a mapping, found a list"),
        ("usres: {root: 0}", "unknown key 'usres' (did you mean 'users'?)"),
        ("users: [root]", "users: expected a mapping, found a list"),
        ("users: {root: zero}", "users: root: expected a whole number, found 'zero'"),
        ("users: {root: -1}", "users: root: -1 is out of range"),
        ("racct_enable: yes please", "racct_enable: expected true or false"),
        ("devctl_rate_limit: 1.5", "devctl_rate_limit: expected a whole number, found 1.5"),
        ("maxbufsize: true", "maxbufsize: expected a whole number, found the boolean true"),
        (
            "usage: {'jail:db1': {memoryuze: 1}}",
            "usage: jail:db1: unknown resource 'memoryuze' (did you mean 'memoryuse'?)",
        ),
        ("usage: {'jial:db1': {maxproc: 1}}", "unknown subject 'jial' (did you mean 'jail'?)"),
        ("usage: {'db1': {maxproc: 1}}", "keys are subject:id"),
        ("usage: {'jail:': {maxproc: 1}}", "missing the id after ':'"),
        ("usage: {'user:nobody': {maxproc: 1}}", "usage: user:nobody: unknown user 'nobody'"),
        ("usage: {'process:77': {maxproc: 1}}", "no process 77 in processes"),
        ("usage: {'jail:db1': {maxproc: -3}}", "usage: jail:db1: maxproc: -3 is out of range"),
        ("usage: {'jail:db1': {cputime: 9223372036855}}", "cputime: 9223372036855 is out of range"),
        (
            "users: {www: 80}\nusage: {'user:www': {maxproc: 1}, 'user:80': {maxproc: 2}}",
            "the same container as another key (user:80)",
        ),
        ("jails: {db1: 3}", "jails: db1: expected a mapping, found 3"),
        ("jails: {db1: {}}", "jails: db1: missing 'jid'"),
        ("jails: {db1: {jid: 3, path: /j}}", "jails: db1: unknown key 'path'"),
        ("jails: {a: {jid: 3}, b: {jid: 3}}", "jails: b: jid 3 is already jail 'a'"),
        ("jails: {a: {jid: 1000000}}", "jails: a: jid: 1000000 is out of range (1 to 999999)"),
        ("jails: {'0': {jid: 3}}", "'0' is the host itself"),
        ("jails: {a: {jid: 3, parent: b}}", "jails: a: parent: no jail named 'b'"),
        ("jails: {a: {jid: 3, parent: b}, b: {jid: 4, parent: a}}", "jails form a cycle"),
        ("jails: {'a:b': {jid: 3}}", "contains ':' or ','"),
        ("processes: {1: {uid: 0}}", "processes: 1: missing 'comm'"),
        ("processes: {1: {comm: init}}", "processes: 1: missing 'uid'"),
        ("processes: {1: {comm: init, uid: 0, gid: 0}}", "processes: 1: unknown key 'gid'"),
        ("processes: {100000: {comm: x, uid: 0}}", "processes: 100000 is out of range"),
        ("processes: {1: {comm: init, uid: nobody}}", "processes: 1: uid: unknown user 'nobody'"),
        ("processes: {1: {comm: init, uid: 0, jail: db2}}", "processes: 1: jail: no jail named"),
        (
            "loginclasses: [default]\nprocesses: {1: {comm: x, uid: 0, loginclass: staf}}",
            "processes: 1: loginclass: 'staf' is not in loginclasses",
        ),
        ("loginclasses: [" + "x" * 33 + "]", "is longer than 32 bytes"),
        ("users: {root: 0", "not valid YAML: line 2, column 1: did not find expected ','"),
        (
            "users: {www: 80}\nusers: {www: 81}\n",
            "line 2, column 1: key 'users' is given twice (first on line 1)",
        ),
        ("usage: {'jail:db1': {maxproc: 1, maxproc: 2}}", "'maxproc' is given twice"),
        (
            "users: " + "[" * 5000 + "]" * 5000,
            "not valid YAML: line 1, column 1007: exceeded maximum nesting",
        ),
    ],
)
def test_bad_host_files_say_what_is_wrong(text: str, expected: str) -> None:
    with pytest.raises(HostFileError) as caught:
        parse_host(text, "/etc/sim/host.yaml")
    assert expected in str(caught.value)
    assert str(caught.value).startswith("/etc/sim/host.yaml: ")
    assert caught.value.path == "/etc/sim/host.yaml"


def test_yaml_merge_keys_may_override() -> None:
    host = parse_host("jails:\n  db1: &j {jid: 3}\n  db2: {<<: *j, jid: 4}\n")
    assert [(jail.name, jail.jid) for jail in host.jails] == [("db1", 3), ("db2", 4)]


def test_host_file_error_is_an_os_error() -> None:
    # the daemon's loops already survive OSErrors from files; a bad host file is one
    assert issubclass(HostFileError, OSError)


def test_the_default_host_is_valid_and_demonstrates_a_near_limit() -> None:
    path = default_host_path()
    assert path.is_file()
    host = load_host(path)
    assert {"root", "www", "pgsql"} <= set(host.users)
    assert {jail.name for jail in host.jails} >= {"db1", "web1", "web2"}
    used = host.usage_of(SubjectType.JAIL, "db1")[Resource.MEMORYUSE]
    assert 0.8 * 4 * 2**30 < used < 4 * 2**30


# --- load_host ---------------------------------------------------------------------------------


def test_a_host_file_sees_every_edit(tmp_path: Path) -> None:
    path = tmp_path / "host.yaml"
    path.write_text("users: {www: 80}\n")
    host_file = HostFile(path)
    assert host_file.load().uid_of("www") == 80
    assert host_file.load() is host_file.load()  # unchanged: parsed once
    path.write_text("users: {www: 81}\n")  # same size, same second: still seen
    assert host_file.load().uid_of("www") == 81


def test_load_host_missing_file(tmp_path: Path) -> None:
    with pytest.raises(HostFileError, match="cannot read the host file: No such file"):
        load_host(tmp_path / "nope.yaml")


def test_load_host_broken_after_an_edit_then_fixed(tmp_path: Path) -> None:
    path = tmp_path / "host.yaml"
    path.write_text("users: {www: 80}\n")
    load_host(path)
    path.write_text("users: {www: eighty}\n")
    with pytest.raises(HostFileError, match="users: www"):
        load_host(path)
    path.write_text("users: {www: 82}\n")
    assert load_host(path).uid_of("www") == 82


def test_a_settled_host_file_is_read_only_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "host.yaml"
    path.write_text("users: {www: 80}\n")
    os.utime(path, (1_000_000_000, 1_000_000_000))  # last changed long ago (2001)
    host_file = HostFile(path)
    first = host_file.load()
    for _ in range(500):  # a scrape's worth of system calls
        assert host_file.load() is first
    assert host_file.reads == 1
    path.write_text("users: {www: 81, db: 82}\n")
    os.utime(path, (1_000_000_100, 1_000_000_100))
    assert host_file.load().uid_of("db") == 82
    assert host_file.reads == 2


def test_a_host_file_changed_a_moment_ago_is_read_until_it_settles(tmp_path: Path) -> None:
    path = tmp_path / "host.yaml"
    path.write_text("users: {www: 80}\n")  # now: a same-size edit could keep its stat
    host_file = HostFile(path)
    first = host_file.load()
    assert host_file.load() is first  # read again, compared, not parsed again
    assert host_file.reads == 2


# --- nested jails --------------------------------------------------------------------------------

NESTED = """
users: {root: 0}
jails:
  outer: {jid: 3}
  outer.inner: {jid: 4}
  outer.inner.deep: {jid: 5}
  other: {jid: 6}
  odd.name: {jid: 7}
  sideways: {jid: 8, parent: other}
processes:
  1: {comm: init, uid: 0}
  40: {comm: sh, uid: 0, jail: outer.inner, attached: true}
usage:
  "jail:0": {maxproc: 100}
  "jail:outer": {maxproc: 1, memoryuse: 1000}
  "jail:outer.inner": {maxproc: 2}
  "jail:outer.inner.deep": {maxproc: 4, cputime: 9223372036854}
  "jail:sideways": {maxproc: 8}
  "jail:gone": {maxproc: 16}
"""


def test_child_jails_are_named_under_their_parent() -> None:
    host = parse_host(NESTED)
    parents = {jail.name: jail.parent for jail in host.jails}
    assert parents == {
        "outer": "0",
        "outer.inner": "outer",
        "outer.inner.deep": "outer.inner",
        "other": "0",
        "odd.name": "0",  # no jail "odd": a top-level jail with a dot in its name
        "sideways": "other",  # `parent:` says so explicitly
    }
    assert host.jail_chain("outer.inner.deep") == ("outer.inner.deep", "outer.inner", "outer", "0")
    assert host.processes[40].attached and not host.processes[1].attached


def test_a_jails_usage_includes_its_child_jails() -> None:
    host = parse_host(NESTED)

    def used(name: str, resource: Resource = Resource.MAXPROC) -> int:
        return host.usage_of(SubjectType.JAIL, name).get(resource, 0)

    assert used("outer.inner.deep") == 4
    assert used("outer.inner") == 2 + 4
    assert used("outer") == 1 + 2 + 4
    assert used("other") == 8
    assert used("0") == 100 + 1 + 2 + 4 + 8  # prison0: everything but the stopped jail's
    assert used("gone") == 16
    assert used("outer", Resource.MEMORYUSE) == 1000
    assert used("0", Resource.CPUTIME) == 9223372036854  # capped where the kernel's sum stops


def test_host_yaml_written_by_tests_round_trips(tmp_path: Path) -> None:
    # tests build host files with yaml.safe_dump: numeric pid keys and quoted names both work
    data = {
        "users": {"www": 80},
        "processes": {"1": {"comm": "init", "uid": 0}},
        "jails": {"3": {"jid": 3}},
        "usage": {"jail:3": {"maxproc": 1}},
    }
    path = tmp_path / "h.yaml"
    path.write_text(yaml.safe_dump(data))
    host = load_host(path)
    assert host.process_exists(1) and host.jails[0].name == "3"


_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.sampled_from(["db1", "www", "0", "jail:db1", "user:www", "process:1", "memoryuse", "", ":"]),
    st.text(max_size=8),
)
_KEYS = st.one_of(
    st.sampled_from(
        [
            "users",
            "groups",
            "loginclasses",
            "processes",
            "jails",
            "usage",
            "racct_enable",
            "comm",
            "uid",
            "euid",
            "jail",
            "loginclass",
            "jid",
            "parent",
            "maxproc",
            "jail:db1",
            "user:www",
            "process:1",
            "db1",
            "www",
        ]
    ),
    st.integers(min_value=-1, max_value=100001),
    st.text(max_size=6),
)
_DOCUMENTS = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=5),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None)
@given(_DOCUMENTS)
def test_any_document_is_a_host_or_a_host_file_error(document: object) -> None:
    try:
        text = yaml.safe_dump(document)
    except yaml.YAMLError:
        return
    try:
        parse_host(text, "fuzz.yaml")
    except HostFileError as error:
        assert str(error).startswith("fuzz.yaml: ")


def test_a_pinned_host_is_read_once_however_fresh_the_file(tmp_path: Path) -> None:
    path = tmp_path / "host.yaml"
    path.write_text("jails: {a: {jid: 1}}\n")  # just written: not settled, read on every load
    host_file = HostFile(path)
    host_file.load()
    host_file.load()
    assert host_file.reads == 2
    with host_file.pinned():
        first = host_file.load()
        path.write_text("jails: {b: {jid: 2}}\n")
        with host_file.pinned():
            assert host_file.load() is first
        assert host_file.load() is first
        seen: list[object] = []
        other = threading.Thread(target=lambda: seen.append(host_file.load().jail_exists("b")))
        other.start()
        other.join()
        assert seen == [True], "another thread sees the file as it is"
    assert host_file.reads == 4
    assert host_file.load().jail_exists("b")
