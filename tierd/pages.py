"""Page geometry and page-flag bits of the kernel ABI tierd works with, defined once.

Base pages of 4 KiB (x86-64) and PMD-sized transparent huge pages of 512 of them (2 MiB).
Per-page state is packed 64 pages per uint64 word, which is also the idle_bitmap record layout
(one (present, idle) pair of u64 per 64 pages).  Pure constants, outside tierd/linux so that
the policy, the status client and the simulator import them without the kernel package.
"""

from __future__ import annotations

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT  # 4 KiB
PAGES_PER_WORD = 64  # pages per uint64 bitmap word (vpn 64*w .. 64*w+63)
HPAGE_PAGES = 512  # a PMD-sized THP: 2 MiB of 4 KiB pages
HPAGE_WORDS = HPAGE_PAGES // PAGES_PER_WORD

# /proc/kpageflags bit numbers (include/uapi/linux/kernel-page-flags.h)
KPF_LRU = 5
KPF_COMPOUND_HEAD = 15
KPF_COMPOUND_TAIL = 16
KPF_THP = 22
KPF_ZERO_PAGE = 24
