#!/usr/bin/python
# Copyright (c) rctlpolicy contributors
# BSD 2-Clause License (see LICENSE in the rctlpolicy repository)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: policy
short_description: Make a FreeBSD host's RCTL rules match an rctlpolicy policy
version_added: "0.1.0"
description:
  - Ensures that the resource limits in force in the kernel of the managed host (rctl(8)
    rules) match a policy of rctlpolicy, the resource-policy service for FreeBSD jails.
  - The policy is either a rules directory already on the host (O(rules_dir)), or files on
    the controller (O(src)) that are copied into O(rules_dir), each file written whole and
    renamed into place.
  - The module runs C(rctlpolicy plan --format json) on the host. An invalid policy fails
    the task with lint's diagnostics (C(file:line:col)) and changes nothing, neither files
    nor the kernel.
  - Only rules that rctlpolicy (or its daemon) added are removed when the policy drops them,
    unless O(prune=true).
  - With O(reload=true) the running daemon is asked to reload instead, so that it stays the
    owner of its record of the rules it added; the module then waits until the kernel
    matches the policy.
author:
  - rctlpolicy contributors
requirements:
  - rctlpolicy installed on the managed host (the C(py311-rctlpolicy) package)
  - FreeBSD with C(kern.racct.enable=1), or rctlpolicy's simulated host
    (C(RCTLPOLICY_SIM_HOST) in the task's environment) to rehearse anywhere
options:
  rules_dir:
    description:
      - The policy directory on the managed host.
      - When omitted, the daemon's rules directory is used (the C(rules-dir) of O(config),
        else C(/usr/local/etc/rctlpolicy/rules)). Required with O(src).
    type: path
  src:
    description:
      - A policy file, or a directory of policy files (C(*.conf), C(*.rules), C(*.yaml),
        C(*.yml)), on the controller, copied into O(rules_dir).
      - Looked up as M(ansible.builtin.copy) looks up its O(ansible.builtin.copy#module:src)
        (the role's or playbook's C(files/) directory first).
      - When it is a directory, the policy files in O(rules_dir) that it does not have are
        removed, so the directory on the host holds exactly the policy.
      - The new policy is checked before anything is written.
    type: path
  config:
    description:
      - The daemon's configuration file, for its rules directory and state directory.
      - rctlpolicy reads C(/usr/local/etc/rctlpolicy.yaml) when it exists and this is not
        given.
    type: path
  state_dir:
    description:
      - The daemon's state directory (the rules it added are recorded there).
      - Default as the daemon's (O(config), else C(/var/db/rctlpolicy)).
    type: path
  prune:
    description:
      - Also remove rules in force that the policy does not name, whoever added them
        (C(rctlpolicy apply --prune)).
      - Cannot be used with O(reload=true).
    type: bool
    default: false
  reload:
    description:
      - Ask the running daemon to reload the policy (C(SIGHUP) to the pid in O(pidfile), or
        C(service rctlpolicy reload) when O(pidfile) is not given) instead of applying the
        rules directly, then wait until the kernel matches the policy.
      - Nothing is reloaded when nothing changed.
    type: bool
    default: false
  pidfile:
    description:
      - The daemon's pid file, used by O(reload=true).
    type: path
  reload_timeout:
    description:
      - How many seconds O(reload=true) waits for the daemon to make the kernel match.
    type: int
    default: 30
  mode:
    description:
      - The permissions of the policy files written from O(src). Files whose rules run
        commands must not be writable by group or others (the daemon refuses them).
    type: raw
    default: "0644"
  executable:
    description:
      - The rctlpolicy command on the managed host.
      - Default C(rctlpolicy) found on the C(PATH) or in C(/usr/local/bin).
    type: path
attributes:
  check_mode:
    support: full
    description: Reports what would change in the files and in the kernel; changes nothing.
  diff_mode:
    support: full
    description: Shows the kernel's rules before and after, and each policy file changed.
  platform:
    platforms: freebsd
    support: full
notes:
  - The rules are shown in the kernel's canonical form, as C(rctl -n) lists them (user
    names as uids, amounts in bytes, jail patterns expanded for the running jails).
  - A change is a rule whose amount changes (same subject, resource, action and per);
    C(changed) is true only when a file or a rule changed.
  - rctlpolicy(8) on the host documents C(plan), C(apply) and the JSON document this module
    reads (PLAN AND APPLY DOCUMENTS).
seealso:
  - name: rctl(8)
    description: FreeBSD's command for the resource limits this module manages.
    link: https://man.freebsd.org/cgi/man.cgi?query=rctl&sektion=8
