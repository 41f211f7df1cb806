"""The `rctlpolicy` command: argument parsing, output formats and exit codes.

This is the only module that prints or decides an exit status. Each subcommand imports what it
needs when it runs, so `rctlpolicy lint` (run by pre-commit on every commit) stays light.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Collection, Sequence

from rctlpolicy import __version__

# Not typing.TYPE_CHECKING: importing typing alone is a tenth of what `rctlpolicy lint`, run by
# pre-commit on every commit, may spend starting up (mypy honours the name as it is).
TYPE_CHECKING = False
if TYPE_CHECKING:  # imported where used, for the same reason
    from typing import Any, TextIO

    from rctlpolicy.semantics.resolver import Resolver

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2


def _use_colour(stream: TextIO) -> bool:
    if os.environ.get("NO_COLOR"):
        return False
    return hasattr(stream, "isatty") and stream.isatty()


# --- lint ----------------------------------------------------------------------------------


def _cmd_lint(args: argparse.Namespace) -> int:
    from rctlpolicy.diagnostics import Diagnostic, DiagnosticCollector
    from rctlpolicy.files import PolicyReadError, read_policy_files
    from rctlpolicy.formats import LINT_PER_FILE, Style, render, render_json
    from rctlpolicy.lint import lint_into
    from rctlpolicy.model import Severity

    if args.list_codes:
        from rctlpolicy.codedocs import json_document, text_table

        sys.stdout.write(json_document() if args.format == "json" else text_table())
        return EXIT_OK
    if not args.paths:
        args.lint_parser.print_usage(sys.stderr)
        print("rctlpolicy lint: error: give a PATH (or --list-codes)", file=sys.stderr)
        return EXIT_USAGE
    try:
        files = read_policy_files(args.paths)
    except PolicyReadError as error:
        print(f"rctlpolicy lint: {error}", file=sys.stderr)
        return EXIT_USAGE
    empty = _directories_without_policy(args.paths)
    resolved = _lint_resolver(args)
    if resolved is None:
        return EXIT_USAGE
    resolver, running_jails = resolved

    def not_a_note(diagnostic: Diagnostic) -> bool:
        return diagnostic.severity is not Severity.INFO

    # Only what is printed is kept (JSON prints everything): a file of random text has
    # hundreds of thousands of findings, and memory must not grow with them.
    if args.format == "json":
        collected = DiagnosticCollector()
    else:
        collected = DiagnosticCollector(LINT_PER_FILE, not_a_note if args.quiet else None)
    policy = lint_into(files, collected.add, resolver, running_jails)
    chunks = (
        render_json(collected.diagnostics(), policy)
        if args.format == "json"
        else render(
            collected.diagnostics(),
            Style(args.format),
            per_file=LINT_PER_FILE,
            colour=args.format == "text" and _use_colour(sys.stdout),
            omitted=collected.omitted,
        )
    )
    for chunk in chunks:
        sys.stdout.write(chunk)
    failed = collected.failed(args.strict) or (args.strict and bool(empty))
    return EXIT_FINDINGS if failed else EXIT_OK


def _directories_without_policy(paths: Sequence[str]) -> list[str]:
    """Warn (stderr) about each directory PATH that holds no policy file; returns them."""
    from pathlib import Path

    from rctlpolicy.files import POLICY_SUFFIXES, PolicyReadError, policy_paths

    empty = []
    for raw in paths:
        path = Path(raw)
        if raw == "-" or not path.is_dir():
            continue
        try:
            if policy_paths(path):
                continue
        except PolicyReadError:
            continue  # reading it said why
        empty.append(raw)
        patterns = ", ".join(f"*{suffix}" for suffix in POLICY_SUFFIXES)
        print(
            f"rctlpolicy lint: warning: {raw}: no policy file in this directory "
            f"(looked for {patterns})",
            file=sys.stderr,
        )
    return empty


def _lint_resolver(args: argparse.Namespace) -> tuple[Resolver, Collection[str] | None] | None:
    """What `lint` looks names up with, and the running jails (None: not known). With
    --resolve: this machine, or the simulated host of --sim-host. None after saying why."""
    from rctlpolicy.semantics.resolver import OFFLINE

    if not args.resolve:
        return OFFLINE, None
    if args.sim_host:
        from rctlpolicy.kernel import KernelSetupError, open_simulator

        try:
            setup = open_simulator(args.sim_host)
            return setup.resolver, [jail.name for jail in setup.kernel.jails()]
        except (KernelSetupError, OSError) as error:
            print(f"rctlpolicy lint: {error}", file=sys.stderr)
            return None
    from rctlpolicy.hostinfo import SystemResolver

    resolver = SystemResolver()
    return resolver, resolver.running_jails()


# --- kernel commands: show, usage, plan, apply ------------------------------------------------


def _open(args: argparse.Namespace) -> Any:
    from rctlpolicy.kernel import KernelSetupError, open_kernel

    try:
        return open_kernel(args.kernel, args.sim_host)
    except KernelSetupError as error:
        print(f"rctlpolicy: {error}", file=sys.stderr)
        return None


def _parse_filter(text: str | None, setup: Any) -> Any:
    """A filter operand as rctl(8) reads it; prints a diagnostic and returns None if bad."""
    from rctlpolicy.grammar import parse_rule_syntax
    from rctlpolicy.kernel.base import STRERROR
    from rctlpolicy.model import Filter
    from rctlpolicy.semantics.check import Layer, check_filter

    if text is None:
        return Filter()
    syntax = parse_rule_syntax(text)
    check = check_filter(syntax, Layer.RCTL8, setup.resolver)
    if check.filter is None:
        problem = check.error
        assert problem is not None
        column = 0 if problem.field is None else syntax.starts[problem.field] + problem.offset
        # Where FreeBSD's kernel would refuse it, its errno too: what rctl(8) would print.
        refusal = STRERROR.get(problem.errno or "")
        kernel = f" ({problem.errno}: {refusal})" if refusal else ""
        print(f"rctlpolicy: invalid filter '{text}': {problem.message}{kernel}", file=sys.stderr)
        print(f"    {text}\n    {' ' * column}^", file=sys.stderr)
        if problem.suggestion:
            print(f"  help: {problem.suggestion}", file=sys.stderr)
        return None
    return check.filter


def _kernel_failure(
    error: Exception, doing: str, operand: str | None = None, hint: str = ""
) -> int:
    """A refused kernel call, worded like rctl(8): what failed, for what, and why. A host or
    state file that cannot be used is an I/O error (exit 2), not a refusal."""
    from rctlpolicy.kernel.base import KernelError

    if not isinstance(error, KernelError):
        print(f"rctlpolicy: {error}", file=sys.stderr)
        return EXIT_USAGE
    print(
        f"rctlpolicy: failed to {doing} '{operand or error.text}': {error.reason}{hint}",
        file=sys.stderr,
    )
    return EXIT_FINDINGS


def _cmd_show(args: argparse.Namespace) -> int:
    import json

    from rctlpolicy.kernel.base import KernelError

    setup = _open(args)
    if setup is None:
        return EXIT_USAGE
    rule_filter = _parse_filter(args.filter, setup)
    if rule_filter is None:
        return EXIT_USAGE
    try:
        rules = setup.kernel.rules(rule_filter)
    except (KernelError, OSError) as error:
        return _kernel_failure(error, "show rules for", args.filter)
    if args.format == "json":
        print(json.dumps([{"rule": rule.canonical} for rule in rules], indent=2))
        return EXIT_OK
    for rule in rules:
        print(setup.display(rule, numeric=args.numeric))
    return EXIT_OK


def _cmd_usage(args: argparse.Namespace) -> int:
    import json

    from rctlpolicy.kernel.base import KernelError
    from rctlpolicy.usage import jail_usage_table, usage_lines

    setup = _open(args)
    if setup is None:
        return EXIT_USAGE
    try:
        if args.filter is not None:
            rule_filter = _parse_filter(args.filter, setup)
            if rule_filter is None:
                return EXIT_USAGE
            try:
                usage = setup.kernel.usage(rule_filter)
            except (KernelError, OSError) as error:
                # EINVAL without a subject id: say which operand the kernel wants.
                hint = (
                    " (name a subject and its id: jail:db1, user:www, process:4242)"
                    if rule_filter.subject_id is None
                    else ""
                )
                return _kernel_failure(error, "show resource consumption for", args.filter, hint)
            if args.format == "json":
                print(json.dumps({str(r): v for r, v in usage.items()}, indent=2))
            else:
                sys.stdout.write(usage_lines(usage, human=not args.exact))
            return EXIT_OK
        table = jail_usage_table(setup.kernel)
    except (KernelError, OSError) as error:
        return _kernel_failure(error, "show resource consumption for")
    if args.format == "json":
        print(json.dumps(table.as_json(), indent=2))
    else:
        sys.stdout.write(table.render(human=not args.exact))
    return EXIT_OK


def _load_policy_for_kernel(args: argparse.Namespace, setup: Any) -> Any:
    """Lint the policy against the kernel's host (user names -> uids); None when invalid."""
    from rctlpolicy.files import PolicyReadError, read_policy_files
    from rctlpolicy.formats import format_text
    from rctlpolicy.lint import lint_files

    paths = args.paths or [str(setup.default_rules_dir)]
    try:
        files = read_policy_files(paths)
    except PolicyReadError as error:
        print(f"rctlpolicy: {error}", file=sys.stderr)
        return None
    # Whether a process still exists is the kernel's to say when the rule is added (one
    # refusal, reported), not a reason to change nothing.
    try:
        resolver = setup.policy_resolver()
    except OSError as error:  # the simulated host's file broke since the kernel was opened
        print(f"rctlpolicy: {error}", file=sys.stderr)
        return None
    result = lint_files(files, resolver)
    problems = [d for d in result.diagnostics if d.severity.value == "error"]
    if problems:
        sys.stderr.write(format_text(problems, _use_colour(sys.stderr)))
        print("rctlpolicy: the policy has errors; nothing was changed", file=sys.stderr)
        return None
    return result.policy


