"""libzmq for Numba-compiled code: the few C calls a compiled loop makes on a pyzmq socket.

pyzmq sets a socket up (options, CURVE, bind) and keeps its Python client; a compiled loop
then receives and sends on the same socket through the same libzmq, with no Python per
message. The libzmq is the one pyzmq loaded (its bundled ``pyzmq.libs/libzmq-<hash>.so.5``):
found through pyzmq's extension module (dlsym searches its dependencies), else by its path in
/proc/self/maps. Its functions are registered with LLVM by name and declared as Numba
external functions, so kernels calling them are ``cache=True`` like the others (a function
pointer captured in a closure would embed its address and never be cached).

Handles are ``sock.underlying`` (a ``void *`` as uint64; x86-64 passes both in the same
registers). A handle is valid only while its socket is open: Python code takes it through
``handle(sock)``, which refuses a closed socket, for every call into compiled code.

Compiled helpers return codes, never raise: ``recv_frame`` / ``send_frame`` give ``-errno``
(``-EAGAIN`` with DONTWAIT and nothing queued) on failure.
"""
from __future__ import annotations

import ctypes
import errno

import llvmlite.binding as ll
import numpy as np
import zmq
from numba import njit, types

DONTWAIT, SNDMORE, RCVMORE = int(zmq.DONTWAIT), int(zmq.SNDMORE), int(zmq.RCVMORE)
EAGAIN, EINTR = errno.EAGAIN, errno.EINTR
MSG_BYTES = 64                        # sizeof(zmq_msg_t) in libzmq 4.x
# new_msg()'s words after the zmq_msg_t: CAPTURE (1: recv_frame reads each message's
# Peer-Address, block_source rules are active: ingress.autoblock), PEER (its IPv4, host order,
# 0 when none or not captured), the property name, then 64 bytes of scratch for the address
CAPTURE, PEER, PROP, SCRATCH = MSG_BYTES // 8, MSG_BYTES // 8 + 1, MSG_BYTES // 8 + 2, MSG_BYTES // 8 + 4
MSG_WORDS = SCRATCH + 8
CLOCK_MONOTONIC = 1                   # Linux

_u64, _i32, _i64 = types.uint64, types.int32, types.int64
_SIGNATURES = {                       # C prototypes, pointers as uint64
    "zmq_msg_init": _i32(_u64),
    "zmq_msg_recv": _i32(_u64, _u64, _i32),
    "zmq_msg_send": _i32(_u64, _u64, _i32),
    "zmq_msg_data": _u64(_u64),
    "zmq_msg_size": _u64(_u64),
    "zmq_msg_more": _i32(_u64),
    "zmq_msg_close": _i32(_u64),
    "zmq_send": _i32(_u64, _u64, _u64, _i32),
    "zmq_recv": _i32(_u64, _u64, _u64, _i32),
    "zmq_errno": _i32(),
    "zmq_msg_gets": _u64(_u64, _u64),
}


def _maps_path() -> str | None:
    """The path of the libzmq mapped into this process (pyzmq imported), if any."""
    with open("/proc/self/maps") as f:
        for line in f:
            path = line.rstrip("\n").split(None, 5)[-1]
            if "/libzmq" in path and ".so" in path:
                return path
    return None


def _load() -> ctypes.CDLL:
    """pyzmq's own libzmq (never a system one, whose sockets would be other objects)."""
    try:
        from zmq.backend.cython import _zmq   # optional: pyzmq's cffi backend has none
        lib = ctypes.CDLL(_zmq.__file__)
        lib.zmq_msg_recv                                  # noqa: B018 (dlsym: present?)
        return lib
    except (ImportError, OSError, AttributeError):
        pass
    path = _maps_path()
    if path is None:
        raise RuntimeError("libzmq not found: pyzmq's backend exports no zmq_msg_recv and "
                           "no libzmq is mapped in /proc/self/maps")
    return ctypes.CDLL(path)


LIB = _load()
for _name in _SIGNATURES:
    ll.add_symbol(_name, ctypes.cast(getattr(LIB, _name), ctypes.c_void_p).value)
_LIBC = ctypes.CDLL(None)
for _name in ("clock_gettime", "memcpy", "strnlen"):
    ll.add_symbol(_name, ctypes.cast(getattr(_LIBC, _name), ctypes.c_void_p).value)

