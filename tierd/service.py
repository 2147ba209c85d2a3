"""``tierd run``: the composition root of the daemon as a service.

The one place that builds and wires everything: logging (journald under systemd, stderr
otherwise), the policy, the kernel boundary, the engine, the metrics endpoint, sd_notify and
the daemon loop with its signal handlers.  The engine (tierd.engine) knows none of the
integrations; they are ``Observer``s handed to the ``Daemon`` here.

Order matters for ``Type=notify``: the policy is loaded, the kernel features probed (the
Engine opens the tracking reader) and the metrics endpoint bound before the loop starts and
sends READY=1, so ``systemctl start`` fails (or succeeds) on what really happened.

Test hook (not a policy key, not for production): with ``TIERD_DEBUG_HANG_FILE=PATH`` in the
environment, the loop blocks at the end of an interval once PATH exists with a modification
time after the daemon started (so the restarted daemon does not hang again), as a hung sample
or move would, until PATH goes away; tests/vm uses it to watch the systemd watchdog kill and
restart the daemon.  It is off unless the variable is set.  Likewise
``TIERD_DEBUG_FAIL_FILE=PATH`` makes every interval fail (an exception in target resolution)
while PATH exists with such a time: after MAX_FAILED_INTERVALS the daemon exits 1, the
transient failure systemd restarts it for (tests/vm/systemd_guest).

Exit codes (tierd.cli lists them; systemd/tierd.service's RestartPreventExitStatus= names the
permanent ones, so systemd shows one failed state instead of restarting for ever):
0 stopped, 1 transient runtime failure (restart), 2 invalid policy or usage (permanent),
69 EX_UNAVAILABLE: this host cannot tier (one class of memory, or no access-tracking
interface; permanent, the journal says what is missing and the fix in one sentence).
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Callable, Mapping

from tierd.cli import EXIT_UNAVAILABLE  # BSD EX_UNAVAILABLE: systemd shows "69/UNAVAILABLE"
from tierd.engine.daemon import DEFAULT_CONFIG, Daemon, Engine, Observer, add_run_arguments
from tierd.integrations import journal
from tierd.integrations import systemd as sd
from tierd.integrations.metrics import MetricsObserver, MetricsServer, make_registry

log = logging.getLogger("tierd")

HANG_ENV = "TIERD_DEBUG_HANG_FILE"
FAIL_ENV = "TIERD_DEBUG_FAIL_FILE"
NO_SLOW_TIER_FIX = ("give the machine a second, slower memory node (CXL memory or PMEM as a "
                    "memory-only NUMA node, or nodes in different memory tiers) or name the "
                    "nodes in the policy's nodes.fast/nodes.slow; `tierd topology` shows what "
                    "this host has")
# Watchdog pings per WatchdogSec: systemd's advice is at least two; four leaves margin for
# a loaded machine.
PINGS_PER_WATCHDOG = 4

__all__ = ["DEFAULT_CONFIG", "add_run_arguments", "main", "HANG_ENV", "FAIL_ENV",
           "EXIT_UNAVAILABLE"]


class _Armed:
    """A test hook's trigger: PATH exists, modified after this daemon started."""

    def __init__(self, path: str, started: float | None = None) -> None:
        self.path = path
        self.started = time.time() if started is None else started

    def _armed(self) -> bool:
        try:
            return os.stat(self.path).st_mtime > self.started
        except OSError:
            return False


class HangHook(_Armed, Observer):
    """The hang test hook described in the module docstring."""

    def __init__(self, path: str, sleep: Callable[[float], None] = time.sleep,
                 started: float | None = None) -> None:
        super().__init__(path, started)
        self.sleep = sleep

    def on_interval(self, stats) -> None:
        if self._armed():
            log.warning("%s exists: hanging the main loop on purpose (%s test hook)",
                        self.path, HANG_ENV)
            while self._armed():
                self.sleep(1.0)


class FailingResolver(_Armed):
    """The fail test hook (module docstring): target resolution raises while armed."""

    def __init__(self, inner, path: str, started: float | None = None) -> None:
        super().__init__(path, started)
        self.inner = inner

    def resolve(self, specs):
        if self._armed():
            raise RuntimeError(f"{self.path} exists: failing the interval on purpose "
                               f"({FAIL_ENV} test hook)")
        return self.inner.resolve(specs)