def _desired_rules(policy: Any, setup: Any) -> list[Any]:
    from rctlpolicy.policy import expand_jail_patterns

    names = {jail.name for jail in setup.kernel.jails()}
    return [r.rule for r in expand_jail_patterns(policy, names)]


def _kernel_and_policy(args: argparse.Namespace, failed: int) -> tuple[Any, Any, int]:
    """What plan and apply both start with: the kernel, then the policy checked against its
    host. Returns (setup, policy, 0), or (None, None, exit status) after saying why."""
    setup = _open(args)
    if setup is None:
        return None, None, failed
    policy = _load_policy_for_kernel(args, setup)
    if policy is None:
        return None, None, EXIT_FINDINGS
    return setup, policy, EXIT_OK


def _cmd_plan(args: argparse.Namespace) -> int:
    import json

    from rctlpolicy.apply import AppliedRules, plan_for
    from rctlpolicy.kernel.base import KernelError

    # With --detailed-exitcode 2 means "changes": every failure is then 1, as terraform does.
    failed = EXIT_FINDINGS if args.detailed_exitcode else EXIT_USAGE
    setup, policy, status = _kernel_and_policy(args, failed)
    if setup is None:
        return status
    try:
        plan = plan_for(
            setup.kernel,
            _desired_rules(policy, setup),
            AppliedRules.in_dir(setup.state_dir),
            args.prune,
        )
    except (KernelError, OSError) as error:
        return min(_kernel_failure(error, "show rules for"), failed)
    if args.format == "json":
        print(
            json.dumps(
                {
                    "add": [r.canonical for r in plan.to_add],
                    "remove": [r.canonical for r in plan.to_remove],
                    "replace": [{"old": o.canonical, "new": n.canonical} for o, n in plan.replaced],
                },
                indent=2,
            )
        )
    else:
        for line in plan.lines():
            print(line)
        if not plan.empty:
            print(
                f"Plan: {len(plan.to_add)} to add, "
                f"{len(plan.to_remove) + len(plan.replaced)} to remove.",
                file=sys.stderr,
            )
    if args.detailed_exitcode and not plan.empty:
        return 2
    return EXIT_OK


