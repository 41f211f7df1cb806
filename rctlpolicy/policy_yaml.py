"""rctlpolicy's YAML policy format: rules, and what to do when a devctl rule fires.

The text is read through `rctlpolicy.yamlload` (the one YAML loader: size limits, keys given
twice); diagnostics point at the YAML node they are about (its marks give line and column).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import yaml

from rctlpolicy.amounts import parse_duration
from rctlpolicy.codes import Code, code_named
from rctlpolicy.diagnostics import Diagnostic
from rctlpolicy.grammar import SUBJECT_ID, RuleSyntax, parse_rule_syntax
from rctlpolicy.model import Action, Rule, Severity
from rctlpolicy.onmatch import (
    COMMAND_KEYS,
    COUNT_MESSAGE,
    DEFAULT_COOLDOWN,
    DEFAULT_TIMEOUT,
    OnMatch,
    OnMatchProblem,
    RunLimit,
    Where,
    canonical_signal,
    command_problems,
    duration_problems,
    errors,
    max_runs_problems,
    name_problems,
    run_problems,
    service_problems,
    signal_problems,
)
from rctlpolicy.policy_model import PolicyRule, SourceLocation
from rctlpolicy.policy_rule import glob_subject, problem_diagnostic
from rctlpolicy.semantics.check import Layer, check_rule
from rctlpolicy.semantics.resolver import Resolver
from rctlpolicy.yamlload import YamlError, compose, duplicate_keys

if TYPE_CHECKING:
    from rctlpolicy.policy import PolicyFile

# --- YAML --------------------------------------------------------------------------------------

_TOP_KEYS = ("rules",)
_RULE_KEYS = ("rule", "comment", "on_match")
_ON_MATCH_KEYS = ("name", "run", "service", "signal", "cooldown", "max_runs", "timeout")
_SERVICE_KEYS = ("name", "command")
_MAX_RUNS_KEYS = ("count", "within")
_NULL_TAG = "tag:yaml.org,2002:null"
_SERVICE_EXAMPLE = "service: {name: postgresql, command: restart}"
_MAX_RUNS_EXAMPLE = "max_runs: {count: 3, within: 1h}"


class _YamlReport:
    """Collects diagnostics for one YAML file, positioned from the nodes' marks."""

    def __init__(self, policy_file: PolicyFile) -> None:
        self.path = policy_file.path
        self.lines = policy_file.text.splitlines()
        self.diagnostics: list[Diagnostic] = []

    def source(self, line: int) -> str | None:
        return self.lines[line - 1] if 0 < line <= len(self.lines) else None

    def at(
        self,
        node: yaml.Node,
        severity: Severity,
        code: str,
        message: str,
        suggestion: str | None = None,
    ) -> None:
        line = node.start_mark.line + 1
        column = node.start_mark.column + 1
        width = 1
        if node.end_mark.line == node.start_mark.line:
            width = max(1, node.end_mark.column - node.start_mark.column)
        self.diagnostics.append(
            Diagnostic(
                self.path,
                line,
                column,
                severity,
                code,
                message,
                suggestion,
                self.source(line),
                width,
            )
        )

    def error(
        self, node: yaml.Node, code: str, message: str, suggestion: str | None = None
    ) -> None:
        self.at(node, Severity.ERROR, code, message, suggestion)

    def unknown_keys(self, mapping: yaml.MappingNode, allowed: Sequence[str], where: str) -> bool:
        """Report keys that are not allowed; True when there were none."""
        clean = True
        for key_node, _ in mapping.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key not in allowed:
                clean = False
                close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
                hint = (
                    f"did you mean '{close[0]}'?"
                    if close
                    else f"{where} keys are: " + (", ".join(allowed))
                )
                self.error(key_node, Code.UNKNOWN_KEY, f"unknown key '{key}' in {where}", hint)
        return clean


def _mapping_items(
    node: yaml.MappingNode, report: _YamlReport
) -> dict[str, tuple[yaml.Node, yaml.Node]]:
    """The mapping's entries by key; a key given twice is an error (YAML would silently keep
    the last one, and the rules under the first would vanish)."""
    for repeated, first in duplicate_keys(node):
        report.error(
            repeated,
            Code.DUPLICATE_KEY,
            f"key '{repeated.value}' is given twice (first on line {first.start_mark.line + 1})",
            "merge the two into one",
        )
    return {
        key_node.value: (key_node, value_node)
        for key_node, value_node in node.value
        if isinstance(key_node, yaml.ScalarNode)
    }


