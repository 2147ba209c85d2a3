"""Open-descriptor accounting for leak tests.

A count of /proc/self/fd moves when something unrelated closes a descriptor meanwhile (the
garbage collector finalising a socket an earlier test left behind: 29 == 30 in one CI run), so
tests compare the descriptors *opened since a snapshot*, each named by number and target.
"""

from __future__ import annotations

import gc
import os


def snapshot() -> set[tuple[int, str]]:
    """The open descriptors as (fd, what it points at), after a garbage collection."""
    gc.collect()
    out = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            out.add((int(name), os.readlink(f"/proc/self/fd/{name}")))
        except FileNotFoundError:  # the listdir's own descriptor, closed by now
            pass
    return out


def opened_since(before: set[tuple[int, str]]) -> int:
    """How many descriptors are open now that were not open in ``before``."""
    return len(snapshot() - before)