zmq_msg_init = types.ExternalFunction("zmq_msg_init", _SIGNATURES["zmq_msg_init"])
zmq_msg_recv = types.ExternalFunction("zmq_msg_recv", _SIGNATURES["zmq_msg_recv"])
zmq_msg_send = types.ExternalFunction("zmq_msg_send", _SIGNATURES["zmq_msg_send"])
zmq_msg_data = types.ExternalFunction("zmq_msg_data", _SIGNATURES["zmq_msg_data"])
zmq_msg_size = types.ExternalFunction("zmq_msg_size", _SIGNATURES["zmq_msg_size"])
zmq_msg_more = types.ExternalFunction("zmq_msg_more", _SIGNATURES["zmq_msg_more"])
zmq_msg_close = types.ExternalFunction("zmq_msg_close", _SIGNATURES["zmq_msg_close"])
zmq_send = types.ExternalFunction("zmq_send", _SIGNATURES["zmq_send"])
zmq_recv = types.ExternalFunction("zmq_recv", _SIGNATURES["zmq_recv"])
zmq_errno = types.ExternalFunction("zmq_errno", _SIGNATURES["zmq_errno"])
zmq_msg_gets = types.ExternalFunction("zmq_msg_gets", _SIGNATURES["zmq_msg_gets"])
_strnlen = types.ExternalFunction("strnlen", _u64(_u64, _u64))
clock_gettime = types.ExternalFunction("clock_gettime", _i32(_i32, _u64))
_memcpy = types.ExternalFunction("memcpy", _u64(_u64, _u64, _u64))


def handle(sock: zmq.Socket) -> int:
    """``sock``'s libzmq handle for a compiled call; raises ZMQError(ENOTSOCK) once it is
    closed (libzmq frees the object: a stale handle would be a use after free)."""
    if sock.closed:
        raise zmq.ZMQError(zmq.ENOTSOCK, f"socket is closed: handle={sock.underlying:#x}")
    return sock.underlying


def new_msg() -> np.ndarray:
    """Storage for one zmq_msg_t (8-byte aligned) and the peer capture (CAPTURE, PEER),
    reused across calls."""
    m = np.zeros(MSG_WORDS, np.int64)
    m.view(np.uint8)[PROP * 8:PROP * 8 + 13] = np.frombuffer(b"Peer-Address\0", np.uint8)
    return m


@njit(cache=True)
def peer_ipv4(msg, m):
    """The IPv4 address (host order) in received message ``m``'s Peer-Address ("a.b.c.d",
    or "::ffff:a.b.c.d" on a dual-stack socket); 0 for anything else (IPv6, ipc://)."""
    p = zmq_msg_gets(m, msg.ctypes.data + np.uint64(PROP * 8))
    if p == 0:
        return 0
    n = np.int64(_strnlen(p, np.uint64(63)))
    b = msg.view(np.uint8)
    off = SCRATCH * 8
    copy_from(b, off, p, n)
    i = off
    if n > 7 and b[i] == 58 and b[i + 1] == 58 and b[i + 6] == 58:    # "::ffff:"
        i += 7
    addr, part, digits, dots = 0, 0, 0, 0
    while i < off + n:
        c = b[i]
        if c == 46:                                         # "."
            if digits == 0 or dots == 3:
                return 0
            addr, part, digits, dots = addr * 256 + part, 0, 0, dots + 1
        elif 48 <= c <= 57 and digits < 3:
            part, digits = part * 10 + (c - 48), digits + 1
            if part > 255:
                return 0
        else:
            return 0
        i += 1
    return addr * 256 + part if dots == 3 and digits else 0


@njit(cache=True)
def monotonic_ns(ts):
    """CLOCK_MONOTONIC in ns (the clock of time.monotonic_ns); ``ts``: two int64 cells."""
    clock_gettime(CLOCK_MONOTONIC, ts.ctypes.data)
    return ts[0] * 1_000_000_000 + ts[1]


@njit(cache=True, inline="always")
def copy_from(dst, off, src, n):
    """``n`` bytes from address ``src`` into ``dst[off:]`` (a uint8 array)."""
    _memcpy(dst.ctypes.data + np.uint64(off), src, np.uint64(n))


@njit(cache=True)
def recv_frame(h, msg, dst, off, flags):
    """Receive one frame of socket ``h`` into ``dst[off:]`` (copying what fits). Returns
    (size, more): the frame's full size (over ``len(dst) - off``: truncated) and whether more
    frames of its message follow, or (-errno, 0). ``msg``: new_msg() storage."""
    m = msg.ctypes.data
    zmq_msg_init(m)
    if zmq_msg_recv(m, h, flags) < 0:
        e = zmq_errno()
        zmq_msg_close(m)
        return -np.int64(e), 0
    size = np.int64(zmq_msg_size(m))
    more = zmq_msg_more(m)
    if more == 0 and msg.shape[0] == MSG_WORDS:      # the message's sender, when wanted
        msg[PEER] = peer_ipv4(msg, m) if msg[CAPTURE] else 0
    room = dst.shape[0] - off
    n = size if size < room else room
    if n > 0:
        src = zmq_msg_data(m)
        copy_from(dst, off, src, n)
    zmq_msg_close(m)
    return size, more


@njit(cache=True)
def send_frame(h, src, off, n, flags):
    """Send ``src[off:off + n]`` as one frame (libzmq copies it). Returns 0 or -errno."""
    if zmq_send(h, src.ctypes.data + np.uint64(off), np.uint64(n), flags) < 0:
        return -np.int64(zmq_errno())
    return 0
