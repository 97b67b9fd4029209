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
EVENTS, POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)
EAGAIN, EINTR = errno.EAGAIN, errno.EINTR
MSG_BYTES = 64                        # sizeof(zmq_msg_t) in libzmq 4.x
# new_msg()'s words after the zmq_msg_t: CAPTURE (1: recv_frame reads each message's
# Peer-Address from its last frame, block_source rules are active: ingress.autoblock; 2: from
# the frame received, ingress.autoblock.PeerRecv), PEER and PEER + 1 (its
# address as shm.ipv6.peer_key makes it, high and low 64 bits; 0, 0 when none or not captured),
# the property name, then 64 bytes of scratch for the address text
CAPTURE, PEER, PROP, SCRATCH = MSG_BYTES // 8, MSG_BYTES // 8 + 1, MSG_BYTES // 8 + 3, MSG_BYTES // 8 + 5
MSG_WORDS = SCRATCH + 8
MAPPED4 = 0xFFFF << 32                # an IPv4 sender's low word (shm.ipv6.MAPPED4)
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
    "zmq_getsockopt": _i32(_u64, _i32, _u64, _u64),
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
zmq_getsockopt = types.ExternalFunction("zmq_getsockopt", _SIGNATURES["zmq_getsockopt"])
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


def peer_of(msg) -> int:
    """The sender int (shm.ipv6.peer_key) of new_msg() storage's last capture; 0: none."""
    hi, lo = msg[PEER:PEER + 2].view(np.uint64).tolist()
    return hi << 64 | lo


@njit(cache=True)
def peer_address(msg, m):
    """Received message ``m``'s Peer-Address into msg[PEER], msg[PEER + 1] (0, 0 when it has
    none, as on ipc://, or it is not an address parse_peer reads)."""
    msg[PEER], msg[PEER + 1] = 0, 0
    p = zmq_msg_gets(m, msg.ctypes.data + np.uint64(PROP * 8))
    if p == 0:
        return
    n = np.int64(_strnlen(p, np.uint64(63)))
    b = msg.view(np.uint8)
    copy_from(b, SCRATCH * 8, p, n)
    hi, lo = parse_peer(b, SCRATCH * 8, SCRATCH * 8 + n)
    msg[PEER], msg[PEER + 1] = np.int64(hi), np.int64(lo)


@njit(cache=True)
def parse_peer(b, i, end):
    """The sender int of the text ``b[i:end]`` as (high, low) uint64 words: "a.b.c.d" and
    "::ffff:a.b.c.d" (a dual-stack socket) as IPv4-mapped, an IPv6 address as getnameinfo
    writes it (hex groups, one "::"); (0, 0) for anything else (a zone, another embedded form)."""
    dots = 0
    for k in range(i, end):
        dots += b[k] == 46
    if dots:                                                # IPv4, maybe "::ffff:" first
        if end - i > 7 and b[i] == 58 and b[i + 1] == 58 and b[i + 6] == 58:
            for k in range(i + 2, i + 6):
                if b[k] | 32 != 102:                        # "f" or "F"
                    return np.uint64(0), np.uint64(0)
            i += 7
        addr, part, digits, dots = 0, 0, 0, 0
        while i < end:
            c = b[i]
            if c == 46:                                     # "."
                if digits == 0 or dots == 3:
                    return np.uint64(0), np.uint64(0)
                addr, part, digits, dots = addr * 256 + part, 0, 0, dots + 1
            elif 48 <= c <= 57 and digits < 3:
                part, digits = part * 10 + (c - 48), digits + 1
                if part > 255:
                    return np.uint64(0), np.uint64(0)
            else:
                return np.uint64(0), np.uint64(0)
            i += 1
        if dots != 3 or not digits:
            return np.uint64(0), np.uint64(0)
        return np.uint64(0), np.uint64(MAPPED4 | (addr * 256 + part))
    groups = np.zeros(8, np.uint64)
    ng, gap, k = 0, -1, i                                   # gap: groups before the "::"
    if end - i >= 2 and b[i] == 58 and b[i + 1] == 58:
        gap, k = 0, i + 2
    while k < end:
        val, digits = 0, 0
        while k < end and digits < 5:
            c = b[k] | 32                                   # lower case
            h = c - 48 if 48 <= c <= 57 else c - 87 if 97 <= c <= 102 else -1
            if h < 0:
                break
            val, digits, k = val * 16 + h, digits + 1, k + 1
        if digits == 0 or digits > 4 or ng == 8:
            return np.uint64(0), np.uint64(0)
        groups[ng] = val
        ng += 1
        if k == end:
            break
        if b[k] != 58 or k + 1 == end:                      # groups end with ":", never last
            return np.uint64(0), np.uint64(0)
        k += 1
        if b[k] == 58:                                      # "::"
            if gap >= 0:
                return np.uint64(0), np.uint64(0)
            gap, k = ng, k + 1
    if (gap < 0 and ng != 8) or (gap >= 0 and ng > 7):
        return np.uint64(0), np.uint64(0)
    hi, lo = np.uint64(0), np.uint64(0)
    for j in range(ng):
        at = j if gap < 0 or j < gap else j + 8 - ng
        if at < 4:
            hi |= groups[j] << np.uint64(16 * (3 - at))
        else:
            lo |= groups[j] << np.uint64(16 * (7 - at))
    return hi, lo


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
    if msg.shape[0] == MSG_WORDS and (more == 0 or msg[CAPTURE] == 2):   # its sender, when wanted
        if msg[CAPTURE]:
            peer_address(msg, m)
        else:
            msg[PEER], msg[PEER + 1] = 0, 0
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
