"""Logging set-up: journald with structured fields under systemd, plain stderr otherwise.

Under systemd the service's stderr is a stream to journald, announced in JOURNAL_STREAM as
"DEVICE:INODE" of that stream; when fd 2 is that stream, records go to the journal directly
through ``systemd.journal.JournalHandler``, which keeps their priority and our fields:

  TIERD_INTERVAL, TIERD_PROCESSES, TIERD_PAGES_PROMOTED, TIERD_PAGES_DEMOTED,
  TIERD_PAGES_MOVED, TIERD_MOVE_FAILURES, TIERD_TARGETS      (the per-interval summary)
  TIERD_PID, TIERD_TARGET        (warnings about one process: "pid N (target): ...")
  TIERD_POLICY                   (reload messages: the policy file; the error names FILE:LINE)

e.g. ``journalctl -u tierd TIERD_TARGET=databases``.  Anywhere else: "LEVEL message" lines on
stderr, as before.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from tierd.engine.daemon import LogObserver, log, summary_line


def journal_stream(env: Mapping[str, str] = os.environ, fd: int = 2) -> bool:
    """True when ``fd`` is the journal stream systemd connected (JOURNAL_STREAM)."""
    dev_ino = env.get("JOURNAL_STREAM", "")
    if not dev_ino:
        return False
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    return dev_ino == f"{st.st_dev}:{st.st_ino}"


class EngineFields(logging.Filter):
    """Journal fields from the engine's own messages, without the engine knowing about the
    journal: per-process messages start "pid %d (%s): " (pid, target) or "pid %d", reload messages
    "reload of %s" / "reloaded policy from %s" (the file).  tests/unit/test_integrations.py
    holds the engine to these formats."""

    PREFIXES = (("pid %d (%s)", ("TIERD_PID", "TIERD_TARGET")),
                ("pid %d", ("TIERD_PID",)),
                ("reload of %s", ("TIERD_POLICY",)),
                ("reloaded policy from %s", ("TIERD_POLICY",)))

    def filter(self, record: logging.LogRecord) -> bool:
        msg, args = record.msg, record.args
        if isinstance(msg, str) and isinstance(args, tuple):
            for prefix, names in self.PREFIXES:
                if msg.startswith(prefix) and len(args) >= len(names):
                    for name, value in zip(names, args):
                        setattr(record, name, value)
                    break
        return True


def setup_logging(level: str, env: Mapping[str, str] = os.environ, handler=None) -> str:
    """Route the root logger to journald (under systemd) or stderr.  Returns which.
    ``handler`` replaces the JournalHandler (tests)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    if handler is None and journal_stream(env):
        from systemd.journal import JournalHandler

        handler = JournalHandler(SYSLOG_IDENTIFIER="tierd")
    where = "journal" if handler is not None else "stderr"
    if handler is None:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.addFilter(EngineFields())
    root.addHandler(handler)
    root.setLevel(getattr(logging, level))
    return where


class JournalLogObserver(LogObserver):
    """The one INFO line per interval, with its numbers as journal fields too."""

    def on_interval(self, stats) -> None:
        log.info("%s", summary_line(stats), extra={
            "TIERD_INTERVAL": stats.seq,
            "TIERD_PROCESSES": stats.processes,
            "TIERD_PAGES_PROMOTED": stats.promoted,
            "TIERD_PAGES_DEMOTED": stats.demoted,
            "TIERD_PAGES_MOVED": stats.moves.moved,
            "TIERD_MOVE_FAILURES": stats.moves.failed,
            "TIERD_TARGETS": ",".join(sorted(stats.targets)),
        })
