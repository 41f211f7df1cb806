"""What the table tests share: the host the conformance corpus assumes (spec: Host
assumptions), and the list of diagnostic codes a module can emit, read from its source.
"""

from __future__ import annotations

import ast
import inspect
from dataclasses import dataclass
from types import ModuleType

from rctlpolicy.grammar import parse_rule_syntax
from rctlpolicy.model import Rule
from rctlpolicy.semantics import Layer, check_rule


@dataclass(frozen=True, slots=True)
class CorpusHost:
    checks_names: bool = True

    def uid_of(self, name: str) -> int | None:
        return {"www": 80, "root": 0}.get(name)

    def gid_of(self, name: str) -> int | None:
        return {"wheel": 0}.get(name)

    def process_exists(self, pid: int) -> bool | None:
        return pid == 1

    def jail_exists(self, name: str) -> bool | None:
        return name == "db1"

    def loginclass_exists(self, name: str) -> bool | None:
        return name in ("default", "daemon")

    def name_of_uid(self, uid: int) -> str | None:
        return {80: "www", 0: "root"}.get(uid)


CORPUS_HOST = CorpusHost()

#: Where the diagnostic code is among the arguments of the calls that create findings.
_CODE_ARGUMENT = {"Problem": 2, "Diagnostic": 4, "error": 1, "at": 2, "_diagnostic": 2}


def _call_name(call: ast.Call) -> str | None:
    if isinstance(call.func, ast.Name):
        return call.func.id
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return None


def emitted_codes(module: ModuleType) -> set[str]:
    """Every diagnostic code written in `module`'s source, as a literal or an f-string.

    An f-string code comes back as a template with `{}` for each substitution
    (`f"unknown-{kind}"` is `"unknown-{}"`), so a test must say what it expands to.
    """
    tree = ast.parse(inspect.getsource(module))
    codes: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        index = _CODE_ARGUMENT.get(_call_name(node) or "")
        if index is None:
            continue
        argument: ast.expr | None = node.args[index] if len(node.args) > index else None
        for keyword in node.keywords:
            if keyword.arg == "code":
                argument = keyword.value
        if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
            codes.add(argument.value)
        elif isinstance(argument, ast.JoinedStr):
            codes.add(
                "".join(
                    str(part.value) if isinstance(part, ast.Constant) else "{}"
                    for part in argument.values
                )
            )
    return codes


def rule(text: str) -> Rule:
    """A rule as the kernel reads it (canonical text in, the same rule out)."""
    checked = check_rule(parse_rule_syntax(text), Layer.KERNEL, notes=False).rule
    assert checked is not None, text
    return checked
