"""The router's idle wait (ingress.idlewait), compiled and in Python, on a real ROUTER socket,
a real response ring in shared memory, its eventfd and the router's kind of epoll: what
ends a spin, that a sleep raises the ring's sleeping flag (so the worker's publish rings the
eventfd) and lowers it after, that the eventfd is reset, and that the connection fd is told
apart. Both implementations must give the same answers."""
from __future__ import annotations

import os
import select
import threading
import time
import uuid

import numpy as np
import pytest
import zmq

from ingress import _loop_kernels as LK
from ingress.idlewait import CONNS, WORK, CompiledIdle, PythonIdle
from ingress.sockopts import SockOpts
from shm.doorbell import EventfdDoorbell
from shm.ring import OneToOneRing
from shm.segment import list_names, reclaim_stale, unlink_owned

SLOT = np.dtype({"names": ["seq"], "formats": ["<u8"], "offsets": [0], "itemsize": 64})
FAR_NS = 60_000_000_000               # a deadline never reached within a test's bounds


class Setup:
    """What the router holds: ROUTER socket (a DEALER talks to it), one response ring with
    the eventfd doorbell, a connection fd, one epoll over the three."""

    def __init__(self, compiled: bool):
        self.instance = "t" + uuid.uuid4().hex[:12]
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.bind("inproc://idlewait")
        self.peer = self.ctx.socket(zmq.DEALER)
        self.peer.connect("inproc://idlewait")
        self.efd = EventfdDoorbell.create()
        self.conns = EventfdDoorbell.create()          # stands in for the connection monitor
        self.ring = OneToOneRing.create("resp", 8, SLOT, instance=self.instance,
                                        owner_pid=os.getpid(), doorbell=self.efd)
        self.ep = select.epoll()
        for fd in (self.sock.getsockopt(zmq.FD), self.efd.fileno(), self.conns.fileno()):
            self.ep.register(fd, select.EPOLLIN)
        if compiled:
            u8 = self.ring.slots.view(np.uint8).reshape(8, 64)
            resp = LK.pack_rings([self.ring.header], [u8])
            self.idle = CompiledIdle(resp).attach(self.sock, self.ep, self.efd, self.conns.fileno())
        else:
            self.idle = PythonIdle([self.ring], SockOpts(self.sock), self.ep, self.efd,
                                   self.conns.fileno())

    def wait(self, spin_ns: int, sleep_ns: int, accepting: bool = True) -> int:
        now = time.monotonic_ns()
        return self.idle.wait(now + spin_ns if spin_ns else 0, now + sleep_ns, accepting)

    def close(self):
        self.ep.close()
        self.peer.close(0)
        self.sock.close(0)
        self.ctx.term()
        self.ring.doorbell = None
        self.ring.unlink()
        self.ring.close()
        self.efd.close()
        self.conns.close()
        unlink_owned(self.instance, os.getpid())
        reclaim_stale(self.instance)
        assert list_names(self.instance) == []


@pytest.fixture(params=["compiled", "python"])
def s(request):
    st = Setup(request.param == "compiled")
    yield st
    st.close()


def test_a_published_response_ends_the_spin_before_any_sleep(s):
    assert s.ring.try_publish(np.zeros(1, SLOT))
    assert s.wait(FAR_NS, FAR_NS) == WORK
    assert s.ring.stats()["sleep_count"] == 0             # the flag was never raised


def test_a_queued_message_ends_the_spin_while_accepting(s):
    s.peer.send(b"request")
    assert s.wait(FAR_NS, FAR_NS) == WORK
    assert s.sock.recv_multipart(zmq.NOBLOCK)[1] == b"request"    # still there to read
    s.peer.send(b"request")
    # not accepting: the socket is not looked at; a short spin, then a sleep to a deadline
    # that has passed by then: nothing else to report
    assert s.wait(1_000, 1_000, accepting=False) == 0


def test_a_deadline_passed_means_no_sleep_and_the_flag_lowered(s):
    assert s.wait(0, -1) == 0
    st = s.ring.stats()
    assert st["consumer_sleeping"] == 0 and st["sleep_count"] == 1   # raised, lowered


def test_a_sleep_raises_the_flag_so_a_publish_rings_the_eventfd_and_it_is_reset(s):
    """The worker's side of the handshake: while the router sleeps, the ring's flag is up,
    so a publish rings the eventfd, which ends the sleep; after it the flag is down and the
    eventfd reset. The waiter sleeps in turns (each at most 100 ms) until the response is
    there; the test publishes once it has seen the flag raised (bounded)."""
    results = []

    def waiter():
        for _ in range(600):
            results.append(s.wait(0, FAR_NS))
            if s.ring.available():
                return

    t = threading.Thread(target=waiter)
    t.start()
    end = time.monotonic() + 60
    while s.ring.stats()["consumer_sleeping"] != 1:     # needs the GIL released meanwhile
        assert time.monotonic() < end, "the idle wait never raised the sleeping flag"
        time.sleep(0.001)
    assert s.ring.try_publish(np.zeros(1, SLOT))
    t.join(60)
    assert not t.is_alive() and s.ring.available() == 1
    st = s.ring.stats()
    assert st["doorbell_count"] == 1 and st["consumer_sleeping"] == 0
    assert s.efd.drain() == 0                          # reset by the wait
    assert set(results) == {0}


def test_no_deadline_at_all_still_sleeps_at_most_max_sleep(s):
    """The router passes the fast path's NO_DEADLINE (2**63 - 1) when nothing is in flight:
    the sleep is capped (its loop looks at the stop flag and its timers), never endless.
    The test allows 60 s for what takes MAX_SLEEP_MS."""
    done = []
    t = threading.Thread(target=lambda: done.append(s.idle.wait(0, (1 << 63) - 1, True)),
                         daemon=True)                   # an endless wait must not hang pytest
    t.start()
    t.join(60)
    assert done == [0]


def test_a_readable_connection_fd_is_reported(s):
    s.conns.ring()
    s.efd.ring()
    assert s.wait(0, FAR_NS) == CONNS
    assert s.efd.drain() == 0                          # the responses' eventfd reset
    assert s.conns.drain() == 1                        # the router's to read


def test_a_table_the_kernel_would_misread_is_refused_and_a_wait_needs_a_socket():
    for bad in (np.zeros((1, LK.R_SLOT), np.int64), np.zeros((1, LK.R_SLOT + 1), np.int32),
                np.zeros((2, 2 * (LK.R_SLOT + 1)), np.int64)[:, ::2]):
        with pytest.raises(RuntimeError, match="idle wait: resp"):
            CompiledIdle(bad)
    with pytest.raises(RuntimeError, match="before attach"):
        CompiledIdle(np.zeros((1, LK.R_SLOT + 1), np.int64)).wait(0, 0, True)
