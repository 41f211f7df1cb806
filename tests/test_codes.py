"""The registry of diagnostic codes (rctlpolicy/codes.py): every code the project emits is in
it, every example does what the table says, and docs/lint-codes.md is what it generates."""

from __future__ import annotations

import ast
import json
import os
import re
from pathlib import Path

import pytest
from corpus_host import CORPUS_HOST

import rctlpolicy
from rctlpolicy.cli import EXIT_OK, main
from rctlpolicy.codedocs import markdown, text_table
from rctlpolicy.codes import ALL_CODES, Checker, Code, DiagnosticCode, Example, code_named
from rctlpolicy.diagnostics import Diagnostic
from rctlpolicy.lint import lint_files
from rctlpolicy.policy import PolicyFile
from rctlpolicy.policyload import load_rules
from rctlpolicy.semantics.resolver import OFFLINE

PACKAGE = Path(rctlpolicy.__file__).parent
DOCS = PACKAGE.parent / "docs" / "lint-codes.md"
#: The jails running on the example host.
RUNNING = frozenset({"db1"})


def findings(code: DiagnosticCode, example: Example, tmp_path: Path) -> list[Diagnostic]:
    """What rctlpolicy reports for the example, by whoever reports `code`."""
    if code.checker is Checker.DAEMON:
        rules = tmp_path / "rules"
        rules.mkdir(mode=0o755)
        path = rules / example.file
        path.write_bytes(example.text.encode("utf-8", "surrogateescape"))
        path.chmod(example.mode)
        return list(load_rules(rules, OFFLINE).diagnostics)
    if example.resolve:
        files = [PolicyFile(example.file, example.text)]
        return list(lint_files(files, CORPUS_HOST, RUNNING).diagnostics)
    return list(lint_files([PolicyFile(example.file, example.text)]).diagnostics)


@pytest.mark.parametrize("code", ALL_CODES, ids=str)
def test_the_failing_example_produces_the_code_at_its_severity(
    code: DiagnosticCode, tmp_path: Path
) -> None:
    assert code.fails.text, f"{code} has no example that produces it"
    found = [d for d in findings(code, code.fails, tmp_path) if d.code == code]
    assert found, f"{code}: its example does not produce it"
    assert {d.severity for d in found} == {code.severity}


@pytest.mark.parametrize("code", ALL_CODES, ids=str)
def test_the_passing_example_does_not(code: DiagnosticCode, tmp_path: Path) -> None:
    assert code.passes.text, f"{code} has no example that avoids it"
    found = [d for d in findings(code, code.passes, tmp_path) if d.code == code]
    assert found == []


def test_codes_are_unique_kebab_case_and_summed_up_in_a_line() -> None:
    names = [str(code) for code in ALL_CODES]
    assert len(names) == len(set(names))
    for code in ALL_CODES:
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)+", code), code
        assert code.summary and "\n" not in code.summary and len(code.summary) <= 90, code
        assert code_named(str(code)) is code
        assert getattr(Code, code.upper().replace("-", "_")) is code
    assert code_named("no-such-code") is None


#: Where the code is among the arguments of the calls that create findings, for codes still
#: written as strings (policy_yaml.py's on_match section, until it moves to its validator).
_CODE_ARGUMENT = {"Problem": 1, "Diagnostic": 4, "error": 1, "at": 2, "YamlError": None}


def _string_codes(tree: ast.AST, reporters: tuple[str, ...]) -> set[str]:
    """Codes written as strings in the calls that create findings; `report.error(...)` and
    `report.at(...)` count when made on one of `reporters`."""
    codes: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
        if name not in _CODE_ARGUMENT:
            continue
        receiver = func.value if isinstance(func, ast.Attribute) else None
        if name in ("error", "at") and not (
            isinstance(receiver, ast.Name) and receiver.id in reporters
        ):
            continue  # log.error(...) and the like
        index = _CODE_ARGUMENT[name]
        arguments = [kw.value for kw in node.keywords if kw.arg == "code"]
        if index is not None and len(node.args) > index:
            arguments.append(node.args[index])
        for argument in arguments:
            if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
                codes.add(argument.value)
            assert not isinstance(argument, ast.JoinedStr), "a code built at run time"
    return codes


def test_every_code_the_package_emits_is_registered() -> None:
    emitted: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        # policy_yaml's _YamlReport reports through self.error / self.at.
        reporters = ("report", "self") if path.name == "policy_yaml.py" else ("report",)
        emitted |= _string_codes(ast.parse(path.read_text()), reporters)
    scanned = ast.parse('report.error(node, "a-b", "m")\nlog.error(f"{x}")\nProblem(1, "c-d", "m")')
    assert _string_codes(scanned, ("report",)) == {"a-b", "c-d"}  # the scan sees such codes
    assert emitted - {str(code) for code in ALL_CODES} == set()


def test_docs_lint_codes_md_is_generated_from_the_registry() -> None:
    expected = markdown()
    if os.environ.get("RCTLPOLICY_UPDATE_GOLDEN"):
        DOCS.write_text(expected)
    assert DOCS.read_text() == expected, (
        "docs/lint-codes.md is stale: RCTLPOLICY_UPDATE_GOLDEN=1 pytest tests/test_codes.py"
    )
    for code in ALL_CODES:
        assert f"| `{code}` |" in expected


def test_list_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lint", "--list-codes"]) == EXIT_OK
    out = capsys.readouterr().out
    assert out == text_table()
    lines = out.splitlines()
    assert lines[0].split() == ["CODE", "SEVERITY", "REPORTED", "BY", "SUMMARY"]
    assert [line.split()[0] for line in lines[1:]] == [str(code) for code in ALL_CODES]
    assert lines[3].split()[:3] == ["unknown-resource", "error", "lint"]
    assert main(["lint", "--list-codes", "--format", "json"]) == EXIT_OK
    document = json.loads(capsys.readouterr().out)
    assert [c["code"] for c in document["codes"]] == [str(code) for code in ALL_CODES]
    first = document["codes"][0]
    assert first["fails"]["text"] == Code.MISSING_FIELD.fails.text
    assert first["severity"] == "error"
