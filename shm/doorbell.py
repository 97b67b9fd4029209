"""Doorbells: how a producer wakes a consumer that went to sleep on an empty ring.

A doorbell only carries "look again": the data and positions travel through the ring. The
producer rings only when the ring's CONSUMER_SLEEPING flag was set (see shm.ring), so an
awake consumer costs no system call. A ring may be lost in a race or wake a consumer that
finds nothing: consumers always re-check the ring and always sleep with a timeout.

Interface (duck-typed): ``ring()`` on the producer side; ``wait(timeout_ms) -> bool`` (True if
rung, False on timeout) and ``close()`` on the consumer side.
"""
from __future__ import annotations

import os
import select

import posix_ipc

from shm.names import SegmentError, segment_name
from shm.segment import unlink_semaphore


class SemaphoreDoorbell:
    """A posix_ipc named semaphore. Use for a worker that has nothing else to wait on.

    Named like a segment (``/risk-engine.<instance>.<pid>.<name>``, shown as
    ``/dev/shm/sem.risk-engine...``), so ``reclaim_stale`` removes it after a crash.
    """

    def __init__(self, sem: posix_ipc.Semaphore):
        self._sem = sem
        self.name = sem.name

    @classmethod
    def create(cls, instance: str, name: str, owner_pid: int | None = None) -> "SemaphoreDoorbell":
        full = segment_name(instance, name, owner_pid)
        try:
            return cls(posix_ipc.Semaphore(full, posix_ipc.O_CREX, mode=0o600, initial_value=0))
        except posix_ipc.ExistentialError:
            raise SegmentError(f"name={full!r}: semaphore already exists") from None

    @classmethod
    def open(cls, full_name: str) -> "SemaphoreDoorbell":
        try:
            return cls(posix_ipc.Semaphore(full_name))
        except posix_ipc.ExistentialError:
            raise SegmentError(f"name={full_name!r}: no such semaphore") from None

    def ring(self) -> None:
        self._sem.release()

    def wait(self, timeout_ms: float) -> bool:
        """Sleep until rung or ``timeout_ms`` passed (GIL released). True if rung."""
        try:
            self._sem.acquire(max(timeout_ms, 0.0) / 1000.0)
            return True
        except posix_ipc.BusyError:
            return False

    def close(self) -> None:
        if self._sem is not None:
            self._sem.close()
            self._sem = None

    def unlink(self) -> None:
        unlink_semaphore(self.name)


class EventfdDoorbell:
    """An eventfd (os.eventfd). Use where the consumer already waits in a poller.

    The ingress registers ``fileno()`` in the same ``zmq.Poller`` as its ROUTER socket;
    several response rings may share one eventfd. After the poller reports it readable, call
    ``drain()`` (reads and resets the counter), then drain every ring that shares it.

    The supervisor creates the fd (``EventfdDoorbell.create()``) and hands it to children with
    ``subprocess.Popen(..., pass_fds=[fd])``; a child wraps the inherited number with
    ``EventfdDoorbell(fd)``. The fd is set non-blocking (a flag of the shared open file).
    """

    def __init__(self, fd: int):
        if not isinstance(fd, int) or fd < 0:
            raise SegmentError(f"fd={fd!r}: must be an open eventfd number")
        try:
            os.set_blocking(fd, False)
        except OSError as e:
            raise SegmentError(f"fd={fd}: not usable as an eventfd ({e.strerror})") from None
        self.fd = fd

    @classmethod
    def create(cls) -> "EventfdDoorbell":
        return cls(os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC))

    def fileno(self) -> int:
        return self.fd

    def ring(self) -> None:
        os.eventfd_write(self.fd, 1)

    def drain(self) -> int:
        """Read and reset the counter; returns how many rings were pending (0 if none)."""
        try:
            return os.eventfd_read(self.fd)
        except BlockingIOError:
            return 0

    def wait(self, timeout_ms: float) -> bool:
        """Sleep until rung or ``timeout_ms`` passed, then drain. True if rung."""
        p = select.poll()
        p.register(self.fd, select.POLLIN)
        p.poll(max(int(timeout_ms + 0.999), 0))
        return self.drain() > 0

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