"""

EXAMPLES = r"""
- name: Copy the fleet's policy to the host and apply it
  rctlpolicy.freebsd.policy:
    src: policies/{{ inventory_hostname }}/
    rules_dir: /usr/local/etc/rctlpolicy/rules

- name: Let the running daemon apply it (it keeps its record of the rules it added)
  rctlpolicy.freebsd.policy:
    src: policies/common.yaml
    rules_dir: /usr/local/etc/rctlpolicy/rules
    reload: true
    pidfile: /var/run/rctlpolicy.pid

- name: What would change on each host (run with --check --diff)
  rctlpolicy.freebsd.policy:
    config: /usr/local/etc/rctlpolicy.yaml
  check_mode: true
  register: plan

- name: Remove every rule the policy does not name, whoever added it
  rctlpolicy.freebsd.policy:
    rules_dir: /usr/local/etc/rctlpolicy/rules
    prune: true
"""

RETURN = r"""
in_sync:
  description: Whether the kernel matched the policy before the task.
  returned: success
  type: bool
  sample: false
summary:
  description: How many rules are (or would be) added, changed and removed.
  returned: success
  type: dict
  sample: {"add": 1, "change": 1, "remove": 0}
changes:
  description:
    - The plan, in the kernel's canonical rule form.
    - C(change) holds the rules whose amount changes, as C(old) and C(new).
  returned: success
  type: dict
  sample:
    add: ["user:80:maxproc:deny=256"]
    change: [{"old": "jail:db1:maxproc:deny=100", "new": "jail:db1:maxproc:deny=200"}]
    remove: []
rules:
  description: The rules in force after the task (in check mode, those that would be).
  returned: success
  type: list
  elements: str
  sample: ["jail:db1:maxproc:deny=200", "user:80:maxproc:deny=256"]
files:
  description: The policy files written (or that would be) and removed, on the host.
  returned: success
  type: dict
  sample: {"written": ["/usr/local/etc/rctlpolicy/rules/web.yaml"], "removed": []}
rules_dir:
  description: The policy directory the rules were read from, on the host.
  returned: success
  type: str
  sample: /usr/local/etc/rctlpolicy/rules
warnings_policy:
  description: Warnings about the policy from C(rctlpolicy plan) (a jail pattern that
    matches no running jail), as C(file:line:col) lines.
  returned: success
  type: list
  elements: str
  sample: ["/usr/local/etc/rctlpolicy/rules/mail.yaml:2:11: the jail pattern 'mail-*' matches no running jail (running: db1)"]
diagnostics:
  description: The policy's errors, as C(rctlpolicy lint --format json) reports them.
  returned: failure
  type: list
  elements: dict
  sample: [{"path": "web.conf", "line": 2, "column": 10, "severity": "error",
            "code": "unknown-resource", "message": "unknown resource 'memoryuze'"}]
failed_rules:
  description: The rules the kernel refused, with the errno and the reason.
  returned: when the kernel refused rules
  type: list
  elements: dict
  sample: [{"rule": "process:4242:openfiles:deny=1000", "errno": "ESRCH", "reason": "No such process"}]
reloaded:
  description: Whether the daemon was asked to reload.
  returned: success
  type: bool
  sample: true
