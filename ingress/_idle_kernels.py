"""The router's idle wait compiled (ingress.idlewait): spin, then sleep in epoll, one call.

Called when a turn of the router's loop found nothing to read or drain. ``wait`` first polls
every response ring and the ROUTER socket's ZMQ_EVENTS until ``spin_end_ns``, yielding the
CPU every round (sched_yield: a runnable process on this CPU goes first), then raises each
response ring's sleeping flag (full fence, re-check: shm._ring_kernels._prepare_sleep),
checks ZMQ_EVENTS once more (ZMQ_FD is edge-triggered: only an empty queue may be slept on)
and sleeps in the router's epoll until ``sleep_until_ns`` (at most MAX_SLEEP_MS), lowers the
flags and resets the responses' eventfd. The same steps as the Python loop took, with no
Python per spin round: a round here costs a yield and a few loads, where the Python one
cost several microseconds of interpreter per round and per sleep (docs/BENCH.md).

Compiled with ``nogil``: another thread of the ingress (ingress.partmap) runs while this
one sleeps. libc's epoll_wait, sched_yield and read are called by name (registered with
LLVM here, as ingress.zmqc does for libzmq), so the kernel is ``cache=True``. The epoll
object is the router's ``select.epoll``: it registered each fd with its number as data.
Linux x86-64 only (the packed 12-byte ``struct epoll_event``), like the rest of the engine.
"""
from __future__ import annotations

import ctypes

import llvmlite.binding as ll
import numpy as np
from numba import carray, njit, types

from ingress import zmqc
from ingress._loop_kernels import R_SLOT, _voidptr, request_ring
from shm import _ring_kernels as RK

WORK, CONNS = 1, 2                    # wait's result bits: something to read or drain; the
                                      # connection monitor's fd was readable
MAX_EVENTS = 4                        # the router's epoll holds 3 fds
EVENT_BYTES = 12                      # sizeof(struct epoll_event), packed on x86-64
EVENT_DATA = 4                        # its epoll_data_t
MAX_SLEEP_MS = 100                    # as the Python loop's min(0.1 s, ...)
# scratch words: ZMQ_EVENTS value and size, the clock, the eventfd counter, then the epoll
# events
S_EVENTS, S_SIZE, S_CLOCK, S_EFD, S_EPOLL = 0, 1, 2, 4, 5
SCRATCH_WORDS = S_EPOLL + (MAX_EVENTS * EVENT_BYTES + 7) // 8
RING_WORDS = R_SLOT + 1                # a row of ingress._loop_kernels.pack_rings

_LIBC = ctypes.CDLL(None)
for _name in ("epoll_wait", "sched_yield", "read"):
    ll.add_symbol(_name, ctypes.cast(getattr(_LIBC, _name), ctypes.c_void_p).value)
_epoll_wait = types.ExternalFunction("epoll_wait", types.int32(types.int32, types.uint64,
                                                               types.int32, types.int32))
_sched_yield = types.ExternalFunction("sched_yield", types.int32())
_read = types.ExternalFunction("read", types.int64(types.int32, types.uint64, types.uint64))


def new_scratch() -> np.ndarray:
    """``wait``'s scratch words, allocated once."""
    return np.zeros(SCRATCH_WORDS, np.int64)


@njit(cache=True, nogil=True, inline="always")
def _pollin(h, scratch):
    """Does the socket have a message to read (ZMQ_EVENTS & POLLIN)? A failing call counts
    as yes: the loop's next read raises its error."""
    scratch[S_EVENTS] = 0
    scratch[S_SIZE] = 4                               # sizeof(int)
    base = scratch.ctypes.data
    if zmqc.zmq_getsockopt(h, zmqc.EVENTS, base + np.uint64(8 * S_EVENTS),
                           base + np.uint64(8 * S_SIZE)) != 0:
        return True
    return (scratch[S_EVENTS] & zmqc.POLLIN) != 0


@njit(cache=True, nogil=True)
def _responses(resp):
    """Has any response ring readable slots?"""
    for w in range(resp.shape[0]):
        hdr, _ = request_ring(resp, w)
        if RK._available(hdr) > 0:
            return True
    return False


@njit(cache=True, nogil=True)
def wait(h, resp_addr, n_rings, scratch_addr, epfd, efd, conns_fd, spin_end_ns, sleep_until_ns,
         accepting):
    """Spin until ``spin_end_ns`` (0: not at all), then sleep until ``sleep_until_ns`` (module
    doc). ``resp_addr``: the address of the response rings' table (``n_rings`` rows of
    ingress._loop_kernels.pack_rings), ``scratch_addr`` that of new_scratch()'s words (both
    alive while the router runs: arrays passed from Python are unboxed at every call);
    ``accepting``: look at the socket too. Returns WORK when the spin saw something (no
    sleep taken), else CONNS when ``conns_fd`` was readable, else 0."""
    resp = carray(_voidptr(resp_addr), (n_rings, RING_WORDS), np.int64)
    scratch = carray(_voidptr(scratch_addr), (SCRATCH_WORDS,), np.int64)
    ts = scratch[S_CLOCK:S_CLOCK + 2]
    events = scratch[S_EPOLL:].view(np.uint8)
    while spin_end_ns:
        if _responses(resp) or (accepting and _pollin(h, scratch)):
            return WORK
        if zmqc.monotonic_ns(ts) >= spin_end_ns:
            break
        _sched_yield()
    left = sleep_until_ns - zmqc.monotonic_ns(ts)         # up to ~2**63: no deadline
    timeout_ms = 0                                          # passed: no sleep
    if left >= MAX_SLEEP_MS * 1_000_000:
        timeout_ms = MAX_SLEEP_MS
    elif left > 0:
        timeout_ms = (left + 999_999) // 1_000_000          # rounded up, as select.epoll does
    raised = 0
    for w in range(resp.shape[0]):
        hdr, _ = request_ring(resp, w)
        if not RK._prepare_sleep(hdr):                # a response arrived: no sleep
            timeout_ms = 0
            break
        raised += 1
    out = 0
    if timeout_ms and not (accepting and _pollin(h, scratch)):
        n = _epoll_wait(epfd, events.ctypes.data, MAX_EVENTS, timeout_ms)   # -1: a signal
        for k in range(n):
            o = k * EVENT_BYTES + EVENT_DATA
            fd = np.int32(events[o]) | (np.int32(events[o + 1]) << 8) | \
                (np.int32(events[o + 2]) << 16) | (np.int32(events[o + 3]) << 24)
            if fd == conns_fd:
                out |= CONNS
    for w in range(raised):
        hdr, _ = request_ring(resp, w)
        RK._end_sleep(hdr)
    _read(efd, scratch.ctypes.data + np.uint64(8 * S_EFD), 8)    # reset (EAGAIN: not rung)
    return out
