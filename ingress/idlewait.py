"""What the router's loop does when a turn found nothing: spin a while, then sleep in epoll.

Nothing is ready: poll the response rings and the socket until ``spin_end_ns``
(``ingress.spin_us`` after the last work, while spinning pays: shm.idle.SpinPayoff; 0: no
spin) before sleeping in the router's epoll (the ROUTER socket's ZMQ_FD, the responses'
eventfd, the connection monitor) until ``sleep_until_ns``, the next deadline, at most 100 ms.
A decision takes tens of microseconds and a client's next request often follows within a
few hundred; sleeping and being woken by the worker's eventfd or by libzmq costs a CPU
wake-up on top (about 100 us each, measured here with one client). Every spin round yields
the CPU, so a runnable process on this CPU is not delayed. Before sleeping each response
ring's sleeping flag is raised (the worker then rings the eventfd) and ZMQ_EVENTS is read
(ZMQ_FD is edge-triggered: only an empty queue may be slept on).

``wait`` returns WORK when the spin saw something (no sleep taken), CONNS when the connection
monitor's fd was readable, else 0. Two implementations of the same steps: ``CompiledIdle``
(``ingress.compiled_loop: true``, one compiled call: ingress._idle_kernels) and
``PythonIdle``.
"""
from __future__ import annotations

import os
import time

import numba
import numpy as np
import zmq

from ingress import _idle_kernels as IK
from ingress import zmqc
from ingress._idle_kernels import CONNS, MAX_SLEEP_MS, WORK
from shm.ring import bind_entry

_POLLIN = int(zmq.POLLIN)             # a plain int: the enum form costs 2.5 us per call


class CompiledIdle:
    """``wait`` in one compiled call (ingress._idle_kernels.wait). Built with the compiled
    loop (binding the kernel: compiled or loaded from the cache before the ingress is
    ready) for its response rings ``resp`` (ingress._loop_kernels.pack_rings, headers set);
    ``attach`` gives it the socket and the fds once the router has them."""

    def __init__(self, resp: np.ndarray):
        if resp.dtype != np.int64 or resp.ndim != 2 or resp.shape[1] != IK.RING_WORDS \
                or not resp.flags.c_contiguous:
            raise RuntimeError(f"idle wait: resp dtype={resp.dtype} shape={resp.shape}: expected "
                               f"C-contiguous int64 (rings, {IK.RING_WORDS}) (pack_rings)")
        self.resp = resp                         # both kept alive: the kernel reads them by
        self.scratch = IK.new_scratch()          # address (no array unboxed per call)
        i64 = numba.types.int64
        self._wait = bind_entry(IK.wait, (i64,) * 9 + (numba.types.boolean,))

    def attach(self, sock: zmq.Socket, ep, efd, conns_fd: int) -> "CompiledIdle":
        """Wait on ``sock`` (the ROUTER socket), in ``ep`` (the router's select.epoll), and
        reset ``efd`` (the responses' EventfdDoorbell); ``conns_fd``: CONNS's fd. Binds
        ``wait`` with every argument but the three that change."""
        k, handle, scratch = self._wait, zmqc.handle, self.scratch.ctypes.data
        addr, n, epfd, efd_no = self.resp.ctypes.data, self.resp.shape[0], ep.fileno(), efd.fileno()

        def wait(spin_end_ns: int, sleep_until_ns: int, accepting: bool) -> int:
            return k(handle(sock), addr, n, scratch, epfd, efd_no, conns_fd, spin_end_ns,
                     sleep_until_ns, accepting)
        self.wait = wait
        return self

    def wait(self, spin_end_ns: int, sleep_until_ns: int, accepting: bool) -> int:
        raise RuntimeError("CompiledIdle.wait before attach(): no socket to wait on")


class PythonIdle:
    """``wait`` in Python (the loop of ``ingress.compiled_loop: false``): ``rings``, the
    response rings (shm.ring.OneToOneRing); ``opts``, the socket's ingress.sockopts.SockOpts;
    the rest as CompiledIdle.attach's."""

    def __init__(self, rings, opts, ep, efd, conns_fd: int):
        self.rings, self.opts, self.ep, self.efd, self.conns_fd = rings, opts, ep, efd, conns_fd

    def wait(self, spin_end_ns: int, sleep_until_ns: int, accepting: bool) -> int:
        if spin_end_ns and self._spin(spin_end_ns, accepting):
            return WORK
        timeout_s = max(0.0, min(MAX_SLEEP_MS / 1e3, (sleep_until_ns - time.monotonic_ns()) / 1e9))
        if not all(r.prepare_sleep() for r in self.rings):
            timeout_s = 0.0                    # a response arrived before we slept
        out = 0
        if timeout_s and not (accepting and self.opts.events() & _POLLIN):
            for fd, _ in self.ep.poll(timeout_s):
                if fd == self.conns_fd:        # a connection came or went
                    out |= CONNS
        for r in self.rings:
            r.end_sleep()
        self.efd.drain()
        return out

    def _spin(self, end_ns: int, accepting: bool) -> bool:
        events = self.opts.events
        while time.monotonic_ns() < end_ns:
            for r in self.rings:
                if r.available():
                    return True
            if accepting and events() & _POLLIN:
                return True
            os.sched_yield()                   # a runnable process on this CPU goes first
        return False
