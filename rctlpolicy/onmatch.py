"""What a devctl rule does when it fires: `on_match`, checked once, and the command it builds.

This is the one home of the `on_match` rules. `on_match_problems` says whether an `OnMatch` can
run and, if not, why (each problem names the part it is about, so the YAML loader can put it at
its line and column); `rctlpolicy lint` reports exactly these problems, and the action engine
refuses exactly what they refuse, so a policy that lints clean is a policy whose actions run.

An event becomes an `ActionContext` (`rctlpolicy.actioncontext`, validated on construction);
`build_command` turns an `OnMatch` and a context into an argv (a `run` template with its
placeholders filled in, or the `service` sugar) or a signal. Nothing here goes through a shell:
every placeholder value lands inside exactly one argv element, whatever it contains.

Pure: no I/O, no clock, no process state (the caller passes its own pid where it matters).
"""

from __future__ import annotations

import difflib
import functools
import math
import posixpath
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias

from rctlpolicy.actioncontext import ActionContext, ActionError, ActionInputError
from rctlpolicy.codes import Code, DiagnosticCode
from rctlpolicy.model import (
    HOST_JAIL,
    SIGNAL_NUMBERS,
    Rule,
    Severity,
    SubjectType,
)

#: Placeholders a `run` argv may use; each is substituted into one argv element.
PLACEHOLDERS = (
    "rule",
    "subject",
    "subject_id",
    "resource",
    "action",
    "amount",
    "pid",
    "ruid",
    "jail",
)

#: The three ways to act; an on_match has exactly one of them.
COMMAND_KEYS = ("run", "service", "signal")

SERVICE_COMMAND = "/usr/sbin/service"

DEFAULT_COOLDOWN = 0.0
DEFAULT_TIMEOUT = 60.0
#: The longest cooldown, timeout or max_runs window: a year, so that every moment the engine
#: computes from one (and logs as a date) stays within a 32-bit time_t until 2037.
MAX_DURATION = 366 * 86400.0

#: A name users give an action (`on_match: {name: restart-db1-postgres}`): the `name` label of
#: the action metrics, so short and plain.
ACTION_NAME_MAX = 64
_ACTION_NAME = re.compile(rf"[A-Za-z0-9_][A-Za-z0-9_.:-]{{0,{ACTION_NAME_MAX - 1}}}")
#: A service(8) script name or command: one plain word that cannot be read as an option.
_SERVICE_WORD = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")
#: One token of an argv template: an escaped brace, a placeholder, or a stray brace.
_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
#: FreeBSD's signal names without the SIG prefix, with their numbers (sys/sys/signal.h).
SIGNALS: dict[str, int] = {
    name.removeprefix("sig").upper(): number for name, number in SIGNAL_NUMBERS.items()
}


# --- the on_match record -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunLimit:
    """`max_runs: {count: 3, within: 1h}`: at most `count` runs in any `within` seconds."""

    count: int
    within: float


@dataclass(frozen=True, slots=True)
class OnMatch:
    """What to do when a devctl rule fires. Exactly one of run, service or signal is set.

    `run` is an argv template; `service` is (name, command), run as
    `service -j <jail> <name> <command>` (without -j on the host); `signal` is a signal
    name, sent to the event's pid. `name` is the action's name in logs and metrics (None: the
    default of `action_name`). Whether it can run is `on_match_problems`' answer.
    """

    run: tuple[str, ...] | None = None
    service: tuple[str, str] | None = None
    signal: str | None = None
    cooldown: float = DEFAULT_COOLDOWN
    max_runs: RunLimit | None = None
    timeout: float = DEFAULT_TIMEOUT
    name: str | None = None


# --- problems ------------------------------------------------------------------------------------

#: Where in an on_match a problem is: ("run", 2) is the third argv element, ("service",
#: "name") the service's name, ("cooldown",) the cooldown, () the on_match as a whole.
Where: TypeAlias = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class OnMatchProblem:
    """Why (part of) an on_match cannot run as written; `code` is its lint code (the registry,
    rctlpolicy.codes, gives its severity)."""

    where: Where
    code: str
    message: str
    suggestion: str | None = None
    severity: Severity = Severity.ERROR

    def __str__(self) -> str:
        return self.message + (f" ({self.suggestion})" if self.suggestion else "")


def _error(
    where: Where, code: DiagnosticCode, message: str, suggestion: str | None = None
) -> OnMatchProblem:
    """A problem with the registry's severity for its code."""
    return OnMatchProblem(where, code, message, suggestion, code.severity)