"""

import json
import os
import shutil
import signal
import stat
import tempfile
import time

from ansible.module_utils.basic import AnsibleModule

#: What rctlpolicy reads from a policy directory (rctlpolicy.files.POLICY_SUFFIXES).
POLICY_SUFFIXES = (".conf", ".rules", ".yaml", ".yml")
FORMAT_VERSION = 1
#: The keys of `plan|apply --format json` that this module reads.
DOCUMENT_KEYS = {
    "plan": ("diagnostics", "error", "rules", "warnings", "in_sync", "summary", "changes", "in_force"),
    "apply": ("diagnostics", "error", "summary", "changes", "in_force", "applied", "failed"),
}
CHANGE_KEYS = ("add", "change", "remove")
#: A policy entry is opened without following a symlink or waiting on a FIFO.
_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_CLOEXEC", 0)
)


def _is_policy_file(name):
    return name.endswith(POLICY_SUFFIXES) and not name.startswith(".")


class Rctlpolicy:
    """The rctlpolicy command on the host."""

    def __init__(self, module, executable):
        self.module = module
        self.executable = executable

    def options(self):
        params = self.module.params
        argv = []
        if params["config"]:
            argv += ["--config", params["config"]]
        if params["state_dir"]:
            argv += ["--state-dir", params["state_dir"]]
        if params["prune"]:
            argv.append("--prune")
        return argv

    def run(self, command, paths):
        """`rctlpolicy plan|apply --format json`: its exit status and its document."""
        argv = [self.executable, command, "--format", "json", *self.options(), *paths]
        rc, out, err = self.module.run_command(argv)
        try:
            document = json.loads(out)
        except ValueError:
            document = None
        if not isinstance(document, dict):
            self.module.fail_json(
                msg="rctlpolicy %s printed no JSON document (exit %d): %s"
                % (command, rc, ((err or out).strip() or "no output")[:2000]),
                rc=rc,
                cmd=argv,
            )
        if document.get("format_version") != FORMAT_VERSION:
            self.module.fail_json(
                msg="rctlpolicy %s printed format_version %r; this module reads %d"
                % (command, document.get("format_version"), FORMAT_VERSION),
                rc=rc,
                cmd=argv,
            )
        missing = [key for key in DOCUMENT_KEYS[command] if key not in document]
        changes = document.get("changes")
        usable = not missing and not document["diagnostics"] and not document["error"]
        if usable and not (
            isinstance(changes, dict) and all(isinstance(changes.get(k), list) for k in CHANGE_KEYS)
        ):
            missing = ["changes.add|change|remove"]
        if missing:
            self.module.fail_json(
                msg="rctlpolicy %s printed a JSON document without %s (exit %d)"
                % (command, ", ".join(missing), rc),
                rc=rc,
                cmd=argv,
            )
        return rc, document, err


def _where(diagnostic, names):
    path = names.get(diagnostic["path"], diagnostic["path"])
    if diagnostic.get("line"):
        return "%s:%d:%d" % (path, diagnostic["line"], diagnostic["column"])
    return path


def _diagnostic_lines(diagnostics, names):
    return [
        "%s: %s[%s]: %s"
        % (_where(d, names), d["severity"], d["code"], d["message"])
        + (" (%s)" % d["suggestion"] if d.get("suggestion") else "")
        for d in diagnostics
    ]


def _after(document):
    """The rules in force once the plan's changes are made."""
    changes = document["changes"]
    rules = set(document["in_force"])
    rules -= set(changes["remove"])
    rules -= {c["old"] for c in changes["change"]}
    rules |= set(changes["add"])
    rules |= {c["new"] for c in changes["change"]}
    return sorted(rules)


def _lines(rules):
    return "".join(rule + "\n" for rule in rules)


