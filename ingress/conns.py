"""The front door's connections: counted, capped, and closed when they must go.

A ROUTER socket accepts every connection libzmq can: 20,600 idle ones exhausted the ingress's
file descriptors, after which libzmq could not accept and a new client got no reply. libzmq
cannot refuse a connection (ZMQ_MAXSOCKETS bounds sockets of a context, not connections), so
the ingress watches its ROUTER through a socket monitor (EVENT_ACCEPTED / EVENT_DISCONNECTED
carry the connection's file descriptor) and, over ``ingress.max_connections``, closes the
idlest connections (TCP_INFO ``tcpi_last_data_recv``; oldest first where that is missing,
ipc://) down to the cap less a reserve, so there is room for new clients and an attacker
must open that many more before the next scan. Closing is ``shutdown(2)`` on libzmq's
descriptor: libzmq reads EOF and tears the connection down itself (it owns the close).

A connection is also closed when its peer sent a message of far more frames than any request
has (ingress.router.CLOSE_OVER_FRAMES; after its BAD_FRAME reply had ``CLOSE_DELAY_NS`` to leave): what it queued behind that
message is dropped with it, unread.

Nothing here runs per message: ``service(now)`` is called every ``SERVICE_EVERY_NS`` and
whenever the ingress wakes from a sleep.
"""
from __future__ import annotations

import os
import resource
import socket
import struct
import sys

import zmq

FD_RESERVE = 64                  # descriptors the ingress keeps for itself (libzmq, epoll, ...)
SERVICE_EVERY_NS = 10_000_000    # how often the monitor is read while the loop is busy
CLOSE_DELAY_NS = 50_000_000      # a BAD_FRAME reply's time to leave before its connection goes
_TCP_INFO_LAST_DATA_RECV = 52    # byte offset of tcpi_last_data_recv (u32, ms) in struct tcp_info
_TCP_INFO_LEN = 104
_EVENT = struct.Struct("=Hi")
_ACCEPTED, _DISCONNECTED = int(zmq.EVENT_ACCEPTED), int(zmq.EVENT_DISCONNECTED)
_OVER_CAP, _BAD_FRAMES = 0, 1     # cells of c_closed: shm.control.CONN_CLOSE_REASONS


def raise_nofile_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def effective_cap(max_connections: int, nofile: int) -> int:
    """``max_connections``, lowered so the cap plus FD_RESERVE fits in ``nofile`` descriptors."""
    return max(1, min(max_connections, nofile - FD_RESERVE))


class Connections:
    """Counts the ROUTER's connections (``current``), enforces the cap, closes on request.
    ``c_current`` (1 cell) and ``c_closed`` (one cell per shm.control.CONN_CLOSE_REASONS)
    are cells of the control block."""

    def __init__(self, sock: zmq.Socket, cap: int, c_current, c_closed):
        self.cap = cap
        self.reserve = max(1, cap // 16)          # closed beyond the cap in one scan
        self.c_current, self.c_closed = c_current, c_closed
        self.mon = sock.get_monitor_socket(_ACCEPTED | _DISCONNECTED)
        self.mon.setsockopt(zmq.LINGER, 0)
        self.sock = sock
        self.open: dict[int, int] = {}            # fd -> accept time (ns); insertion = accept order
        self.to_close: list[tuple[int, int, int]] = []   # (due ns, fd, accept time ns)
        ep = sock.getsockopt(zmq.LAST_ENDPOINT).decode()
        self.local = ep.rsplit(":", 1)[1] if ep.startswith("tcp://") else ep[len("ipc://"):]

    def fileno(self) -> int:
        return self.mon.getsockopt(zmq.FD)

    def service(self, now: int) -> None:
        """Read the monitor's events, close what is due, enforce the cap."""
        mon, open_ = self.mon, self.open
        while True:
            try:
                head, _ = mon.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            event, fd = _EVENT.unpack(head)
            if event == _ACCEPTED:
                open_[fd] = now
            elif event == _DISCONNECTED:
                open_.pop(fd, None)
        mon.getsockopt(zmq.EVENTS)                # re-arms the edge-triggered ZMQ_FD
        if self.to_close:
            due = [c for c in self.to_close if c[0] <= now]
            self.to_close = [c for c in self.to_close if c[0] > now]
            for _, fd, accepted in due:
                if open_.get(fd) == accepted and self._shutdown(fd):   # still that connection
                    self.c_closed[_BAD_FRAMES] += 1
        if len(open_) > self.cap:
            self._close_idlest(len(open_) - self.cap + self.reserve, now)
        self.c_current[0] = len(open_)

    def close_later(self, fd: int, now: int) -> bool:
        """Close connection ``fd`` (a message's ZMQ_SRCFD) after CLOSE_DELAY_NS. False if it
        is already to be closed (messages it queued before are still read: libzmq delivers
        them after the connection is gone)."""
        if fd not in self.open:
            self.service(now)                     # its EVENT_ACCEPTED may not be read yet
        accepted = self.open.get(fd)
        if any(c[1] == fd and c[2] == accepted for c in self.to_close):
            return False
        if accepted is not None and len(self.to_close) < self.cap:
            self.to_close.append((now + CLOSE_DELAY_NS, fd, accepted))
        return True

    def _close_idlest(self, n: int, now: int) -> None:
        idle = sorted(((self._idle_ms(fd, t, now), fd) for fd, t in self.open.items()), reverse=True)
        closed = 0
        for _, fd in idle[:n]:
            if self._shutdown(fd):
                closed += 1
            self.open.pop(fd, None)                # gone, or not ours any more
        self.c_closed[_OVER_CAP] += closed
        print(f"risk-engine: ingress: {len(idle)} connections over ingress.max_connections="
              f"{self.cap}: closed the {closed} idlest", file=sys.stderr, flush=True)

    @staticmethod
    def _idle_ms(fd: int, accepted: int, now: int) -> int:
        try:
            s = socket.socket(fileno=fd)
        except OSError:
            return 1 << 62                        # closed already: first to drop from the table
        try:
            info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
            return struct.unpack_from("<I", info, _TCP_INFO_LAST_DATA_RECV)[0]
        except OSError:                           # not TCP (ipc://): the oldest goes first
            return (now - accepted) // 1_000_000
        finally:
            s.detach()                            # libzmq owns the descriptor

    def _shutdown(self, fd: int) -> bool:
        """shutdown(2) connection ``fd`` if it is still a connection to our endpoint."""
        try:
            s = socket.socket(fileno=fd)
        except OSError:
            return False
        try:
            if s.type != socket.SOCK_STREAM or not self._local_matches(s.getsockname()):
                return False
            s.shutdown(socket.SHUT_RDWR)
            return True
        except OSError:
            return False
        finally:
            s.detach()

    def _local_matches(self, name) -> bool:
        if isinstance(name, tuple):
            return str(name[1]) == self.local
        if isinstance(name, bytes):
            name = os.fsdecode(name)
        return name == self.local

    def close(self) -> None:
        try:
            self.sock.disable_monitor()
        except zmq.ZMQError:
            pass
        self.mon.close(linger=0)
