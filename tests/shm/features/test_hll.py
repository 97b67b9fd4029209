"""HyperLogLog error within the documented bound 3 * 1.04 / sqrt(m)."""
import numpy as np
import pytest

from shm.features.hll import _hll_add_many, _hll_estimate, std_error


@pytest.mark.parametrize("n", [1_000, 100_000, 1_000_000])
@pytest.mark.parametrize("p", [6, 10, 12])
def test_error_within_documented_bound(n, p):
    m = 1 << p
    for seed in range(3):
        # n distinct values (an odd multiplier is a bijection mod 2^64); 1e6 fits in ~10 ms
        values = np.arange(n, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(seed)
        regs = np.zeros(m, np.uint8)
        _hll_add_many(regs, p, values)
        n_true = n
        err = abs(_hll_estimate(regs) - n_true) / n_true
        assert err <= 3 * std_error(m), (n, m, seed, err)


def test_small_cardinalities_are_near_exact():
    regs = np.zeros(1024, np.uint8)
    _hll_add_many(regs, 10, np.arange(1, 11, dtype=np.uint64))
    assert round(_hll_estimate(regs)) == 10


def test_duplicates_do_not_count():
    regs = np.zeros(256, np.uint8)
    _hll_add_many(regs, 8, np.repeat(np.arange(500, dtype=np.uint64), 20))
    assert abs(_hll_estimate(regs) - 500) / 500 <= 3 * std_error(256)