def load_yaml(
    policy_file: PolicyFile, resolver: Resolver
) -> tuple[list[PolicyRule], list[Diagnostic]]:
    report = _YamlReport(policy_file)
    try:
        root = compose(policy_file.text)
    except YamlError as error:
        line, column = error.line or 1, error.column or 1
        code = code_named(error.code) or Code.YAML_SYNTAX
        message = (
            error.message if code is Code.YAML_TOO_LARGE else f"YAML syntax error: {error.message}"
        )
        report.diagnostics.append(
            Diagnostic.of(code, report.path, line, column, message, None, report.source(line))
        )
        return [], report.diagnostics
    if root is None:
        return [], report.diagnostics
    if not isinstance(root, yaml.MappingNode):
        report.error(
            root,
            Code.YAML_STRUCTURE,
            "a policy file is a mapping with a 'rules' list",
            "start the file with 'rules:'",
        )
        return [], report.diagnostics
    report.unknown_keys(root, _TOP_KEYS, "the policy file")
    items = _mapping_items(root, report)
    if "rules" not in items:
        report.error(root, Code.YAML_STRUCTURE, "no 'rules' list in this policy file")
        return [], report.diagnostics
    rules_node = items["rules"][1]
    if isinstance(rules_node, yaml.ScalarNode) and rules_node.value in ("", "~", "null"):
        return [], report.diagnostics
    if not isinstance(rules_node, yaml.SequenceNode):
        report.error(rules_node, Code.YAML_STRUCTURE, "'rules' must be a list")
        return [], report.diagnostics
    rules: list[PolicyRule] = []
    for entry in rules_node.value:
        rule = _yaml_rule(entry, report, resolver)
        if rule is not None:
            rules.append(rule)
    return rules, report.diagnostics


def _scalar_rule_column(node: yaml.ScalarNode) -> int:
    """0-based column of the rule text's first character (after an opening quote)."""
    return node.start_mark.column + (1 if node.style in ("'", '"') else 0)


def _yaml_rule(entry: yaml.Node, report: _YamlReport, resolver: Resolver) -> PolicyRule | None:
    on_match_node: yaml.Node | None = None
    comment: str | None = None
    if isinstance(entry, yaml.ScalarNode):
        rule_node = entry
    elif isinstance(entry, yaml.MappingNode):
        report.unknown_keys(entry, _RULE_KEYS, "a rule")
        items = _mapping_items(entry, report)
        if "rule" not in items:
            report.error(
                entry,
                Code.MISSING_KEY,
                "a rule entry needs a 'rule' key",
                "rule: jail:NAME:RESOURCE:ACTION=AMOUNT",
            )
            return None
        candidate = items["rule"][1]
        if not isinstance(candidate, yaml.ScalarNode):
            report.error(candidate, Code.YAML_STRUCTURE, "'rule' must be a string")
            return None
        rule_node = candidate
        if "comment" in items:
            comment_node = items["comment"][1]
            if isinstance(comment_node, yaml.ScalarNode):
                comment = comment_node.value
            else:
                report.error(comment_node, Code.YAML_STRUCTURE, "'comment' must be a string")
        if "on_match" in items:
            on_match_node = items["on_match"][1]
    else:
        report.error(
            entry,
            Code.YAML_STRUCTURE,
            "each rule is a string or a mapping with 'rule' (and 'on_match')",
        )
        return None

    text = rule_node.value
    line = rule_node.start_mark.line + 1
    column = _scalar_rule_column(rule_node)
    source_line = report.source(line) or text
    if rule_node.start_mark.line != rule_node.end_mark.line or rule_node.style in ("|", ">"):
        column = 0
        source_line = text
    syntax = parse_rule_syntax(text)
    pattern: str | None = None
    if glob_subject(syntax):
        # A jail glob: validate the rule with a stand-in name, keep the pattern for the daemon.
        pattern = syntax.fields[SUBJECT_ID] or ""
        check = check_rule(_with_subject_id(syntax, "x"), Layer.RCTL8, resolver)
    else:
        check = check_rule(syntax, Layer.RCTL8, resolver)
    for problem in check.problems:
        if pattern is not None and problem.field == SUBJECT_ID:
            continue
        report.diagnostics.append(
            problem_diagnostic(problem, syntax, report.path, line, column, source_line)
        )
    on_match = None
    if on_match_node is not None:
        on_match = _on_match(on_match_node, report)
    if check.rule is None:
        return None
    rule = check.rule
    if pattern is not None:
        rule = Rule(rule.subject, pattern, rule.resource, rule.action, rule.amount, rule.per)
    if on_match_node is not None and rule.action is not Action.DEVCTL:
        report.error(
            on_match_node,
            Code.ON_MATCH_NOT_DEVCTL,
            f"on_match can never run: the rule's action is '{rule.action}', and only "
            "devctl rules send events",
            f"change the action to devctl (…:{rule.resource}:devctl={rule.amount})",
        )
    if on_match_node is not None and on_match is None:
        return None  # a rule whose action is broken is not half-loaded (the error says why)
    return PolicyRule(
        rule, SourceLocation(report.path, line, column + 1), text, on_match, comment, pattern
    )


