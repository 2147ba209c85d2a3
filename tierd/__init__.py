"""tierd: a user-space memory tiering daemon.

Samples per-page access bits of target processes (through /proc/PID/idle_bitmap, or the stock
pagemap + page_idle interfaces), keeps per-page hotness in numpy arrays, and uses move_pages(2)
to keep hot pages on fast (DRAM) NUMA nodes and cold pages on slow (CXL/PMEM) nodes.
"""

__version__ = "0.1.0"
