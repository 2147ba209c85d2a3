"""Typed errors raised at the kernel boundary.

Everything under ``tierd.linux`` reports failures with these types (or the builtin
``PermissionError``), so callers can tell "the process went away" (routine: skip it) from
"the kernel cannot do this" (configuration: tell the operator how to fix it) from "the
kernel refused this call" (a bug or a race: log it).
"""

from __future__ import annotations

import errno
import os


class ProcessGone(ProcessLookupError):
    """The process exited (or never existed).

    Raised for ESRCH from a syscall, ENOENT when opening ``/proc/PID/...``, and for the
    end-of-file that ``/proc/PID/pagemap`` returns once the task's mm is gone.  A subclass of
    ``ProcessLookupError`` (``OSError`` with errno ESRCH), so ``except ProcessLookupError``
    catches it too.
    """

    def __init__(self, pid: int, detail: str = "") -> None:
        message = f"process {pid} has exited" + (f" ({detail})" if detail else "")
        super().__init__(errno.ESRCH, message)
        self.pid = pid

    def __str__(self) -> str:
        return self.strerror


class MovePagesError(OSError):
    """move_pages(2) failed as a whole for a reason other than ESRCH/EPERM.

    Typically ENODEV (a target node is not online), EINVAL (bad flags, or a node id outside
    the possible range) or E2BIG.  ``errno`` holds the kernel's error number.
    """

    def __init__(self, err: int, detail: str = "") -> None:
        name = errno.errorcode.get(err, str(err))
        message = f"move_pages failed: {name}: {_strerror(err)}"
        if detail:
            message += f" ({detail})"
        super().__init__(err, message)

    def __str__(self) -> str:
        return self.strerror


class FeatureMissing(RuntimeError):
    """A kernel interface tierd needs is not available.

    ``feature`` names it (e.g. "page_idle"), ``how_to_fix`` says what the operator can do
    about it, ``what`` (optional) what exactly is missing on this machine.  The string form is
    meant to be shown to the operator as is.
    """

    def __init__(self, feature: str, how_to_fix: str, what: str = "") -> None:
        super().__init__(feature, how_to_fix, what)
        self.feature = feature
        self.how_to_fix = how_to_fix
        self.what = what or "not available"

    def __str__(self) -> str:
        return f"{self.feature}: {self.what}. Fix: {self.how_to_fix}"


class ParseError(ValueError):
    """Text read from /proc or /sys did not have the expected format.

    ``line`` is the 1-based line number in that text when it is known, else 0.
    """

    def __init__(self, what: str, line: int, message: str) -> None:
        super().__init__(f"{what}:{line}: {message}" if line else f"{what}: {message}")
        self.what = what
        self.line = line
        self.message = message


def _strerror(err: int) -> str:
    return os.strerror(err)