def _with_subject_id(syntax: RuleSyntax, subject_id: str) -> RuleSyntax:
    fields = list(syntax.fields)
    fields[SUBJECT_ID] = subject_id
    f0, f1, f2, f3, f4, f5 = fields
    return RuleSyntax(
        syntax.text, (f0, f1, f2, f3, f4, f5), syntax.starts, syntax.separator, syntax.per_present
    )


def _section(
    node: yaml.Node, report: _YamlReport, what: str, allowed: Sequence[str], example: str
) -> tuple[dict[str, tuple[yaml.Node, yaml.Node]], bool] | None:
    """A nested mapping (on_match, service, max_runs): its entries, and whether all its keys
    are known; None (reported) when it is not a mapping at all."""
    if not isinstance(node, yaml.MappingNode):
        report.error(node, "yaml-structure", f"'{what}' must be a mapping", example)
        return None
    known = report.unknown_keys(node, allowed, what)
    return _mapping_items(node, report), known


# --- on_match: YAML structure here, its meaning in rctlpolicy.onmatch -------------------------
#
# These functions read the YAML nodes into values, report what is wrong with the YAML itself
# (a string where a list belongs, a missing key), and hand the values to onmatch's checks, whose
# problems are reported at the node of the part they name. The engine runs the same checks, so
# what lint accepts is what runs.

_Nodes = dict[Where, yaml.Node]


def _text(node: yaml.Node) -> str | None:
    """A scalar's text; None for a mapping, a list or null."""
    if isinstance(node, yaml.ScalarNode) and node.tag != _NULL_TAG:
        return str(node.value)
    return None


def _on_match(node: yaml.Node, report: _YamlReport) -> OnMatch | None:
    section = _section(
        node,
        report,
        "on_match",
        _ON_MATCH_KEYS,
        "on_match: {run: [/usr/sbin/service, -j, '{jail}', postgresql, restart]}",
    )
    if section is None:
        return None
    items, ok = section
    nodes: _Nodes = {(): node}
    problems = command_problems([key for key in COMMAND_KEYS if key in items])
    run = service = signal_name = name = None
    if "run" in items:
        run = _run_argv(items["run"][1], report, nodes)
        if run is None:
            ok = False
        else:
            problems += run_problems(run)
    if "service" in items:
        service, clean = _service(items["service"][1], report, nodes)
        if service is None:
            ok = False
        else:
            ok = ok and clean
            problems += service_problems(service)
    if "signal" in items:
        signal_name = _scalar(items, "signal", report, nodes, "a signal name such as TERM")
        if signal_name is None:
            ok = False
        else:
            problems += signal_problems(signal_name)
    if "name" in items:
        name = _scalar(items, "name", report, nodes, "a name such as restart-db1-postgres")
        if name is None:
            ok = False
        else:
            problems += name_problems(name)
    cooldown = _duration(items, "cooldown", DEFAULT_COOLDOWN, report, nodes)
    timeout = _duration(items, "timeout", DEFAULT_TIMEOUT, report, nodes)
    for key, seconds in (("cooldown", cooldown), ("timeout", timeout)):
        if seconds is None:
            ok = False
        else:
            problems += duration_problems(key, seconds)
    max_runs = None
    if "max_runs" in items:
        max_runs = _max_runs(items["max_runs"][1], report, nodes)
        if max_runs is None:
            ok = False
        else:
            problems += max_runs_problems(max_runs)
    for problem in problems:
        _report_problem(problem, nodes, report)
    if not ok or errors(problems):
        return None
    assert cooldown is not None and timeout is not None
    return OnMatch(
        run=run,
        service=service,
        signal=canonical_signal(signal_name) if signal_name is not None else None,
        cooldown=cooldown,
        max_runs=max_runs,
        timeout=timeout,
        name=name,
    )