def _cmd_apply(args: argparse.Namespace) -> int:
    from rctlpolicy.apply import AppliedRules, apply_rules
    from rctlpolicy.kernel.base import KernelError

    setup, policy, status = _kernel_and_policy(args, EXIT_USAGE)
    if setup is None:
        return status
    try:
        report = apply_rules(
            setup.kernel,
            _desired_rules(policy, setup),
            AppliedRules.in_dir(setup.state_dir),
            args.prune,
        )
    except (KernelError, OSError) as error:
        return _kernel_failure(error, "apply the policy, stopped at")
    for rule in report.removed:
        print(f"- {rule.canonical}")
    for old, new in report.plan.replaced:
        if new in report.added:
            print(f"- {old.canonical}  (replaced by {new.canonical})")
    for rule in report.added:
        print(f"+ {rule.canonical}")
    for rule, refusal in report.failures:
        print(f"rctlpolicy: failed to apply {rule.canonical}: {refusal.reason}", file=sys.stderr)
    if report.plan.empty:
        print("The kernel already matches the policy.", file=sys.stderr)
    else:
        print(
            f"Applied: {len(report.added)} added, {len(report.removed)} removed, "
            f"{len(report.failures)} failed.",
            file=sys.stderr,
        )
    return EXIT_OK if report.ok else EXIT_FINDINGS


