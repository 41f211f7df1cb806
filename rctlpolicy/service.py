"""Process-level wiring of the daemon and of the one-shot `handle` hook.

`run_daemon` is what `rctlpolicy daemon` runs: logging, pidfile, the kernel, the simulated devd
when the simulated host is used without a devd socket, signals, the main loop.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from rctlpolicy.config import DaemonConfig
from rctlpolicy.daemon import Daemon, StartupError, remove_pidfile, setup_logging, write_pidfile
from rctlpolicy.formats import format_text
from rctlpolicy.kernel import KernelSetup, KernelSetupError, open_kernel

log = logging.getLogger("rctlpolicy")


def run_daemon(config: DaemonConfig) -> int:
    setup_logging(config)
    try:
        setup = open_kernel(config.kernel, config.sim_host)
    except KernelSetupError as error:
        log.error("%s", error)
        print(f"rctlpolicy daemon: {error}", file=sys.stderr)
        return 1
    state_dir = config.state_dir or setup.state_dir
    sim_devd = None
    devd_paths = None
    if setup.simulated and config.devd_socket is None:
        from rctlpolicy.simdevd import SimDevd

        sim_devd = SimDevd(setup)
        sim_devd.start()
        devd_paths = (sim_devd.server.seqpacket_path, sim_devd.server.stream_path)
        log.info("simulated devd serving %s", sim_devd.server.seqpacket_path)
    daemon = Daemon(config, setup.kernel, setup.resolver, state_dir, devd_paths=devd_paths)
    daemon.install_signal_handlers()
    try:
        try:
            daemon.start()
        except StartupError as error:
            text = format_text([d for d in error.diagnostics if d.severity.value == "error"])
            sys.stderr.write(text)
            print(f"rctlpolicy daemon: {error}", file=sys.stderr)
            log.error("cannot start: %s", error)
            daemon.shutdown()
            return 1
        except OSError as error:
            print(f"rctlpolicy daemon: cannot start: {error}", file=sys.stderr)
            log.error("cannot start: %s", error)
            daemon.shutdown()
            return 1
        if config.pidfile is not None:
            write_pidfile(config.pidfile)
        return daemon.run()
    finally:
        daemon.restore_signal_handlers()
        if sim_devd is not None:
            sim_devd.stop()
        if config.pidfile is not None:
            remove_pidfile(config.pidfile)


def handle_event(config: DaemonConfig, rule_text: str, pid: str | None, ruid: str | None,
                 jail: str) -> int:
    """`rctlpolicy handle`: one event from devd.conf's notify block, acted on once."""
    from rctlpolicy.actions import (
        ActionContext,
        ActionEngine,
        ActionInputError,
        FileState,
        Outcome,
        SubprocessRunner,
    )
    from rctlpolicy.clock import SystemClock
    from rctlpolicy.daemon import expand, load_rules

    setup_logging(config)
    try:
        setup: KernelSetup = open_kernel(config.kernel, config.sim_host)
    except KernelSetupError as error:
        print(f"rctlpolicy handle: {error}", file=sys.stderr)
        return 1
    policy, diagnostics = load_rules(config.rules_dir, setup.resolver)
    if policy is None:
        sys.stderr.write(format_text([d for d in diagnostics if d.severity.value == "error"]))
        print("rctlpolicy handle: the policy has errors; not acting", file=sys.stderr)
        return 1
    try:
        jail_names = {j.name for j in setup.kernel.jails()}
    except Exception:
        jail_names = set()
    loaded = expand(policy, jail_names | ({jail} if jail != "0" else set()))
    policy_rule = loaded.by_canonical.get(rule_text)
    if policy_rule is None:
        log.info("RCTL event for a rule not in the policy: %s", rule_text)
        print(f"rctlpolicy handle: no policy rule is {rule_text}", file=sys.stderr)
        return 1
    try:
        ctx = ActionContext.from_event(policy_rule.rule, pid, ruid, jail)
    except ActionInputError as error:
        print(f"rctlpolicy handle: {error}", file=sys.stderr)
        return 1
    state_dir = config.state_dir or setup.state_dir
    state_path: Path = state_dir / "actions.json"
    with FileState(state_path) as state:
        engine = ActionEngine(SystemClock(), SubprocessRunner(), state)
        try:
            outcome = engine.run_sync(policy_rule, ctx)
        finally:
            engine.shutdown(config.shutdown_timeout)
    if outcome is None:
        return 0
    print(f"rctlpolicy handle: {outcome.name}: {outcome.outcome.value}"
          + (f" ({outcome.detail})" if outcome.detail else ""))
    return 0 if outcome.outcome in (Outcome.OK, Outcome.SUPPRESSED, Outcome.EXHAUSTED) else 1
