"""Quiet logs: repeated warnings rate-limited per (target, reason), tracebacks once per error.

A daemon that logs the same warning every interval buries the one line that matters (the
issue-19 measurement: 100 of 100 intervals logged "not sampled", 99 of 100 a refused
move_pages, every failed interval a full traceback).  So:

- ``RateLimiter.log(level, key, msg, *args)``: the first occurrence of ``key`` (by convention
  ``(target, reason)``) is logged at ``level``; repeats within ``every`` seconds are counted
  and logged at DEBUG only; the first repeat after that is logged at ``level`` again, ending
  with "(N more like this in the last ...)", and starts a new period.
- ``RateLimiter.exception(key, msg, *args)``: the traceback of the first occurrence of each
  distinct error (exception type and the place it was raised), then one ERROR line per
  occurrence without it ("same error as before, traceback logged at ...").

Used by the engine and the kernel boundary alike; it knows nothing but ``logging``.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Hashable

REPEAT_EVERY = 600.0  # seconds between two lines for the same (target, reason)
KEYS_MAX = 4096  # remembered keys (targets x reasons); the oldest are forgotten beyond it


class RateLimiter:
    """See the module docstring.  ``clock`` is injectable for tests."""

    def __init__(self, logger: logging.Logger, every: float = REPEAT_EVERY,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.every = every
        self.clock = clock
        self._last: dict[Hashable, float] = {}  # key -> clock of its last logged line
        self._suppressed: dict[Hashable, int] = {}
        self._tracebacks: set = set()

    def log(self, level: int, key: Hashable, msg: str, *args, **kwargs) -> bool:
        """Log ``msg % args`` at ``level`` unless ``key`` was logged less than ``every``
        seconds ago (then at DEBUG, counted).  Returns whether it went out at ``level``."""
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.every:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            self.logger.debug(msg, *args, **kwargs)
            return False
        more = self._suppressed.pop(key, 0)
        if more:
            msg = msg + f" ({more} more like this in the last {_ago(now - last)})"
        self._last.pop(key, None)
        self._last[key] = now
        if len(self._last) > KEYS_MAX:  # forget the oldest (dicts keep insertion order)
            old = next(iter(self._last))
            del self._last[old]
            self._suppressed.pop(old, None)
        self.logger.log(level, msg, *args, **kwargs)
        return True

    def warning(self, key: Hashable, msg: str, *args, **kwargs) -> bool:
        return self.log(logging.WARNING, key, msg, *args, **kwargs)

    def suppressed(self, key: Hashable) -> int:
        """Occurrences of ``key`` not logged at their level since its last line."""
        return self._suppressed.get(key, 0)

    def exception(self, msg: str, *args, exc: BaseException | None = None) -> bool:
        """Inside an ``except`` block (or with ``exc``): ERROR with the traceback the first
        time this error (type and raising place) occurs, without it afterwards.  Returns
        whether the traceback was logged."""
        if exc is None:
            import sys

            exc = sys.exc_info()[1]
        key = error_key(exc)
        if key in self._tracebacks:
            self.logger.error(msg + ": %s: %s (same error as before; its traceback was logged "
                              "the first time)", *args, type(exc).__name__, exc)
            return False
        if len(self._tracebacks) < KEYS_MAX:
            self._tracebacks.add(key)
        self.logger.error(msg, *args, exc_info=exc)
        return True


def error_key(exc: BaseException | None) -> tuple:
    """What makes two errors "the same": the exception type and the innermost frame it was
    raised in (file, line).  Not the message: it often carries a pid or an address."""
    if exc is None:
        return (None,)
    tb = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ else []
    where = (tb[-1].filename, tb[-1].lineno) if tb else ("", 0)
    return (type(exc).__qualname__, *where)


def _ago(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 120 else f"{seconds:.0f} s"