# --- daemon, handle, sim -----------------------------------------------------------------------


def _daemon_config(args: argparse.Namespace) -> Any:
    from pathlib import Path

    from rctlpolicy.config import DEFAULT_CONFIG_PATH, build_config, load_config_file

    file_values: dict[str, Any] = {}
    config_path = Path(args.config) if args.config else None
    if config_path is None and DEFAULT_CONFIG_PATH.exists():
        config_path = DEFAULT_CONFIG_PATH
    if config_path is not None:
        file_values = load_config_file(config_path)
    flags = {
        "rules_dir": Path(args.rules_dir) if args.rules_dir else None,
        "kernel": args.kernel,
        "sim_host": Path(args.sim_host) if args.sim_host else None,
        "devd_socket": Path(args.devd_socket) if args.devd_socket else None,
        "listen_address": args.listen_address,
        "telemetry_path": args.telemetry_path,
        "web_config_file": Path(args.web_config_file) if args.web_config_file else None,
        "pidfile": Path(args.pidfile) if args.pidfile else None,
        "syslog": args.syslog,
        "syslog_socket": args.syslog_socket,
        "log_level": args.log_level,
        "flush_on_exit": True if args.flush_on_exit else None,
        "output_file": Path(args.output_file) if args.output_file else None,
        "state_dir": Path(args.state_dir) if args.state_dir else None,
        "jail_poll_interval": args.jail_poll_interval,
        "reload_debounce": args.reload_debounce,
        "reload_settle": args.reload_settle,
        "max_policy_file_size": args.max_policy_file_size,
        "shutdown_timeout": args.shutdown_timeout,
    }
    return build_config(file_values, flags)


def _cmd_daemon(args: argparse.Namespace) -> int:
    from rctlpolicy.config import ConfigError

    try:
        config = _daemon_config(args)
    except ConfigError as error:
        print(f"rctlpolicy daemon: {error}", file=sys.stderr)
        return EXIT_USAGE
    from rctlpolicy.service import run_daemon

    return run_daemon(config)


def _cmd_handle(args: argparse.Namespace) -> int:
    from rctlpolicy.config import ConfigError
    from rctlpolicy.service import handle_event

    try:
        config = _daemon_config(args)
    except ConfigError as error:
        print(f"rctlpolicy handle: {error}", file=sys.stderr)
        return EXIT_USAGE
    return handle_event(config, args.rule, args.pid, args.ruid, args.jail)


SIM_RCTL_HELP = """\
usage: rctlpolicy sim rctl [--sim-host FILE] [rctl-argument ...]
       rctl [ -h ] [-a rule | -l filter | -r filter | -u filter | filter]

rctl(8) on the simulated host: the same options (-a, -h, -l, -n, -r, -u), output, messages
and exit status. -h is rctl's own (human-readable numbers), so this help is --help only.
The host file is --sim-host FILE, else $RCTLPOLICY_SIM_HOST, else the bundled example.
See rctl(8) and rctlpolicy(8).
"""


