"""Drop the rest of a multipart message without handing its frames to Python.

libzmq caps the size of a frame (ZMQ_MAXMSGSIZE), not the number of frames in a message: 2 MB
of empty frames is a million frames. Received one by one through pyzmq (one bytes object and
one RCVMORE call each) such a message held the ingress about 1.8 s and grew its memory. The
router keeps at most the 4 frames a request can have and calls ``FrameDiscarder`` for the
rest: one compiled loop of ``zmq_getsockopt(RCVMORE)`` + ``zmq_recv(len 0)`` (libzmq then
copies nothing), about 0.06-0.1 s per million frames here against 1.6-1.8 s.

The loop calls the libzmq that pyzmq loaded through ctypes function pointers, which Numba
cannot cache (it embeds their addresses): it is compiled when the router starts (about 0.3 s).
Pointers are passed as 64-bit integers (x86-64: the same registers as ``void *``).
"""
from __future__ import annotations

import ctypes

import numba
import numpy as np
import zmq

_RCVMORE = int(zmq.RCVMORE)


def _libzmq():
    try:
        from zmq.backend.cython import _zmq   # optional: pyzmq's cffi backend has none
        lib = ctypes.CDLL(_zmq.__file__)                  # dlsym searches its libzmq too
        recv, get = lib.zmq_recv, lib.zmq_getsockopt
    except (ImportError, OSError, AttributeError):
        return None
    u64 = ctypes.c_uint64
    recv.restype, recv.argtypes = ctypes.c_int, (u64, u64, ctypes.c_size_t, ctypes.c_int)
    get.restype, get.argtypes = ctypes.c_int, (u64, ctypes.c_int, u64, u64)
    return recv, get


_LIB = _libzmq()


def _make_kernel(zmq_recv, zmq_getsockopt):
    @numba.njit(nogil=True)
    def _discard_rest(handle, cell):
        """Receive and drop frames while RCVMORE is set; returns how many, or -1 - n when a
        libzmq call failed after n (the caller finishes in Python)."""
        p = cell.ctypes.data
        n = 0
        while True:
            cell[0] = 0
            cell[1] = 4                                   # size_t in/out: sizeof(int)
            if zmq_getsockopt(handle, _RCVMORE, p, p + 8) != 0:
                return -1 - n
            if cell[0] & 0xFFFFFFFF == 0:
                return n
            if zmq_recv(handle, 0, 0, 0) < 0:             # NULL buffer, length 0: allowed
                return -1 - n
            n += 1
    return _discard_rest


class FrameDiscarder:
    """``discard()`` drops the frames of ``sock``'s current message still unread and returns
    how many; valid while the socket is open."""

    def __init__(self, sock: zmq.Socket):
        self.sock = sock
        self.cell = np.zeros(2, np.int64)
        self.handle = sock.underlying
        self.kernel = None
        if _LIB is not None:
            k = _make_kernel(*_LIB)
            k.compile((numba.types.uint64, numba.typeof(self.cell)))
            self.kernel = k

    def discard(self) -> int:
        n = 0
        if self.kernel is not None:
            n = self.kernel(self.handle, self.cell)
            if n >= 0:
                return n
            n = -1 - n
        sock = self.sock                                  # fallback, or after an EINTR
        while sock.get(zmq.RCVMORE):
            sock.recv(copy=False)
            n += 1
        return n
