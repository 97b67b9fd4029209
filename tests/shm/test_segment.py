"""shm.segment: names, create/attach/close/unlink, prefault, and reclaim of a dead owner's
segments and semaphores after SIGKILL (never a live owner's, never another instance's)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from shm.names import SegmentError
from shm.segment import Segment, list_names, reclaim_stale, unlink_owned


def test_create_attach_share_bytes_and_unlink(instance):
    seg = Segment.create(instance, "data", 10_000)
    assert os.path.exists("/dev/shm" + seg.name)
    other = Segment.attach(seg.name)
    assert other.size == 10_000
    seg.prefault()                                   # contents unchanged, pages allocated
    a, b = seg.array(np.int64, 64, 8), other.array(np.int64, 64, 8)
    a[:] = np.arange(8)
    assert b.tolist() == list(range(8))
    seg.prefault(64, 64)
    assert b.tolist() == list(range(8))
    assert not seg.close()                           # a view is alive: not unmapped yet
    del a, b
    assert seg.close() and other.close()
    seg.unlink()
    seg.unlink()                                     # idempotent
    assert not os.path.exists("/dev/shm" + seg.name)
    with pytest.raises(SegmentError, match="no such segment"):
        Segment.attach(seg.name)
    with pytest.raises(SegmentError, match="beyond segment size"):
        Segment.create(instance, "small", 16).array(np.int64, 8, 2)


def test_reclaim_after_sigkill_of_the_owner(instance):
    live = Segment.create(instance, "mine", 4096)             # owner: this live process
    child = subprocess.Popen([sys.executable, "-m", "tests.shm.peers", "own", instance,
                              "ring", "bell"], stdout=subprocess.PIPE, text=True)
    try:
        ring_name, bell_name = child.stdout.readline().split()
        other = "t" + instance[1:][::-1]                       # another instance, same dead pid
        foreign = Segment.create(other, "keep", 4096, owner_pid=child.pid)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    try:
        assert os.path.exists("/dev/shm" + ring_name)
        assert os.path.exists("/dev/shm/sem." + bell_name[1:])
        removed = reclaim_stale(instance)
        assert sorted(removed) == sorted([ring_name, "sem:" + bell_name])
        assert [full for _, full, _ in list_names(instance)] == [live.name]
        assert os.path.exists("/dev/shm" + foreign.name)    # other instance: untouched
        assert reclaim_stale(instance) == []
    finally:
        foreign.unlink()
        live.unlink()


def test_unlink_owned_removes_only_that_owner(instance):
    mine = Segment.create(instance, "a", 4096)
    theirs = Segment.create(instance, "b", 4096, owner_pid=1)  # pid 1 is alive: kept by reclaim
    assert reclaim_stale(instance) == []
    assert unlink_owned(instance) == [mine.name]
    assert [full for _, full, _ in list_names(instance)] == [theirs.name]
    assert unlink_owned(instance, 1) == [theirs.name]


def _rss_kib(seg_name: str) -> int:
    """Resident KiB of this process's mapping of the segment (from /proc/self/smaps)."""
    rss, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            if "-" in line.split(" ", 1)[0]:                 # a mapping header line
                inside = line.rstrip().endswith("/dev/shm" + seg_name)
            elif inside and line.startswith("Rss:"):
                rss += int(line.split()[1])
    return rss


def test_prefault_makes_the_pages_resident_in_this_process(instance):
    seg = Segment.create(instance, "pages", 64 * 4096)
    try:
        assert _rss_kib(seg.name) == 0                      # sparse until first touch
        seg.prefault(8 * 4096, 16 * 4096)
        assert _rss_kib(seg.name) == 16 * 4
        seg.prefault()
        assert _rss_kib(seg.name) == 64 * 4
    finally:
        assert seg.close()
        seg.unlink()


def test_a_reserved_segment_owns_its_pages_and_one_that_cannot_fit_is_refused(instance):
    """reserve=True allocates every page at creation (tmpfs blocks, no process touched them),
    so no later write can fault for want of memory; a reservation larger than /dev/shm fails
    with SegmentError and leaves no segment behind. check_room refuses the same up front."""
    from shm.segment import check_room, memory_room
    seg = Segment.create(instance, "reserved", 64 * 4096, reserve=True)
    sparse = Segment.create(instance, "sparse", 64 * 4096)
    try:
        assert os.stat("/dev/shm" + seg.name).st_blocks * 512 >= 64 * 4096
        assert os.stat("/dev/shm" + sparse.name).st_blocks == 0
    finally:
        for s in (seg, sparse):
            assert s.close()
            s.unlink()
    shm_free, avail = memory_room()
    assert shm_free > 0 and avail > 0
    with pytest.raises(SegmentError, match="cannot reserve"):
        Segment.create(instance, "huge", shm_free + (1 << 30), reserve=True)
    assert not [n for _, n, _ in list_names(instance)]
    with pytest.raises(SegmentError, match=r"shared memory \(tables .* MiB\), /dev/shm has .* free"):
        check_room({"tables": shm_free + (1 << 30)}, {})
    with pytest.raises(SegmentError, match=r"process memory \(copies .* MiB\).*MemAvailable"):
        check_room({"tables": 1 << 20}, {"copies": avail + (1 << 30)})
    check_room({"tables": 1 << 20}, {"copies": 1 << 20})
