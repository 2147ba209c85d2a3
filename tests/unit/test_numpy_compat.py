"""tierd/_numpy_compat.py: the popcount used on Debian 12's numpy agrees with numpy 2's."""

from __future__ import annotations

import numpy as np
import pytest

from tierd._numpy_compat import bitwise_count


@pytest.mark.parametrize("dtype", [np.uint64, np.uint32, np.uint8, np.int64])
def test_bitwise_count_matches_numpy(dtype):
    rng = np.random.default_rng(1)
    info = np.iinfo(dtype)
    a = rng.integers(info.min, info.max, size=(7, 33), dtype=dtype, endpoint=True)
    want = np.array([bin(abs(int(v))).count("1") for v in a.ravel()], np.uint8).reshape(a.shape)
    assert (bitwise_count(a) == want).all() and bitwise_count(a).dtype == np.uint8
    if hasattr(np, "bitwise_count"):
        assert (np.bitwise_count(a) == want).all()
    out = np.zeros(a.shape, np.uint8)
    assert bitwise_count(a, out=out) is out and (out == want).all()


def test_bitwise_count_scalar_and_non_contiguous():
    assert bitwise_count(np.uint64(0xFFFF_FFFF_FFFF_FFFF)) == 64
    a = np.arange(40, dtype=np.uint64)[::3]
    assert bitwise_count(a).tolist() == [bin(int(v)).count("1") for v in a]
    with pytest.raises(TypeError):
        bitwise_count(np.zeros(3))
