"""What the table tests share: the conformance corpus (tests/data/, see its README) and the
host it assumes, and the list of diagnostic codes a module can emit, read from its source.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from rctlpolicy.codes import Code
from rctlpolicy.grammar import parse_rule_syntax
from rctlpolicy.model import Rule
from rctlpolicy.semantics.check import Layer, check_rule

DATA = Path(__file__).resolve().parent / "data"
#: The rule corpus: one JSON object a line (fields in tests/data/README.md).
CORPUS_PATH = DATA / "rctl-corpus.jsonl"


def corpus_cases() -> list[dict[str, Any]]:
    """Every case of the rule corpus, in file order."""
    with CORPUS_PATH.open(encoding="utf-8") as stream:
        return [json.loads(line) for line in stream if line.strip()]


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
_CODE_ARGUMENT = {"Problem": 1, "Diagnostic": 4, "error": 1, "at": 2, "_diagnostic": 2}


def _call_name(call: ast.Call) -> str | None:
    if isinstance(call.func, ast.Name):
        return call.func.id
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return None


def _sources(module: ModuleType) -> list[str]:
    """The module's source, or every module's of a package."""
    if not hasattr(module, "__path__"):
        return [inspect.getsource(module)]
    return [
        inspect.getsource(importlib.import_module(f"{module.__name__}.{info.name}"))
        for info in pkgutil.iter_modules(module.__path__)
    ]


def emitted_codes(module: ModuleType) -> set[str]:
    """Every diagnostic code `module` (or each module of a package) emits: the registered codes
    it names (`Code.UNKNOWN_RESOURCE`), and codes written as literals or f-strings in the
    calls that create findings.

    An f-string code comes back as a template with `{}` for each substitution
    (`f"unknown-{kind}"` is `"unknown-{}"`), so a test must say what it expands to.
    """
    codes: set[str] = set()
    for source in _sources(module):
        stack: list[ast.AST] = [ast.parse(source)]
        while stack:
            node = stack.pop()
            if isinstance(node, ast.Compare):
                continue  # `problem.code == Code.X` reads a code, it does not emit one
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "Code"
            ):
                codes.add(str(getattr(Code, node.attr)))
            if isinstance(node, ast.Call):
                codes |= _literal_code(node)
            stack.extend(ast.iter_child_nodes(node))
    return codes


def _literal_code(call: ast.Call) -> set[str]:
    index = _CODE_ARGUMENT.get(_call_name(call) or "")
    if index is None:
        return set()
    argument: ast.expr | None = call.args[index] if len(call.args) > index else None
    for keyword in call.keywords:
        if keyword.arg == "code":
            argument = keyword.value
    if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
        return {argument.value}
    if isinstance(argument, ast.JoinedStr):
        return {
            "".join(
                str(part.value) if isinstance(part, ast.Constant) else "{}"
                for part in argument.values
            )
        }
    return set()


def rule(text: str) -> Rule:
    """A rule as the kernel reads it (canonical text in, the same rule out)."""
    checked = check_rule(parse_rule_syntax(text), Layer.KERNEL, notes=False).rule
    assert checked is not None, text
    return checked