def errors(problems: Sequence[OnMatchProblem]) -> list[OnMatchProblem]:
    """The problems that stop an action from running (warnings do not)."""
    return [p for p in problems if p.severity is Severity.ERROR]


def command_problems(present: Sequence[str]) -> list[OnMatchProblem]:
    """Exactly one of run, service and signal; `present` lists those given."""
    if len(present) == 1:
        return []
    found = f" (found {', '.join(present)})" if present else ""
    message = f"on_match needs exactly one of 'run', 'service' or 'signal'{found}"
    return [_error((), Code.ON_MATCH_COMMAND, message)]


def run_problems(template: Sequence[str]) -> list[OnMatchProblem]:
    """Check a `run` argv template.

    The program (element 0) takes no placeholders: event data must never choose what runs. It is
    an absolute path, or a bare name looked up in the actions' PATH (a warning).
    """
    if isinstance(template, str) or len(template) == 0:
        return [
            _error(
                ("run",),
                Code.RUN_NOT_ARGV,
                "'run' must be a non-empty list of strings (an argv), never a shell string",
                "write run: [/usr/sbin/service, -j, '{jail}', postgresql, restart]",
            )
        ]
    problems: list[OnMatchProblem] = []
    for index, element in enumerate(template):
        found = _element_problem(("run", index), element)
        if found is not None:
            problems.append(found)
            continue
        if index == 0:
            problems.extend(_program_problems(element))
    return problems


def _element_problem(where: Where, element: object) -> OnMatchProblem | None:
    if not isinstance(element, str) or element == "":
        return _error(where, Code.RUN_NOT_ARGV, "each element of 'run' must be a non-empty string")
    if "\0" in element:
        return _error(where, Code.RUN_NOT_ARGV, "an element of 'run' contains a NUL byte")
    parsed = _parse_element(element)
    if isinstance(parsed, OnMatchProblem):
        return OnMatchProblem(where, parsed.code, parsed.message, parsed.suggestion)
    return None


def _program_problems(program: str) -> list[OnMatchProblem]:
    parts = _parse_element(program)
    assert not isinstance(parts, OnMatchProblem)
    if any(isinstance(part, _Field) for part in parts):
        return [
            _error(
                ("run", 0),
                Code.PLACEHOLDER_IN_PROGRAM,
                "the program to run cannot contain placeholders: an event must not choose it",
                "name the program literally; pass event values as arguments",
            )
        ]
    literal = "".join(part for part in parts if isinstance(part, str))
    if literal.startswith("/"):
        return []
    if "/" in literal:
        return [
            _error(
                ("run", 0),
                Code.RUN_RELATIVE_PATH,
                f"'{literal}' is a relative path, which depends on the daemon's directory",
                "give the program as an absolute path or a bare name found in PATH",
            )
        ]
    return [
        _error(
            ("run", 0),
            Code.RUN_RELATIVE_PROGRAM,
            f"'{literal}' is looked up in the actions' PATH "
            "(/sbin:/bin:/usr/sbin:/usr/bin:/usr/local/sbin:/usr/local/bin)",
            "give the program's absolute path, e.g. /usr/sbin/service",
        )
    ]


def service_problems(service: Sequence[str]) -> list[OnMatchProblem]:
    """Check `service: {name, command}`: each one plain word that cannot be an option."""
    if isinstance(service, str) or len(service) != 2:
        return [_error(("service",), Code.INVALID_SERVICE, "'service' is a name and a command")]
    problems = []
    for key, word in zip(("name", "command"), service, strict=True):
        if not isinstance(word, str) or _SERVICE_WORD.fullmatch(word) is None:
            problems.append(
                _error(
                    ("service", key),
                    Code.INVALID_SERVICE,
                    f"service {key} {word!r} must be one word of letters, digits and _ . + -, "
                    "starting with a letter, digit or _",
                )
            )
    return problems


def signal_number(name: object) -> int | None:
    """FreeBSD's number of a signal named with or without SIG, in any case; None if unknown."""
    if not isinstance(name, str):
        return None
    return SIGNALS.get(name.upper().removeprefix("SIG"))


def canonical_signal(name: object) -> str | None:
    """A signal's name as the policy keeps it ("sigterm" -> "TERM"), None if unknown."""
    if not isinstance(name, str) or signal_number(name) is None:
        return None
    return name.upper().removeprefix("SIG")


