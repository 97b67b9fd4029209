"""The kernels' byte copies (ingress._bytes_kernels) against numpy's slice assignment: every
offset and length, from arrays and from bytes, and nothing outside the range touched."""
import numpy as np
from numba import njit

from ingress._bytes_kernels import copy_bytes, zero_bytes


@njit(cache=True)
def _copy(dst, doff, src, soff, n):
    copy_bytes(dst, doff, src, soff, n)


@njit(cache=True)
def _zero(dst, doff, n):
    zero_bytes(dst, doff, n)


def test_copy_and_zero_are_slice_assignments():
    rng = np.random.default_rng(11)
    src = rng.integers(0, 256, 300, dtype=np.uint8)
    for _ in range(400):
        n = int(rng.integers(0, 140))
        doff, soff = int(rng.integers(0, 300 - n)), int(rng.integers(0, 300 - n))
        dst = rng.integers(0, 256, 300, dtype=np.uint8)
        want = dst.copy()
        want[doff:doff + n] = src[soff:soff + n]
        for s in (src, src.tobytes()):
            got = dst.copy()
            _copy(got, doff, s, soff, n)
            assert np.array_equal(got, want), (doff, soff, n)
        want[doff:doff + n] = 0
        _zero(dst, doff, n)
        _copy(dst, 0, dst, 0, 0)
        assert np.array_equal(dst, want), (doff, n)