#: The options `sim rctl` reads itself, before rctl(8)'s own (its parser passes every argument
#: on to rctl, whose -h is not help).
SIM_RCTL_OPTIONS = ("--sim-host", "--help")


def _sim_rctl_arguments(args: argparse.Namespace) -> tuple[str | None, list[str]] | None:
    """--sim-host FILE (or --sim-host=FILE) before rctl's own arguments; None after --help."""
    sim_host: str | None = args.sim_host
    rest = list(args.rctl_args)
    while rest:
        if rest[0] == "--help":
            sys.stdout.write(SIM_RCTL_HELP)
            return None
        if rest[0] == "--sim-host" and len(rest) > 1:
            sim_host, rest = rest[1], rest[2:]
        elif rest[0].startswith("--sim-host="):
            sim_host, rest = rest[0].partition("=")[2], rest[1:]
        else:
            break
    return sim_host, rest


def _cmd_sim_rctl(args: argparse.Namespace) -> int:
    from rctlpolicy.kernel import KernelSetupError, open_simulator
    from rctlpolicy.kernel.rctl8 import run_rctl

    parsed = _sim_rctl_arguments(args)
    if parsed is None:
        return EXIT_OK
    sim_host, rctl_args = parsed
    try:
        setup = open_simulator(sim_host)
    except KernelSetupError as error:
        print(f"rctlpolicy: {error}", file=sys.stderr)
        return EXIT_USAGE
    return run_rctl(rctl_args, setup.syscalls, setup.resolver, setup.names, sys.stdout, sys.stderr)


def _cmd_sim_set(args: argparse.Namespace) -> int:
    from rctlpolicy.kernel import KernelSetupError, resolve_sim_host
    from rctlpolicy.kernel.hostedit import HostEditError, parse_usage_change, set_usage
    from rctlpolicy.kernel.hostfile import HostFileError

    try:
        changes = [parse_usage_change(text) for text in args.changes]
        path = resolve_sim_host(args.sim_host)
        edit = set_usage(path, args.subject, changes)
    except (HostEditError, KernelSetupError, HostFileError) as error:
        print(f"rctlpolicy sim set: {error}", file=sys.stderr)
        return EXIT_USAGE
    for resource, before, after in edit.changed:
        print(f"{edit.container} {resource}={after} (was {before})")
    return EXIT_OK


def _cmd_sim_devd(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rctlpolicy.kernel import KernelSetupError, open_simulator
    from rctlpolicy.simdevd import serve_sim_devd

    try:
        setup = open_simulator(args.sim_host)
    except KernelSetupError as error:
        print(f"rctlpolicy: {error}", file=sys.stderr)
        return EXIT_USAGE
    directory = Path(args.directory) if args.directory else None
    return serve_sim_devd(setup, directory, args.interval)


# --- the parser --------------------------------------------------------------------------------


def _top_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction[Any]]:
    parser = argparse.ArgumentParser(
        prog="rctlpolicy",
        description="Resource policies for FreeBSD jails: lint RCTL rules, keep the kernel in "
        "line with a policy, act on devd's RCTL events, export usage to Prometheus.",
        epilog="Exit status: 0 success, 1 findings or failures, 2 usage or I/O errors. "
        "See rctlpolicy(8).",
    )
    parser.add_argument("--version", action="version", version=f"rctlpolicy {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    return parser, commands


_LINT_DESCRIPTION = (
    "Check policy files exactly as rctl(8) and the kernel would: every rule that passes "
    "loads, every rule FreeBSD loads passes. Directories are searched for *.conf, *.rules, "
    "*.yaml and *.yml; '-' reads rctl.conf text from stdin."
)
_LINT_EPILOG = (
    "Exit status: 0 clean (or only warnings without --strict), 1 findings, 2 usage or I/O errors."
)


def _add_lint(commands: argparse._SubParsersAction[Any]) -> None:
    lint = commands.add_parser(
        "lint",
        help="check policy files (rctl.conf or YAML) as FreeBSD would",
        description=_LINT_DESCRIPTION,
        epilog=_LINT_EPILOG,
    )
    _lint_arguments(lint)


def _lint_arguments(lint: argparse.ArgumentParser) -> None:
    lint.add_argument("paths", nargs="*", metavar="PATH", help="policy file, directory or -")
    lint.add_argument(
        "--format",
        choices=("text", "parsable", "json", "github"),
        default="text",
        help="output format (default: text)",
    )
    lint.add_argument("--strict", action="store_true", help="fail on warnings too")
    lint.add_argument(
        "--resolve",
        action="store_true",
        help="check user names and pids against this machine, as rctl(8) would, and warn "
        "about jails and login classes it does not have and jail patterns no running jail "
        "matches",
    )
    lint.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="hide informational notes (JSON always includes them)",
    )
    lint.add_argument(
        "--sim-host",
        metavar="FILE",
        help="with --resolve: look names, processes and jails up on this simulated host "
        "instead of this machine",
    )
    lint.add_argument(
        "--list-codes",
        action="store_true",
        help="list every diagnostic code with its severity and meaning, and exit",
    )
    lint.set_defaults(handler=_cmd_lint, lint_parser=lint)