def signal_problems(name: str) -> list[OnMatchProblem]:
    """Check a signal name against FreeBSD's signals."""
    if canonical_signal(name) is not None:
        return []
    text = name.upper().removeprefix("SIG") if isinstance(name, str) else ""
    close = difflib.get_close_matches(text, list(SIGNALS), n=1, cutoff=0.6)
    return [
        _error(
            ("signal",),
            Code.INVALID_SIGNAL,
            f"unknown signal {name!r}",
            f"did you mean '{close[0]}'?" if close else "e.g. TERM, KILL, HUP",
        )
    ]


def duration_problems(key: str, seconds: float) -> list[OnMatchProblem]:
    """Check a cooldown or timeout (in seconds): 0 or more (a timeout: more), at most a year."""
    where = (key,)
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        return [_error(where, Code.INVALID_DURATION, f"{key} must be a number of seconds")]
    if not math.isfinite(seconds) or seconds < 0:
        message = f"invalid {key}: {seconds!r} is not a duration"
        return [_error(where, Code.INVALID_DURATION, message)]
    if key == "timeout" and seconds == 0:
        return [_error(where, Code.INVALID_DURATION, "timeout must be positive")]
    if seconds > MAX_DURATION:
        message = f"{key} is longer than {MAX_DURATION / 86400:g} days"
        return [_error(where, Code.INVALID_DURATION, message)]
    return []


#: The message of a max_runs count that is not a whole number >= 1.
COUNT_MESSAGE = "'count' must be a whole number >= 1"


def max_runs_problems(limit: RunLimit) -> list[OnMatchProblem]:
    """Check `max_runs: {count, within}`."""
    problems = []
    count = limit.count
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        problems.append(_error(("max_runs", "count"), Code.INVALID_COUNT, COUNT_MESSAGE))
    within = limit.within
    where: Where = ("max_runs", "within")
    if (
        isinstance(within, bool)
        or not isinstance(within, int | float)
        or not math.isfinite(within)
        or within <= 0
    ):
        problems.append(_error(where, Code.INVALID_DURATION, "'within' must be positive"))
    elif within > MAX_DURATION:
        message = f"'within' is longer than {MAX_DURATION / 86400:g} days"
        problems.append(_error(where, Code.INVALID_DURATION, message))
    return problems


def name_problems(name: str) -> list[OnMatchProblem]:
    """Check an action's name: a metrics label value, so short and plain."""
    if isinstance(name, str) and _ACTION_NAME.fullmatch(name):
        return []
    return [
        _error(
            ("name",),
            Code.INVALID_ACTION_NAME,
            f"action name {name!r} must be 1 to {ACTION_NAME_MAX} letters, digits and _ . : -, "
            "starting with a letter, digit or _",
            "e.g. name: restart-db1-postgres",
        )
    ]


def on_match_problems(on_match: OnMatch) -> list[OnMatchProblem]:
    """Everything that keeps this on_match from running as written (and its warnings).

    The YAML loader reports these (positioned) and the engine refuses an on_match with any
    error among them: one check, two callers. (Remembered per on_match: the engine asks at
    every event.)
    """
    try:
        return list(_cached_problems(on_match))
    except TypeError:  # unhashable parts (a list where a tuple belongs): check it afresh
        return _on_match_problems(on_match)


@functools.lru_cache(maxsize=1024)
def _cached_problems(on_match: OnMatch) -> tuple[OnMatchProblem, ...]:
    return tuple(_on_match_problems(on_match))


def _on_match_problems(on_match: OnMatch) -> list[OnMatchProblem]:
    present = [key for key in COMMAND_KEYS if getattr(on_match, key) is not None]
    problems = command_problems(present)
    if on_match.run is not None:
        problems += run_problems(on_match.run)
    if on_match.service is not None:
        problems += service_problems(on_match.service)
    if on_match.signal is not None:
        problems += signal_problems(on_match.signal)
    problems += duration_problems("cooldown", on_match.cooldown)
    problems += duration_problems("timeout", on_match.timeout)
    if on_match.max_runs is not None:
        problems += max_runs_problems(on_match.max_runs)
    if on_match.name is not None:
        problems += name_problems(on_match.name)
    return problems


# --- errors --------------------------------------------------------------------------------------


