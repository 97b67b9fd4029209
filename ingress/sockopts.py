"""ZMQ_EVENTS and ZMQ_RCVMORE of one socket, read from libzmq directly; ``send`` without pyzmq's
Python-level wrapper.

pyzmq 27's ``Socket.get`` turns every option number into a ``SocketOption`` enum before the
call. The ingress reads ZMQ_RCVMORE once per frame of every request and ZMQ_EVENTS before
every sleep (a profile under 100 clients put 5% of the ingress's samples in that enum
conversion, when it still read ZMQ_EVENTS per request too). This
calls ``zmq_getsockopt`` of the same libzmq that pyzmq loaded (found through pyzmq's
extension module) with ctypes (``python -m bench.sockopts`` compares both; docs/BENCH.md).

``backend_send(sock)``: pyzmq's ``Socket.send`` is a Python method that handles the DRAFT
``routing_id`` and ``group`` arguments, then calls the compiled backend's ``send``; the ingress
sends three frames per reply (identity, delimiter, body) and uses neither, so it calls the
backend's directly, at about half the cost per frame (``python -m bench.sockopts``).

Falls back to ``Socket.get`` if libzmq's symbol cannot be found, and on any error return
(so errors still raise pyzmq's ZMQError). Never call after the socket is closed: the handle
is then freed.
"""
from __future__ import annotations

import ctypes

import zmq

from shm.runtime.endpoints import parse_zmq_bind

_EVENTS, _RCVMORE = int(zmq.EVENTS), int(zmq.RCVMORE)


def _getsockopt():
    try:
        from zmq.backend.cython import _zmq   # optional: pyzmq's cffi backend has none
        f = ctypes.CDLL(_zmq.__file__).zmq_getsockopt      # dlsym searches its libzmq too
    except (ImportError, OSError, AttributeError):
        return None
    f.restype = ctypes.c_int
    # no argtypes: their per-call conversion cost as much as pyzmq's enum; every argument is
    # passed as a ctypes object of the right C type instead (the option as a c_int)
    return f


_ZMQ_GETSOCKOPT = _getsockopt()


def backend_send(sock: zmq.Socket):
    """``sock.send`` of pyzmq's compiled backend (same arguments: data, flags, copy, track),
    or ``sock.send`` itself where the backend class is not there."""
    base = getattr(getattr(zmq, "backend", None), "Socket", None)
    if base is None or not isinstance(sock, base):
        return sock.send
    return base.send.__get__(sock)


class SockOpts:
    """``events()`` and ``rcvmore()`` of ``sock``; valid while the socket is open. Both are
    closures over prebuilt ctypes arguments: one foreign call each, no conversion."""

    def __init__(self, sock: zmq.Socket):
        self.sock = sock
        f = _ZMQ_GETSOCKOPT
        self.direct = f is not None           # False: pyzmq's Socket.get
        if not self.direct:
            self.events = lambda: sock.get(_EVENTS)
            self.rcvmore = lambda: sock.get(_RCVMORE)
            return
        h = ctypes.c_void_p(sock.underlying)
        val = ctypes.c_int(0)
        size = ctypes.c_size_t(ctypes.sizeof(ctypes.c_int))
        pv, ps = ctypes.byref(val), ctypes.byref(size)
        ev_opt, more_opt = ctypes.c_int(_EVENTS), ctypes.c_int(_RCVMORE)

        def events() -> int:
            if f(h, ev_opt, pv, ps):
                return sock.get(_EVENTS)      # an error: pyzmq raises it
            return val.value

        def rcvmore() -> int:
            if f(h, more_opt, pv, ps):
                return sock.get(_RCVMORE)
            return val.value

        self.events, self.rcvmore = events, rcvmore


def is_ipv6_bind(bind: str) -> bool:
    """Does ``bind`` name an IPv6 address (bracketed, or a name resolving only to IPv6)?"""
    ep = parse_zmq_bind(bind, "ingress.bind")
    return ep.transport == "tcp" and bool(ep.addresses) and all(":" in a for a in ep.addresses)