def lint_parser() -> argparse.ArgumentParser:
    """`rctlpolicy lint`'s own parser, for the arguments after `lint`: the same as its
    subcommand parser in `build_parser()`, without building every other command's parser
    (a good part of the start-up pre-commit pays on every commit)."""
    lint = argparse.ArgumentParser(
        prog="rctlpolicy lint", description=_LINT_DESCRIPTION, epilog=_LINT_EPILOG
    )
    _lint_arguments(lint)
    return lint


def build_parser() -> argparse.ArgumentParser:
    parser, commands = _top_parser()
    _add_lint(commands)

    def kernel_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--kernel",
            choices=("auto", "freebsd", "sim"),
            default="auto",
            help="the RCTL interface: FreeBSD's system calls, or the simulated "
            "host (auto: FreeBSD when running on it, the simulator elsewhere)",
        )
        _sim_host_option(sub)
        sub.add_argument(
            "--format",
            choices=("text", "json"),
            default="text",
            help="output format (default: text)",
        )

    show = commands.add_parser(
        "show",
        help="list the rules in force (like rctl)",
        description="List the rules in force, like rctl(8) with no "
        "flags: user ids shown as names unless -n.",
    )
    show.add_argument(
        "filter", nargs="?", metavar="FILTER", help="a filter such as jail:db1 or ::memoryuse"
    )
    show.add_argument("-n", "--numeric", action="store_true", help="show user ids, not names")
    kernel_options(show)
    show.set_defaults(handler=_cmd_show)

    usage = commands.add_parser(
        "usage",
        help="resource usage (like rctl -hu), or every jail against its limits",
        description="With a filter (jail:db1, user:www), the usage of that subject like "
        "rctl -hu. Without one, a table of every jail: usage next to the limits in force, "
        "as a percentage of the strictest deny.",
    )
    usage.add_argument("filter", nargs="?", metavar="FILTER")
    usage.add_argument("--exact", action="store_true", help="exact numbers, not 1.5G")
    kernel_options(usage)
    usage.set_defaults(handler=_cmd_usage)

    for name, handler, text in (
        ("plan", _cmd_plan, "show what apply would add and remove"),
        ("apply", _cmd_apply, "make the kernel's rules match the policy"),
    ):
        sub = commands.add_parser(
            name,
            help=text,
            description=f"{text[0].upper()}{text[1:]}. Only rules an earlier apply added are "
            "removed (recorded in the state directory), never rules other tools put in the "
            "kernel, unless --prune. An invalid policy changes nothing.",
        )
        sub.add_argument(
            "paths",
            nargs="*",
            metavar="PATH",
            help="policy files or directories (default: the rules directory)",
        )
        sub.add_argument(
            "--prune",
            action="store_true",
            help="also remove rules the policy does not name, whoever added them",
        )
        if name == "plan":
            sub.add_argument(
                "--detailed-exitcode",
                action="store_true",
                help="exit 2 when there are changes, 0 when in sync",
            )
        kernel_options(sub)
        sub.set_defaults(handler=handler)

    daemon_parser = commands.add_parser(
        "daemon",
        help="run the service: reconcile rules, act on devd events, serve metrics",
        description="Keep the kernel's rules in line with the rules directory (reloaded when "
        "a file changes and on SIGHUP), run the policy's actions when devd reports an RCTL "
        "event, and serve Prometheus metrics. Stays in the foreground; SIGTERM stops it.",
        epilog="Every flag can be set in the YAML config file under the flag's name without "
        "dashes (rules-dir, web.listen-address, ...); flags win. Exit status: 0 after "
        "SIGTERM/SIGINT, 1 when start-up fails (policy errors are printed), 2 for usage "
        "errors.",
    )
    _daemon_options(daemon_parser)
    daemon_parser.set_defaults(handler=_cmd_daemon)

    handle = commands.add_parser(
        "handle",
        help="run a rule's on_match once for one RCTL event (devd hook mode)",
        description="Run the action engine once for one RCTL event, as devd.conf(5)'s "
        "notify block passes it: cooldown and max_runs hold across invocations (a locked "
        "state file in the state directory).",
    )
    handle.add_argument("--rule", required=True, help="the event's rule ($rule)")
    handle.add_argument("--pid", help="the event's pid ($pid)")
    handle.add_argument("--ruid", help="the event's real uid ($ruid)")
    handle.add_argument("--jail", default="0", help="the event's jail ($jail; 0 is the host)")
    _daemon_options(handle)
    handle.set_defaults(handler=_cmd_handle)

    sim = commands.add_parser(
        "sim",
        help="the simulated host: rctl(8) and devd on it, and changing its usage",
        description="Rehearse on the simulated FreeBSD host.",
    )
    sim_commands = sim.add_subparsers(dest="sim_command", metavar="SIMCOMMAND", required=True)
    sim_rctl = sim_commands.add_parser(
        "rctl",
        help="rctl(8) on the simulated host, same flags, output and exit status",
        description="rctl(8) on the simulated host: rctl [-h] [-n] [filter ...], "
        "rctl -a rule ..., rctl -l [-h] [-n] filter ..., rctl -r filter ..., "
        "rctl -u [-h] filter ...",
        prefix_chars="+",
    )
    sim_rctl.add_argument("rctl_args", nargs=argparse.REMAINDER, metavar="ARG")
    sim_rctl.set_defaults(handler=_cmd_sim_rctl, sim_host=os.environ.get("RCTLPOLICY_SIM_HOST"))
    sim_set = sim_commands.add_parser(
        "set",
        help="change what a subject uses in the simulated host file",
        description="Set usage values of one subject in the simulated host file, in rctl -u "
        "units (amounts take rctl's suffixes: 1g, 512m). Only those values change: the rest of "
        "the file, comments included, stays as it is. A jail's usage is what its own "
        "processes use; rctl -u of a jail adds its child jails'.",
        epilog="Example: rctlpolicy sim set jail:db1 swapuse=1g memoryuse=3g. "
        "Exit status: 0 changed, 2 unknown subject or resource, bad amount, or I/O error.",
    )
    _sim_host_option(sim_set)
    sim_set.add_argument(
        "subject",
        metavar="SUBJECT",
        help="jail:NAME, user:NAME or uid, loginclass:NAME, process:PID",
    )
    sim_set.add_argument(
        "changes", nargs="+", metavar="RESOURCE=AMOUNT", help="e.g. swapuse=1g or maxproc=40"
    )
    sim_set.set_defaults(handler=_cmd_sim_set)
    sim_devd = sim_commands.add_parser(
        "devd",
        help="serve devd's sockets, sending the RCTL events of the simulated host",
        description="Serve devd's SOCK_SEQPACKET and SOCK_STREAM sockets beside the host "
        "file and, as usage in the host file changes, send the notifications the kernel "
        "would for devctl rules (log rules print the kernel's log line).",
    )
    sim_devd.add_argument(
        "--sim-host", default=os.environ.get("RCTLPOLICY_SIM_HOST"), metavar="FILE"
    )
    sim_devd.add_argument(
        "--directory",
        metavar="DIR",
        help="where to create the sockets (default: beside the host file)",
    )
    sim_devd.add_argument(
        "--interval",
        type=float,
        default=0.5,
        help="how often usage is re-read, in seconds (default 0.5)",
    )
    sim_devd.set_defaults(handler=_cmd_sim_devd)
    return parser