def _read_regular(path):
    """(bytes, mode) of a regular file, never through a symlink nor waiting on a FIFO; None
    when there is nothing there; (None, None) when it is something else (a symlink someone
    planted, a FIFO, unreadable)."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        return None
    except OSError:
        return None, None  # ELOOP: a symlink
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        return None, None
    with os.fdopen(fd, "rb") as handle:
        return handle.read(), stat.S_IMODE(info.st_mode)


def _read(path):
    """The text of a policy file on the host; None when absent; "" for anything that is not a
    regular UTF-8 file (a symlink is never followed): it differs from any policy, and the
    module replaces it with a regular file."""
    found = _read_regular(path)
    if found is None:
        return None
    data = found[0]
    try:
        return "" if data is None else data.decode("utf-8")
    except UnicodeDecodeError:
        return ""


def _write_all(module, files, mode):
    """Write every file whole beside its destination, and only then rename them into place:
    a failure (a full disk) leaves the directory as it was, never half a policy."""
    temps = []
    for path, _ in files:
        if os.path.isdir(path) and not os.path.islink(path):
            module.fail_json(msg="cannot write %s: a directory is there; nothing was changed" % path)
    try:
        for path, text in files:
            fd, temp = tempfile.mkstemp(
                prefix=".%s." % os.path.basename(path), dir=os.path.dirname(path)
            )
            temps.append((temp, path))
            with os.fdopen(fd, "wb") as handle:
                handle.write(text.encode("utf-8"))
                handle.flush()
                os.fchmod(handle.fileno(), mode)
                os.fsync(handle.fileno())
    except OSError as error:
        for temp, _ in temps:
            try:
                os.unlink(temp)
            except OSError:
                pass
        module.fail_json(
            msg="cannot write %s: %s; nothing was changed"
            % (temps[-1][1] if temps else files[0][0], error.strerror or error)
        )
    for temp, path in temps:
        os.replace(temp, path)  # a planted symlink is replaced itself, never followed


def _mode(module):
    value = module.params["mode"]
    try:
        mode = int(str(value), 8) if isinstance(value, str) else int(value)
    except (TypeError, ValueError):
        mode = -1
    if not 0 <= mode <= 0o777:
        module.fail_json(msg="mode: %r is not a file mode such as '0644'" % (value,))
    return mode


def _removable(path):
    """A policy name in rules_dir that `exclusive` may remove: a file or a symlink."""
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) or stat.S_ISLNK(info.st_mode)


def _file_plan(rules_dir, contents, exclusive):
    """(files to write, files to remove, their texts now) for the policy sent from `src`."""
    write, before = [], {}
    for name, text in sorted(contents.items()):
        path = os.path.join(rules_dir, name)
        now = _read(path)
        if now != text:
            write.append(path)
            before[path] = now
    remove = []
    if exclusive and os.path.isdir(rules_dir):
        for name in sorted(os.listdir(rules_dir)):
            path = os.path.join(rules_dir, name)
            if _is_policy_file(name) and name not in contents and _removable(path):
                remove.append(path)
                before[path] = _read(path)
    return write, remove, before


def _stage(contents, rules_dir, mode, keep):
    """The new policy in a private directory, to check it before anything is written: the
    files sent, with the mode they will have, and when `keep`, the policy files in rules_dir
    that are not replaced (the policy is the whole directory), as the daemon would see them:
    a regular file with its bytes and mode, a symlink as a link to the same target."""
    staged = tempfile.mkdtemp(prefix="rctlpolicy-ansible-")
    try:
        return staged, _stage_into(staged, contents, rules_dir, mode, keep)
    except OSError:
        shutil.rmtree(staged, ignore_errors=True)
        raise


def _stage_into(staged, contents, rules_dir, mode, keep):
    names = {}
    for name, text in contents.items():
        path = os.path.join(staged, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(text.encode("utf-8"))
            os.fchmod(handle.fileno(), mode)
        names[path] = os.path.join(rules_dir, name)
    if keep and os.path.isdir(rules_dir):
        for name in os.listdir(rules_dir):
            host_path = os.path.join(rules_dir, name)
            if not _is_policy_file(name) or name in contents:
                continue
            path = os.path.join(staged, name)
            if os.path.islink(host_path):
                os.symlink(os.path.realpath(host_path), path)
            else:
                found = _read_regular(host_path)
                if found is None or found[0] is None:
                    continue
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as handle:
                    handle.write(found[0])
                    os.fchmod(handle.fileno(), found[1])
            names[path] = host_path
    return names


def _reload(module, params):
    if params["pidfile"]:
        try:
            with open(params["pidfile"]) as handle:
                pid = int(handle.read().split()[0])
            os.kill(pid, signal.SIGHUP)
        except (OSError, ValueError, IndexError) as error:
            module.fail_json(
                msg="cannot signal the daemon of %s: %s" % (params["pidfile"], error)
            )
        return
    rc, out, err = module.run_command(["service", "rctlpolicy", "reload"])
    if rc != 0:
        module.fail_json(msg="service rctlpolicy reload failed: %s" % (err or out).strip(), rc=rc)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            rules_dir=dict(type="path"),
            src=dict(type="path"),
            config=dict(type="path"),
            state_dir=dict(type="path"),
            prune=dict(type="bool", default=False),
            reload=dict(type="bool", default=False),
            pidfile=dict(type="path"),
            reload_timeout=dict(type="int", default=30),
            mode=dict(type="raw", default="0644"),
            executable=dict(type="path"),
            # Set by the action plugin from `src` on the controller: file name -> text.
            _contents=dict(type="dict"),
            _src_is_dir=dict(type="bool", default=False),
            _src_names=dict(type="dict"),
        ),
        required_by={"src": "rules_dir"},
        supports_check_mode=True,
    )
    params = module.params
    if params["prune"] and params["reload"]:
        module.fail_json(
            msg="prune and reload cannot be used together: the daemon never prunes, and a "
            "prune run by the module behind its back would leave its record out of date"
        )
    if params["src"] and params["_contents"] is None:
        module.fail_json(
            msg="src is read on the controller by the rctlpolicy.freebsd.policy action "
            "plugin: call the module by that name"
        )
    executable = params["executable"] or module.get_bin_path(
        "rctlpolicy", required=True, opt_dirs=["/usr/local/bin"]
    )
    rctlpolicy = Rctlpolicy(module, executable)
    rules_dir = params["rules_dir"]
    contents = params["_contents"] or {}
    # Diagnostics name the files the user edits: the controller's, or the host's.
    names = dict(params["_src_names"] or {})
    write, remove, before_files = [], [], {}
    paths = [rules_dir] if rules_dir else []
    staged = None
    if params["_contents"] is not None:
        bad = [name for name in contents if os.sep in name or not _is_policy_file(name)]
        if bad:
            module.fail_json(msg="not policy file names: %s" % ", ".join(sorted(bad)))
        mode = _mode(module)
        write, remove, before_files = _file_plan(rules_dir, contents, params["_src_is_dir"])
        if write or remove:
            try:
                staged, staged_names = _stage(contents, rules_dir, mode, not params["_src_is_dir"])
            except OSError as error:
                module.fail_json(msg="cannot stage the policy to check it: %s" % error)
            for path, host_path in staged_names.items():
                names[path] = names.get(host_path, host_path)
            paths = [staged]
    try:
        rc, document, err = rctlpolicy.run("plan", paths)
    finally:
        if staged is not None:
            shutil.rmtree(staged, ignore_errors=True)
    if document["diagnostics"]:
        lines = _diagnostic_lines(document["diagnostics"], names)
        module.fail_json(
            msg="the policy has errors; nothing was changed:\n" + "\n".join(lines),
            diagnostics=[dict(d, path=names.get(d["path"], d["path"])) for d in document["diagnostics"]],
            rc=rc,
        )
    if rc != 0:
        module.fail_json(msg="rctlpolicy plan: %s" % document["error"], rc=rc, stderr=err)
    if not rules_dir:
        rules_dir = document["rules"]["paths"][0]
    warnings = [
        "%s: %s" % (_where(w, names), w["message"]) for w in document["warnings"]
    ]
    for warning in warnings:
        module.warn(warning)

    files_changed = bool(write or remove)
    result = dict(
        changed=files_changed or not document["in_sync"],
        in_sync=document["in_sync"],
        summary=document["summary"],
        changes=document["changes"],
        rules=_after(document),
        files=dict(written=write, removed=remove),
        rules_dir=rules_dir,
        warnings_policy=warnings,
        reloaded=False,
    )
    if module._diff:
        diff = [
            dict(
                before_header="kernel rules (%s)" % rules_dir,
                after_header="kernel rules (%s)" % rules_dir,
                before=_lines(document["in_force"]),
                after=_lines(result["rules"]),
            )
        ]
        for path in write + remove:
            diff.append(
                dict(
                    before_header=path,
                    after_header=path,
                    before=before_files.get(path) or "",
                    after=contents.get(os.path.basename(path), "") if path in write else "",
                )
            )
        result["diff"] = diff
    if module.check_mode or not result["changed"]:
        module.exit_json(**result)

    if files_changed:
        if not os.path.isdir(rules_dir):
            try:
                os.makedirs(rules_dir, 0o755)
            except OSError as error:
                module.fail_json(msg="cannot create %s: %s" % (rules_dir, error.strerror))
        _write_all(module, [(path, contents[os.path.basename(path)]) for path in write], mode)
        for path in remove:
            os.unlink(path)

    if params["reload"]:
        _reload(module, params)
        result["reloaded"] = True
        deadline = time.monotonic() + params["reload_timeout"]
        while True:
            rc, now, err = rctlpolicy.run("plan", [rules_dir])
            if rc == 0 and now["in_sync"]:
                break
            if time.monotonic() >= deadline:
                module.fail_json(
                    msg="the daemon did not make the kernel match the policy within %ds "
                    "(see its log)" % params["reload_timeout"],
                    **result
                )
            time.sleep(0.2)
        module.exit_json(**result)

    rc, applied, err = rctlpolicy.run("apply", [rules_dir])
    if applied["diagnostics"] or applied["error"]:
        # The files changed between the check and the apply: say what apply said.
        lines = _diagnostic_lines(applied["diagnostics"], names)
        module.fail_json(
            msg="rctlpolicy apply: %s" % "\n".join([applied["error"] or ""] + lines),
            rc=rc,
            **result
        )
    result["changes"] = applied["changes"]
    result["summary"] = applied["summary"]
    result["rules"] = _after(applied)
    result["applied"] = applied["applied"]
    if applied["failed"]:
        result["failed_rules"] = applied["failed"]
        module.fail_json(
            msg="the kernel refused %d rule(s): %s"
            % (
                len(applied["failed"]),
                "; ".join("%s: %s" % (f["rule"], f["reason"]) for f in applied["failed"]),
            ),
            **result
        )
    module.exit_json(**result)


if __name__ == "__main__":
    main()
