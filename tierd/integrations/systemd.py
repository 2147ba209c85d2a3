"""sd_notify for ``Type=notify`` units: readiness, status, reload, stop and the watchdog.

systemd passes NOTIFY_SOCKET (and, with WatchdogSec=, WATCHDOG_USEC/WATCHDOG_PID) in the
environment.  READY=1 goes out from ``on_ready``, which the daemon calls only after the policy
is loaded, the kernel features are probed and the metrics endpoint is bound; so
``systemctl start`` returns only when tierd really works.  The watchdog ping comes from the
loop's heartbeat: a hung sample or move stops the pings and systemd kills and restarts us.

``notify`` is injectable (tests); by default it is ``systemd.daemon.notify``, imported lazily
so that this module loads without systemd-python.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping

from tierd.engine.daemon import Observer, summary_line

log = logging.getLogger("tierd")


def under_systemd(env: Mapping[str, str] = os.environ) -> bool:
    """True when a service manager is listening for our notifications."""
    return bool(env.get("NOTIFY_SOCKET"))


def watchdog_seconds(env: Mapping[str, str] = os.environ, pid: int | None = None) -> float | None:
    """The watchdog timeout systemd expects pings within (sd_watchdog_enabled(3)), or None.
    WATCHDOG_PID, when set, must be our pid: the variable may be inherited by a child."""
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    wpid = env.get("WATCHDOG_PID", "")
    if wpid and wpid != str(os.getpid() if pid is None else pid):
        return None
    return int(usec) / 1e6


def _default_notify(message: str) -> None:
    from systemd import daemon

    daemon.notify(message)


def policy_line(policy) -> str:
    """The policy in force, in a few words for STATUS=."""
    names = ",".join(t.name for t in policy.targets) or "none"
    return f"policy {policy.source}: interval {policy.interval:g}s, targets {names}"


class SystemdNotifier(Observer):
    """Tells systemd where the daemon is in its life cycle (see the module docstring)."""

    def __init__(self, notify: Callable[[str], object] = _default_notify,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.notify = notify
        self.clock = clock
        self.policy = None
        self.note = ""  # sticky addition to STATUS=, e.g. a refused reload

    def _status(self, text: str) -> str:
        parts = [text]
        if self.policy is not None:
            parts.append(policy_line(self.policy))
        if self.note:
            parts.append(self.note)
        return "; ".join(parts)

    def on_ready(self, engine) -> None:
        self.policy = engine.policy
        # WATCHDOG=1 too: the watchdog may be counting since the start, and the first
        # interval (the first sample of every target) is the longest
        self.notify("READY=1\nWATCHDOG=1\nSTATUS="
                    + self._status(f"running, tracking {engine.reader.name}"))

    def on_interval(self, stats) -> None:
        self.notify("STATUS=" + self._status(summary_line(stats)))

    def on_heartbeat(self) -> None:
        self.notify("WATCHDOG=1")

    def on_reloading(self) -> None:
        # MONOTONIC_USEC: systemd >= 253 matches it against the reload it asked for.
        self.notify(f"RELOADING=1\nMONOTONIC_USEC={int(self.clock() * 1e6)}\n"
                    "STATUS=reloading the policy")

    def on_reloaded(self, policy, error) -> None:
        self.policy = policy
        if error is None:
            self.note = ""
            text = "policy reloaded"
        else:
            # one line: STATUS= is a single line in `systemctl status`
            self.note = "last reload refused: " + " ".join(str(error).split())
            text = "running"
        self.notify("READY=1\nSTATUS=" + self._status(text))

    def on_stopping(self) -> None:
        self.notify("STOPPING=1\nSTATUS=stopping")
