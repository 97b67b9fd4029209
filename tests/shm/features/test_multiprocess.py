"""Several real processes update the same keys of one table in a real POSIX shared-memory
segment; the final counts must equal a brute-force count of every event (allowed outcome:
exact equality, no lost or doubled update, no duplicated key, no lock timeout)."""
import mmap
import multiprocessing as mp
import os

import numpy as np
import posix_ipc
import pytest
from numba import njit

from shm.features import layout, table as T
from shm.features.windows import _read_count, _read_sum, _update_count, _update_sum

NB, BUCKET_MS, PROBE = 60, 1000, 32
CAP = 64                     # few slots: probing collisions and concurrent inserts
NKEYS = 40
N_PER_WORKER = 1_000_000   # long enough (0.1-0.5 s each) that the workers overlap
SW_COUNT = layout.slot_words("count", NB)
SW_SUM = layout.slot_words("sum", NB)


def stream(worker, nkeys=NKEYS):
    rng = np.random.default_rng(1000 + worker)
    keys = rng.integers(0, nkeys, N_PER_WORKER).astype(np.uint64) * np.uint64(0x9E3779B1)
    times = 5_000 + rng.integers(0, 50_000, N_PER_WORKER)     # all inside one 60 s window
    return keys, times


@njit(cache=True)
def _hammer(tc, ts, keys, times):
    bad = 0
    for i in range(keys.shape[0]):
        bad += _update_count(tc, CAP, SW_COUNT, PROBE, NB, BUCKET_MS, keys[i], times[i], 0.0) != 0
        bad += _update_sum(ts, CAP, SW_SUM, PROBE, NB, BUCKET_MS, keys[i], times[i], 1.0) != 0
    return bad


def _attach(name, nwords):
    shm = posix_ipc.SharedMemory(name)
    mm = mmap.mmap(shm.fd, nwords * 8)
    shm.close_fd()
    return mm, np.frombuffer(mm, dtype=np.uint64, count=nwords)


def _worker(worker, names, sizes, start, q, nkeys):
    mm1, tc = _attach(names[0], sizes[0])
    mm2, ts = _attach(names[1], sizes[1])
    keys, times = stream(worker, nkeys)
    start.wait(30)
    q.put(int(_hammer(tc, ts, keys, times)))
    del tc, ts


@pytest.mark.parametrize("nproc,nkeys", [(2, NKEYS), (4, NKEYS), (3, 500)])
def test_processes_count_every_event(nproc, nkeys):
    """nkeys=NKEYS fits: exact. nkeys=500 > 64 slots: constant concurrent eviction; allowed
    outcome: every key at most once in the table, counts never above the exact count."""
    _hammer(np.zeros(1, np.uint64), np.zeros(1, np.uint64), np.zeros(0, np.uint64),
            np.zeros(0, np.int64))                       # compile before forking
    names = [f"/re_feat_test_{os.getpid()}_{nproc}_{nkeys}_{i}" for i in range(2)]
    sizes = [T.table_words(CAP, SW_COUNT), T.table_words(CAP, SW_SUM)]
    segs, maps, views = [], [], []
    ctx = mp.get_context("fork")
    procs = []
    try:
        for name, nw, sw in zip(names, sizes, (SW_COUNT, SW_SUM)):
            seg = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, size=nw * 8)
            segs.append(seg)
            mm = mmap.mmap(seg.fd, nw * 8)
            seg.close_fd()
            maps.append(mm)
            v = np.frombuffer(mm, dtype=np.uint64, count=nw)
            T.init_table(v, CAP, sw)
            views.append(v)
        start = ctx.Barrier(nproc)
        q = ctx.Queue()
        procs = [ctx.Process(target=_worker, args=(w, names, sizes, start, q, nkeys)) for w in range(nproc)]
        for p in procs:
            p.start()
        bad = [q.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(30)
            assert p.exitcode == 0
        want = {}
        for w in range(nproc):
            keys, _ = stream(w, nkeys)
            for k, c in zip(*np.unique(keys, return_counts=True)):
                want[int(k)] = want.get(int(k), 0) + int(c)
        tc, ts = views
        evicting = nkeys > CAP
        if not evicting:
            assert bad == [0] * nproc
        for k, c in want.items():
            got_c = _read_count(tc, CAP, SW_COUNT, PROBE, NB, BUCKET_MS, np.uint64(k), 55_000, 0.0) - 1
            got_s = _read_sum(ts, CAP, SW_SUM, PROBE, NB, BUCKET_MS, np.uint64(k), 55_000, 0.0)
            if evicting:
                assert 0 <= got_c <= c and 0 <= got_s <= c
            else:
                assert got_c == c and got_s == c
        for v, sw in ((tc, SW_COUNT), (ts, SW_SUM)):
            c = T.counters(v)
            assert c["lock_timeouts"] == 0 and c["fill"] <= CAP
            assert c["evictions"] > 0 if evicting else (c["evictions"] == 0 and c["fill"] == len(want))
            slot_keys = v[T.SLOT_BASE::sw][:CAP]
            used = v[T.SLOT_BASE + 1::sw][:CAP] != 0
            assert np.unique(slot_keys[used]).shape[0] == used.sum() == c["fill"]   # no duplicate key
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(5)
        views.clear()
        for mm in maps:
            try:
                mm.close()
            except BufferError:
                pass
        for name in names:
            try:
                posix_ipc.unlink_shared_memory(name)
            except posix_ipc.ExistentialError:
                pass