def _sim_host_option(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "--sim-host",
        metavar="FILE",
        default=os.environ.get("RCTLPOLICY_SIM_HOST"),
        help="simulated host file (default: $RCTLPOLICY_SIM_HOST, or the bundled example host)",
    )


def _daemon_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "--config",
        metavar="FILE",
        help="YAML config file (default: /usr/local/etc/rctlpolicy.yaml if present)",
    )
    sub.add_argument(
        "--rules-dir",
        metavar="DIR",
        help="the policy directory (default: /usr/local/etc/rctlpolicy/rules)",
    )
    sub.add_argument("--kernel", choices=("auto", "freebsd", "sim"), default=None)
    sub.add_argument("--sim-host", metavar="FILE", default=os.environ.get("RCTLPOLICY_SIM_HOST"))
    sub.add_argument(
        "--devd-socket",
        metavar="PATH",
        help="devd's seqpacket socket (default: /var/run/devd.seqpacket.pipe; on "
        "the simulated host a simulated devd is started when not given)",
    )
    sub.add_argument(
        "--web.listen-address",
        dest="listen_address",
        metavar="HOST:PORT",
        help="where to serve metrics (default: 127.0.0.1:10217)",
    )
    sub.add_argument(
        "--web.telemetry-path",
        dest="telemetry_path",
        metavar="PATH",
        help="metrics path (default: /metrics)",
    )
    sub.add_argument(
        "--web.config.file",
        dest="web_config_file",
        metavar="FILE",
        help="exporter-toolkit web config: TLS and basic auth",
    )
    sub.add_argument("--pidfile", metavar="FILE")
    sub.add_argument(
        "--syslog",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="log to syslog (facility daemon) instead of stderr",
    )
    sub.add_argument("--syslog-socket", metavar="PATH", help="default: /var/run/log")
    sub.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    sub.add_argument(
        "--flush-on-exit",
        action="store_true",
        help="remove the rules this daemon added when it stops",
    )
    sub.add_argument(
        "--output.file-path",
        dest="output_file",
        metavar="FILE",
        help="also write the metrics to FILE for node_exporter's textfile collector",
    )
    sub.add_argument(
        "--state-dir",
        metavar="DIR",
        help="where applied rules and action state are kept (default: "
        "/var/db/rctlpolicy; beside the host file on the simulator)",
    )
    sub.add_argument(
        "--jail-poll-interval",
        type=_seconds,
        metavar="SECONDS",
        help="how often the jail list is compared for jail patterns and "
        "ended episodes (default: 5)",
    )
    sub.add_argument(
        "--reload-debounce",
        type=_seconds,
        metavar="SECONDS",
        help="how long the rules directory must be quiet before a reload (default: 0.3)",
    )
    sub.add_argument(
        "--reload-settle",
        type=_seconds,
        metavar="SECONDS",
        help="how long every policy file must stay unchanged before a changed policy is "
        "applied (default: 2; SIGHUP applies at once)",
    )
    sub.add_argument(
        "--max-policy-file-size",
        type=_size,
        metavar="BYTES",
        help="refuse policy files larger than this, before reading them (default: 16m)",
    )
    sub.add_argument(
        "--shutdown-timeout",
        type=_seconds,
        metavar="SECONDS",
        help="how long running actions may finish at shutdown (default: 10)",
    )


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be a positive number of seconds")
    return value


def _size(text: str) -> int:
    from rctlpolicy.config import ConfigError, parse_size

    try:
        return parse_size(text)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (the console script exits with it)."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    try:
        if arguments[:1] == ["lint"]:
            args = lint_parser().parse_args(arguments[1:])
        else:
            args = build_parser().parse_args(arguments)
    except SystemExit as exit_:
        return int(exit_.code or 0) if isinstance(exit_.code, int) else EXIT_USAGE
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK


def console_main() -> None:
    sys.exit(main())