def _report_problem(problem: OnMatchProblem, nodes: _Nodes, report: _YamlReport) -> None:
    """Report an onmatch problem at the node of the part it names (or the nearest enclosing)."""
    where = problem.where
    while where not in nodes:
        where = where[:-1]
    report.at(nodes[where], problem.severity, problem.code, problem.message, problem.suggestion)


def _scalar(
    items: dict[str, tuple[yaml.Node, yaml.Node]],
    key: str,
    report: _YamlReport,
    nodes: _Nodes,
    what: str,
) -> str | None:
    node = items[key][1]
    nodes[(key,)] = node
    value = _text(node)
    if value is None and key == "signal":
        report.error(node, Code.INVALID_SIGNAL, f"'{key}' must be {what}")
    elif value is None:
        report.error(node, Code.INVALID_ACTION_NAME, f"'{key}' must be {what}")
    return value


def _run_argv(node: yaml.Node, report: _YamlReport, nodes: _Nodes) -> tuple[str, ...] | None:
    nodes[("run",)] = node
    if isinstance(node, yaml.ScalarNode):
        report.error(
            node,
            Code.RUN_NOT_ARGV,
            "'run' must be a list (an argv), never a shell string",
            "write run: [/usr/sbin/service, -j, '{jail}', postgresql, restart]",
        )
        return None
    if not isinstance(node, yaml.SequenceNode):
        report.error(node, Code.RUN_NOT_ARGV, "'run' must be a non-empty list of strings")
        return None
    argv: list[str] = []
    for index, element in enumerate(node.value):
        nodes[("run", index)] = element
        value = _text(element)
        if value is None:
            report.error(
                element, Code.RUN_NOT_ARGV, "each element of 'run' must be a non-empty string"
            )
            return None
        argv.append(value)
    return tuple(argv)


def _service(
    node: yaml.Node, report: _YamlReport, nodes: _Nodes
) -> tuple[tuple[str, str] | None, bool]:
    """The service's (name, command), and whether its mapping had only known keys."""
    nodes[("service",)] = node
    section = _section(node, report, "service", _SERVICE_KEYS, _SERVICE_EXAMPLE)
    if section is None:
        return None, False
    items, clean = section
    values: list[str] = []
    for key in _SERVICE_KEYS:
        if key not in items:
            report.error(node, Code.MISSING_KEY, f"'service' needs '{key}'", _SERVICE_EXAMPLE)
            return None, False
        value_node = items[key][1]
        nodes[("service", key)] = value_node
        value = _text(value_node)
        if value is None:
            report.error(value_node, Code.INVALID_SERVICE, f"service {key} must be one word")
            return None, False
        values.append(value)
    return (values[0], values[1]), clean


def _duration(
    items: dict[str, tuple[yaml.Node, yaml.Node]],
    key: str,
    default: float,
    report: _YamlReport,
    nodes: _Nodes,
    where: Where | None = None,
) -> float | None:
    if key not in items:
        return default
    node = items[key][1]
    nodes[where or (key,)] = node
    value = _text(node)
    if value is None:
        report.error(node, Code.INVALID_DURATION, f"'{key}' must be a duration like 30s, 10m, 1h")
        return None
    try:
        return parse_duration(int(value) if value.isdigit() else value)
    except ValueError as error:
        report.error(node, Code.INVALID_DURATION, f"invalid {key}: {error}")
        return None


def _max_runs(node: yaml.Node, report: _YamlReport, nodes: _Nodes) -> RunLimit | None:
    nodes[("max_runs",)] = node
    section = _section(node, report, "max_runs", _MAX_RUNS_KEYS, _MAX_RUNS_EXAMPLE)
    if section is None:
        return None
    items, clean = section
    if "count" not in items or "within" not in items:
        report.error(
            node, Code.MISSING_KEY, "'max_runs' needs 'count' and 'within'", _MAX_RUNS_EXAMPLE
        )
        return None
    count_node = items["count"][1]
    nodes[("max_runs", "count")] = count_node
    count_text = _text(count_node) or ""
    if not count_text.isdecimal() or not count_text.isascii():
        report.error(count_node, Code.INVALID_COUNT, COUNT_MESSAGE)
        return None
    within = _duration(items, "within", 0.0, report, nodes, ("max_runs", "within"))
    if within is None:
        return None
    return RunLimit(int(count_text), within) if clean else None
