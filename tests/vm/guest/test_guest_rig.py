"""Inside the rig: the emulated machine itself is trustworthy for tierd's numpy code.

QEMU 7.2's TCG emulation of AVX2 made numpy's vectorized argsort return unsorted orders for
64-bit keys (tierd.vmrig turns AVX2 off for that reason); this guards the rig's CPU model.
"""

import numpy as np


def test_numpy_argsort_sorts_64bit_keys():
    keys = np.arange(1 << 20, (1 << 20) + 70000, dtype=np.uint64)[::-1].copy()
    for a in (keys, keys.astype(np.int64), np.random.default_rng(0).permutation(keys)):
        order = np.argsort(a)
        assert (np.diff(a[order].astype(np.int64)) >= 0).all()
        u, inv = np.unique(a, return_inverse=True)
        assert (np.diff(u.astype(np.int64)) > 0).all() and (u[inv] == a).all()


def test_rig_has_two_nodes_in_two_tiers():
    from pathlib import Path
    tiers = sorted(Path("/sys/devices/virtual/memory_tiering").glob("memory_tier*"))
    assert [t.joinpath("nodelist").read_text().strip() for t in tiers] == ["0", "1"]