class ActionConfigError(ActionError):
    """An on_match cannot be run as written; the policy must be fixed (lint says the same)."""

    def __init__(self, problems: Sequence[OnMatchProblem]) -> None:
        super().__init__("; ".join(str(p) for p in problems))
        self.problems = tuple(problems)


class TemplateError(ActionConfigError):
    """A `run` argv template is malformed (unknown placeholder, stray brace, ...)."""


def check_on_match(on_match: OnMatch) -> None:
    """Raise ActionConfigError (TemplateError when `run` is at fault) unless it can run."""
    found = errors(on_match_problems(on_match))
    if not found:
        return
    if all(p.where[:1] == ("run",) for p in found):
        raise TemplateError(found)
    raise ActionConfigError(found)


# --- argv templates ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Field:
    name: str


@functools.lru_cache(maxsize=4096)
def _parse_element(element: str) -> tuple[str | _Field, ...] | OnMatchProblem:
    """Split one argv element into literal text and placeholders (`{{`/`}}` are literal braces),
    or say what is wrong with it (its `where` is filled in by the caller). Remembered: the
    elements are the policy's few templates, parsed again at every event otherwise."""
    parts: list[str | _Field] = []
    literal: list[str] = []
    position = 0
    for match in _TOKEN.finditer(element):
        literal.append(element[position : match.start()])
        position = match.end()
        token = match.group(0)
        if token in ("{{", "}}"):
            literal.append(token[0])
        elif match.group(1) is not None:
            name = match.group(1)
            if name not in PLACEHOLDERS:
                return _placeholder_problem(name)
            parts.append("".join(literal))
            literal = []
            parts.append(_Field(name))
        else:
            return _error(
                (),
                Code.BAD_PLACEHOLDER,
                f"unmatched {token!r} at column {match.start() + 1}; "
                f"write {token * 2!r} for a literal brace",
                "write placeholders as {jail}; a literal brace is {{ or }}",
            )
    literal.append(element[position:])
    parts.append("".join(literal))
    return tuple(part for part in parts if part != "")


def _placeholder_problem(name: str) -> OnMatchProblem:
    if name == "":
        return _error((), Code.BAD_PLACEHOLDER, "empty placeholder '{}'", _known_placeholders())
    base = re.split(r"[!:]", name, maxsplit=1)[0]
    if base != name and base in PLACEHOLDERS:
        return _error(
            (),
            Code.BAD_PLACEHOLDER,
            f"unknown placeholder {{{name}}}: a placeholder takes no format or conversion",
            f"write '{{{base}}}'",
        )
    close = difflib.get_close_matches(name.strip(), PLACEHOLDERS, n=1, cutoff=0.6)
    hint = f"did you mean '{{{close[0]}}}'?" if close else _known_placeholders()
    return _error((), Code.UNKNOWN_PLACEHOLDER, f"unknown placeholder {{{name}}}", hint)


def _known_placeholders() -> str:
    return "placeholders are " + ", ".join("{" + p + "}" for p in PLACEHOLDERS)


def check_template(template: Sequence[str]) -> frozenset[str]:
    """Check a `run` argv template; return the placeholders it uses, or raise TemplateError."""
    try:
        used, found = _checked_template(tuple(template))
    except TypeError:  # an unhashable element: not a string, which run_problems reports
        used, found = frozenset(), tuple(errors(run_problems(template)))
    if found:
        raise TemplateError(found)
    return used


@functools.lru_cache(maxsize=1024)
def _checked_template(
    template: tuple[str, ...],
) -> tuple[frozenset[str], tuple[OnMatchProblem, ...]]:
    found = tuple(errors(run_problems(template)))
    if found:
        return frozenset(), found
    used: set[str] = set()
    for element in template:
        parts = _parse_element(element)
        assert not isinstance(parts, OnMatchProblem)
        used.update(part.name for part in parts if isinstance(part, _Field))
    return frozenset(used), ()


def placeholder_values(ctx: ActionContext) -> dict[str, str | None]:
    """The value of every placeholder for this event; None where the event did not carry it."""
    rule = ctx.rule
    return {
        "rule": rule.canonical,
        "subject": rule.subject.value,
        "subject_id": rule.subject_id,
        "resource": rule.resource.value,
        "action": rule.action.value,
        "amount": str(rule.amount),
        "pid": None if ctx.pid is None else str(ctx.pid),
        "ruid": None if ctx.ruid is None else str(ctx.ruid),
        "jail": ctx.jail,
    }