def cannot_tier(policy, fast, slow) -> str | None:
    """Why this host cannot tier with this policy (one sentence with the fix), or None."""
    if fast and slow:
        return None
    return (f"this host cannot tier: only one class of memory (fast node(s) {list(fast)}, "
            f"slow node(s) {list(slow)}; policy {policy.source}); fix: {NO_SLOW_TIER_FIX}")


def main(args: argparse.Namespace, *, kernel=None, env: Mapping[str, str] | None = None,
         notify: Callable[[str], object] | None = None, log_handler=None,
         on_started: Callable[[Daemon, MetricsServer], None] | None = None) -> int:
    """Run the daemon until signalled (or ``args.intervals``).  Returns tierd.cli's exit
    code.  ``kernel``, ``env``, ``notify``, ``log_handler`` are injectable for tests;
    ``on_started`` sees the daemon and the bound endpoint just before the loop starts."""
    from tierd.linux import FeatureMissing
    from tierd.policy import PolicyError, load_policy

    env = os.environ if env is None else env
    # --log-level wins; else the policy's log_level (applied once it is loaded, and on reloads)
    forced = getattr(args, "log_level", None)
    journal.setup_logging(forced or "INFO", env, handler=log_handler)
    try:
        policy = load_policy(args.config)
    except PolicyError as e:
        log.error("%s", e)
        return 2
    set_level(forced or policy.log_level)
    if kernel is None:
        from tierd.linux import Kernel

        kernel = Kernel()
    resolver = None
    if env.get(FAIL_ENV):
        from tierd.engine.targets import PsutilResolver

        resolver = FailingResolver(PsutilResolver(kernel), env[FAIL_ENV])
    try:
        engine = Engine(kernel, policy, resolver=resolver)
    except FeatureMissing as e:  # no access-tracking interface: permanent
        log.error("this host cannot tier: %s", e)
        return EXIT_UNAVAILABLE
    try:
        topo = engine.kernel.topology()
        fast, slow = topo.classify(policy.fast_nodes, policy.slow_nodes)
    except ValueError as e:  # the policy's node lists do not fit this machine
        log.error("%s: %s", policy.source, e)
        engine.close()
        return 2
    # a listed node that can come online later is waited for (the engine warns), not fatal
    why = None if topo.offline(policy.fast_nodes, policy.slow_nodes) else cannot_tier(policy, fast, slow)
    if why is not None:
        log.error("%s", why)
        engine.close()
        return EXIT_UNAVAILABLE

    metrics = MetricsObserver(engine)
    server = MetricsServer(make_registry(lambda: metrics.snapshot))
    try:
        server.start(policy)
    except PolicyError as e:
        log.error("%s", e)
        engine.close()
        return 2

    def loader(source: str):
        """A reload's policy must also fit the metrics endpoint (bound before the swap)."""
        new = load_policy(source)
        server.prepare(new)
        return new

    observers: list[Observer] = [journal.JournalLogObserver(), metrics, server,
                                 LogLevel(forced)]
    heartbeat = None
    if sd.under_systemd(env):
        notify = notify or sd._default_notify
    if notify is not None:
        observers.append(sd.SystemdNotifier(notify))
        wd = sd.watchdog_seconds(env)
        heartbeat = wd / PINGS_PER_WATCHDOG if wd else None
    if env.get(HANG_ENV):
        observers.append(HangHook(env[HANG_ENV]))
    daemon = Daemon(engine, loader=loader, observers=observers, heartbeat=heartbeat)
    daemon.install_signal_handlers()
    where = server.address
    every = (f"auto {policy.interval_min:g}-{policy.interval:g}s" if policy.interval_auto
             else f"{policy.interval:g}s")
    log.info("tierd running: policy %s, %d target(s), interval %s, tracking %s, metrics %s",
             policy.source, len(policy.targets), every, engine.reader.name,
             f"http://{_hostport(where)}/metrics" if where else "off")
    if on_started is not None:
        on_started(daemon, server)
    try:
        daemon.run(max_intervals=getattr(args, "intervals", None))
    finally:
        server.close()
    log.info("tierd stopped")
    return 130 if daemon.interrupted else 1 if daemon.failed else 0


def set_level(level: str) -> None:
    logging.getLogger().setLevel(getattr(logging, level))


class LogLevel(Observer):
    """A reloaded policy's log_level takes effect (unless --log-level fixed it)."""

    def __init__(self, forced: str | None) -> None:
        self.forced = forced

    def on_reloaded(self, policy, error) -> None:
        if error is None and not self.forced:
            set_level(policy.log_level)


def _hostport(addr: tuple[str, int]) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
