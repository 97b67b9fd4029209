"""shm.atomics across two real processes: an njit spin on an acquire load terminates, and
concurrent fetch-add / compare-and-swap lose no update."""
from __future__ import annotations

import time

import numpy as np
import pytest
from numba import njit

from shm.atomics import (compare_and_swap, compare_and_swap_py, fence_seq_cst_py, fetch_add_py,
                         load_acquire, load_acquire_py, pause, prefetch, store_release,
                         store_release_py)
from shm.segment import Segment
from tests.shm.peers import Peer

READY, FLAG, GO, COUNTER = 0, 8, 16, 24      # words on separate cache lines


@pytest.fixture
def words(instance):
    seg = Segment.create(instance, "atomics", 4096)
    yield seg, seg.array(np.int64, 0, 64)
    seg.unlink()


def _wait_word(a, word, value, timeout_s=60.0):
    deadline = time.monotonic() + timeout_s
    while load_acquire_py(a, word) < value:
        assert time.monotonic() < deadline, f"word {word} never reached {value}"
        time.sleep(0.001)


def test_python_wrappers_on_both_word_types():
    for dt, big in ((np.int64, -5), (np.uint64, 2**64 - 1)):
        a = np.zeros(4, dt)
        store_release_py(a, 1, big)
        assert load_acquire_py(a, 1) == dt(big)
        assert fetch_add_py(a, 1, 1) == dt(big)
        assert a[1] == (dt(-4) if dt is np.int64 else dt(0))     # wraps
        seen = a[1]
        assert compare_and_swap_py(a, 1, seen, 7) == seen and a[1] == 7
        assert compare_and_swap_py(a, 1, 99, 8) == 7 and a[1] == 7     # failed swap: unchanged
        fence_seq_cst_py()
        with pytest.raises(IndexError):
            load_acquire_py(a, 4)


def test_other_integer_widths_and_hints():
    @njit
    def lock_and_count(a, counts):
        prefetch(counts, 1)
        for _ in range(3):
            while compare_and_swap(a, 0, 0, 1) != 0:     # int32 lock word
                pause()
            counts[1] += 1
            store_release(a, 0, 0)
        return load_acquire(a, 0)
    a = np.zeros(2, np.int32)
    counts = np.zeros(4, np.int64)
    assert lock_and_count(a, counts) == 0 and counts[1] == 3


def test_intrinsics_reject_non_integer_arrays():
    @njit
    def load_float(a):
        return load_acquire(a, 0)
    from numba.core.errors import TypingError
    with pytest.raises(TypingError):
        load_float(np.zeros(2, np.float64))


def test_njit_spin_on_acquire_load_sees_other_process_store(words, peer):
    """Without the acquire load LLVM hoists the load and this spin never ends (numba #1351)."""
    seg, a = words
    peer.start("spin", seg.name, READY, FLAG)
    _wait_word(a, READY, 1)
    time.sleep(0.005)                        # the peer is spinning inside compiled code now
    store_release_py(a, FLAG, 42)
    # Allowed outcome: ("ok", 42). A hoisted load never answers: the wait below times out
    # and the peer fixture kills the spinner.
    assert peer.result(timeout_s=30) == ("ok", 42)


@pytest.mark.parametrize("use_cas", [False, True])
def test_fetch_add_and_cas_from_two_processes_sum_exactly(instance, use_cas):
    seg = Segment.create(instance, "adders", 4096)
    a = seg.array(np.int64, 0, 64)
    n = 200_000 if use_cas else 1_000_000
    peers = [Peer(), Peer()]
    try:
        for p in peers:
            p.start("add_many", seg.name, READY, GO, COUNTER, n, use_cas)
        _wait_word(a, READY, 2)              # both spinning on GO: their adds overlap
        store_release_py(a, GO, 1)
        for p in peers:
            assert p.result() == ("ok",)
        assert load_acquire_py(a, COUNTER) == 2 * n
    finally:
        for p in peers:
            p.stop()
        del a
        seg.unlink()