def render_argv(template: Sequence[str], ctx: ActionContext) -> tuple[str, ...]:
    """Fill a `run` template: each placeholder's value stays inside its own argv element.

    Raises TemplateError for a malformed template and ActionInputError when a placeholder's
    value is unknown for this event (no pid in a truncated message, say).
    """
    check_template(template)
    values = placeholder_values(ctx)
    argv: list[str] = []
    for element in template:
        parts = _parse_element(element)
        assert not isinstance(parts, OnMatchProblem)
        pieces: list[str] = []
        for part in parts:
            if isinstance(part, str):
                pieces.append(part)
                continue
            value = values[part.name]
            if value is None:
                raise ActionInputError(
                    part.name, None, "the event did not carry it, and the action needs it"
                )
            pieces.append(value)
        rendered = "".join(pieces)
        if "\0" in rendered:
            raise ActionInputError("argv element", rendered, "contains a NUL byte")
        argv.append(rendered)
    return tuple(argv)


def uses_event_fields(on_match: OnMatch) -> bool:
    """Whether the action needs the pid or ruid that only a kernel event carries."""
    if on_match.signal is not None:
        return True
    if on_match.run is not None:
        try:
            used = check_template(on_match.run)
        except ActionConfigError:
            return False  # the engine refuses it, and says why
        return bool(used & {"pid", "ruid"})
    return False


# --- commands ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExecCommand:
    """Run this argv (never through a shell)."""

    argv: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SignalCommand:
    """Send signal `signum` (FreeBSD's number for it, `SIGNALS`) to process `pid`."""

    pid: int
    signum: int


Command: TypeAlias = ExecCommand | SignalCommand


def build_command(on_match: OnMatch, ctx: ActionContext, *, own_pid: int) -> Command:
    """What to execute for this on_match and event.

    `service` runs `service -j <jail> <name> <command>`, without `-j` for the host (jail "0").
    A signal goes to the event's pid, never to pid 0 or 1 or to `own_pid` (the caller). The pid
    may have been reused by the time the signal is sent: the kernel gives no handle that
    prevents it. Raises ActionConfigError (the on_match) or ActionInputError (the event).
    """
    check_on_match(on_match)
    if on_match.run is not None:
        return ExecCommand(render_argv(on_match.run, ctx))
    if on_match.service is not None:
        name, command = on_match.service
        if ctx.jail == HOST_JAIL:
            return ExecCommand((SERVICE_COMMAND, name, command))
        return ExecCommand((SERVICE_COMMAND, "-j", ctx.jail, name, command))
    assert on_match.signal is not None
    signum = signal_number(on_match.signal)
    assert signum is not None
    if ctx.pid is None:
        raise ActionInputError(
            "pid", None, "the event did not carry it; there is nothing to signal"
        )
    if ctx.pid <= 1:
        raise ActionInputError("pid", ctx.pid, "refusing to signal pid 0 (a process group) or 1")
    if ctx.pid == own_pid:
        raise ActionInputError("pid", ctx.pid, "is rctlpolicy itself")
    return SignalCommand(ctx.pid, signum)


# --- names ---------------------------------------------------------------------------------------


def _program_word(on_match: OnMatch) -> str:
    """What the action runs, in a word: the program's base name, the service, or the signal."""
    if on_match.run:
        parts = _parse_element(on_match.run[0]) if isinstance(on_match.run[0], str) else ()
        if isinstance(parts, OnMatchProblem):
            return "invalid"
        literal = "".join(part for part in parts if isinstance(part, str))
        return posixpath.basename(literal) or "invalid"
    if on_match.service:
        return str(on_match.service[0])
    if on_match.signal is not None:
        return "SIG" + (canonical_signal(on_match.signal) or "INVALID")
    return "invalid"


def action_name(on_match: OnMatch, rule: Rule) -> str:
    """The action's name in logs and metrics: the on_match's `name`, or by default
    `<jail>-<resource>-<program>` for a jail rule (`db1-swapuse-postgresql`) and
    `<subject>-<id>-<resource>-<program>` for others (`user-80-maxproc-logger`), where the
    program is the base name of `run`'s program, the `service` name, or `SIG<NAME>`."""
    if on_match.name is not None:
        return on_match.name
    if rule.subject is SubjectType.JAIL:
        who = rule.subject_id
    else:
        who = f"{rule.subject.value}-{rule.subject_id}"
    return f"{who}-{rule.resource.value}-{_program_word(on_match)}"
