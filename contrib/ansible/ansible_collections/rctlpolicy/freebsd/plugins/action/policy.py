# Copyright (c) rctlpolicy contributors
# BSD 2-Clause License (see LICENSE in the rctlpolicy repository)
"""The controller's half of rctlpolicy.freebsd.policy: reads `src` (a policy file or a
directory of them) here and hands the texts to the module, which checks the policy on the
host before it writes anything (each file whole, renamed into place)."""

from __future__ import annotations

import os

from ansible.errors import AnsibleActionFail, AnsibleError
from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.action import ActionBase

#: What rctlpolicy reads from a policy directory (rctlpolicy.files.POLICY_SUFFIXES).
POLICY_SUFFIXES = (".conf", ".rules", ".yaml", ".yml")
#: Real policies are kilobytes; the daemon refuses files over 16 MiB.
MAX_FILE_BYTES = 16 * 1024 * 1024


def _policy_files(source):
    if os.path.isdir(source):
        names = sorted(
            name
            for name in os.listdir(source)
            if name.endswith(POLICY_SUFFIXES)
            and not name.startswith(".")
            and os.path.isfile(os.path.join(source, name))
        )
        if not names:
            raise AnsibleActionFail(
                "src %s holds no policy file (looked for %s)"
                % (source, ", ".join("*" + suffix for suffix in POLICY_SUFFIXES))
            )
        return [os.path.join(source, name) for name in names]
    if not os.path.basename(source).endswith(POLICY_SUFFIXES):
        raise AnsibleActionFail(
            "src %s is not a policy file (its name must end in %s)"
            % (source, ", ".join(POLICY_SUFFIXES))
        )
    return [source]


def _read(path):
    if os.path.getsize(path) > MAX_FILE_BYTES:
        raise AnsibleActionFail("%s is larger than 16 MiB: not a policy" % path)
    with open(path, "rb") as handle:
        data = handle.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise AnsibleActionFail("%s is not UTF-8 text (%s)" % (path, error.reason)) from None


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = True

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars or {})
        args = dict(self._task.args)
        for private in ("_contents", "_src_is_dir", "_src_names"):
            args.pop(private, None)
        src = args.get("src")
        if src is not None:
            try:
                source = self._find_needle("files", to_text(src))
            except AnsibleError as error:
                raise AnsibleActionFail(to_text(error)) from None
            rules_dir = args.get("rules_dir")
            if not rules_dir:
                raise AnsibleActionFail("src needs rules_dir: where the policy goes on the host")
            contents, names = {}, {}
            for path in _policy_files(source):
                name = os.path.basename(path)
                contents[name] = _read(path)
                # Diagnostics name the controller's file, the one to edit.
                names[os.path.join(rules_dir, name)] = path
            args["_contents"] = contents
            args["_src_is_dir"] = os.path.isdir(source)
            args["_src_names"] = names
        result.update(
            self._execute_module(
                module_name="rctlpolicy.freebsd.policy",
                module_args=args,
                task_vars=task_vars,
            )
        )
        return result
