"""numpy features tierd uses that Debian 12's numpy (1.24, the .deb's python3-numpy) lacks.

``np.bitwise_count`` (population count per element, numpy >= 2.0) is used throughout the
engine on the packed uint64 page bitmaps.  On an older numpy, ``tierd/__init__.py`` installs
``bitwise_count`` below in its place (only where numpy has none), so the engine's code is the
same on both; it counts through a 256-entry table of byte popcounts, one vectorized lookup
per byte of the input (numpy 2's is a CPU instruction; a few times slower, still vectorized).
"""

from __future__ import annotations

import numpy as np

_POP8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def bitwise_count(x, out=None):
    """Set bits per element of an integer array, as uint8 (numpy 2's ``bitwise_count``)."""
    a = np.asarray(x)
    if a.dtype.kind not in "iu":
        raise TypeError(f"bitwise_count: integer input needed, got {a.dtype}")
    a = np.ascontiguousarray(np.abs(a) if a.dtype.kind == "i" else a)
    per_byte = _POP8[a.view(np.uint8)].reshape(a.shape + (a.dtype.itemsize,))
    counts = per_byte.sum(axis=-1, dtype=np.uint8)
    if out is None:
        return counts if a.ndim else counts[()]
    out[...] = counts
    return out


def install() -> None:
    """Give numpy a ``bitwise_count`` where it has none (numpy < 2.0)."""
    if not hasattr(np, "bitwise_count"):
        np.bitwise_count = bitwise_count
