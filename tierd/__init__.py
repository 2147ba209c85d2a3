"""tierd: a user-space memory tiering daemon.

Samples per-page access bits of target processes (through /proc/PID/idle_bitmap, or the stock
pagemap + page_idle interfaces), keeps per-page hotness in numpy arrays, and uses move_pages(2)
to keep hot pages on fast (DRAM) NUMA nodes and cold pages on slow (CXL/PMEM) nodes.
"""

__version__ = "0.1.0"

# Debian 12's numpy (1.24; the .deb depends on it) has no np.bitwise_count: tierd/_numpy_compat.py
from tierd import _numpy_compat  # noqa: E402

_numpy_compat.install()
