"""Rules that block a source (``block_source: {ttl: 10m}``): the ingress's side.

When a worker decides with an enforce rule that carries block_source, it publishes that
decision's fired list with the ttl on its fired ring (engine.worker.publish_fired); the
compiled drain hands that ring to Python (ingress._loop_kernels.drain_packed: FIRED), and
GeneralPath.drain_fired calls ``decision`` here BEFORE the decision's reply is sent: the sender
enters the kernel's ``autoblk`` or ``autoblk6`` map (bpf/enforce.c) with its expiry, so once the
reply is out, the client's next packet to the front door is dropped. The reply itself is still sent.

The sender is the ZeroMQ message's Peer-Address, read only while the supervisor says a
block_source rule is active and enforcement runs (control cell ``ingress.autoblock[CAPTURE]``):
the compiled receive (ingress.zmqc.recv_frame) then reads it per message and the compiled
admit keeps it per fast row (FastPath.peer); the Python receive (``PeerRecv``, with
ingress.compiled_loop off) reads it from the message's body frame. A message handled in
Python carries it (FastPath.peer_now, then its fast row or general-path Pending.peer).
Without such a rule nothing is read: one compare per read call (Python), per frame (compiled).

A sender is one int for both families (shm.ipv6.peer_key: IPv4 in its mapped form): an IPv4
one goes to ``autoblk``, an IPv6 one to ``autoblk6``, with the same expiry and sweep.
This process adds and sweeps; the supervisor deletes an entry when an operator lifts a block
(``admin autoblock-remove``: engine.autoblock). So ``fired`` asks the map, not its own table,
whether a longer block is in force, and the sweep deletes only its own expiry's entry. A lift
and a block of the same source at the same moment leave it blocked (the fire counts as
after the lift). The program checks the expiry itself (CLOCK_MONOTONIC, this clock), so a
not-yet-swept entry never drops a packet. A restarted ingress re-reads the maps (``_adopt``).

The maps are plain hashes of fixed capacity: when full, a new block is refused and counted
(FAILED), rather than evicting an older block early.
"""
from __future__ import annotations

import ctypes
import heapq
import os
import struct
import sys
import time

import numpy as np
import zmq

from ingress import zmqc
from ingress._fast_kernels import SEQ as FT_SEQ
from ingress.zmqc import CAPTURE as CAPTURE_WORD
from shm.ipv6 import MAPPED4, format_peer, is_peer4, peer_key
from shm.tokens import FAST_BIT, INDEX_BITS, INDEX_MASK, SEQ_MASK

SYS_BPF = 321                                    # x86-64, like the rest of the engine
BPF_MAP_LOOKUP_ELEM, BPF_MAP_UPDATE_ELEM, BPF_MAP_DELETE_ELEM, BPF_MAP_GET_NEXT_KEY = 1, 2, 3, 4
# control cells (ingress.autoblock): the supervisor's switch, then what this process did
CAPTURE, BLOCKED, NO_PEER, FAILED = range(4)
SWEEP_EVERY_NS = 100_000_000

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_VALUE = struct.Struct("<QQ")                   # struct auto_t {expires_ns, blocked_ns}


class _ElemAttr(ctypes.Structure):              # union bpf_attr, the map element commands
    _fields_ = [("map_fd", ctypes.c_uint32), ("pad", ctypes.c_uint32), ("key", ctypes.c_uint64),
                ("value", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


def _bpf(cmd: int, fd: int, key: bytes | None, value=None) -> int:
    """One map element command; 0 or -errno."""
    k = ctypes.create_string_buffer(key, len(key)) if key is not None else None
    attr = _ElemAttr(fd, 0, ctypes.addressof(k) if k is not None else 0,
                     ctypes.addressof(value) if value is not None else 0, 0)
    return _syscall(cmd, attr)


def _syscall(cmd: int, attr) -> int:
    """bpf(cmd, &attr, sizeof attr): 0 or -errno (longs: syscall() is variadic)."""
    r = _libc.syscall(ctypes.c_long(SYS_BPF), ctypes.c_long(cmd), ctypes.byref(attr),
                      ctypes.c_long(ctypes.sizeof(attr)))
    return 0 if r == 0 else -ctypes.get_errno()


def _is_bpf_map(fd: int) -> bool:
    """``fd`` is open here and a BPF map (an inherited descriptor, not a reused number)."""
    try:
        with open(f"/proc/self/fdinfo/{fd}") as f:
            return "map_type:" in f.read()
    except OSError:
        return False


def key_of(peer: int) -> bytes:
    """The map key of a sender (peer_key): its address bytes as the packet holds them, 4 for
    ``autoblk``, 16 for ``autoblk6``."""
    return struct.pack("!I", peer & 0xFFFFFFFF) if is_peer4(peer) else int(peer).to_bytes(16, "big")


class PeerRecv:
    """The Python receive's body frame while capturing (``ingress.compiled_loop: false``):
    ``recv(sock, fast)`` gives its bytes and leaves its sender in ``fast.peer_now`` (0: none,
    as on ipc://). One compiled receive, the compiled loop's own (ingress.zmqc.recv_frame),
    into a buffer of the socket's largest message: about 8 us more than a plain recv() here
    (a loaded machine), where recv(copy=False), Frame.get and ipaddress took about 45 us more.
    A socket without MAXMSGSIZE (tests) takes that slower path, as no buffer is sure to hold
    its frame."""

    def __init__(self):
        self.msg = zmqc.new_msg()
        self.msg[CAPTURE_WORD] = 2                # this frame's sender, last of its message or not
        self.buf = None

    def recv(self, sock, fast) -> bytes:
        if self.buf is None:
            self.buf = np.empty(max(sock.getsockopt(zmq.MAXMSGSIZE), 0), np.uint8)
        if not len(self.buf):
            f = sock.recv(copy=False)
            try:
                fast.peer_now = peer_key(f.get("Peer-Address"))
            except (zmq.ZMQError, ValueError):
                fast.peer_now = 0
            return f.bytes
        size, _ = zmqc.recv_frame(zmqc.handle(sock), self.msg, self.buf, 0, 0)
        if size < 0:
            raise zmq.ZMQError(-size)
        fast.peer_now = zmqc.peer_of(self.msg)
        return self.buf[:size].tobytes()      # within MAXMSGSIZE: libzmq refused larger


class AutoBlock:
    """The ingress's blocks; ``fds`` the (autoblk, autoblk6) descriptors, < 0: no enforcement
    (the supervisor leaves ``capture`` 0 then; a block asked anyway is counted NO_PEER)."""

    def __init__(self, fds, cells, log=None):
        self.capture, self.cells = cells[CAPTURE:CAPTURE + 1], cells
        self.log = log or (lambda m: print(m, file=sys.stderr, flush=True))
        self.expiry: dict[int, int] = {}        # sender -> expires_ns this process wrote
        self.heap: list[tuple[int, int]] = []   # (expires_ns, sender), swept in order
        self.sweep_due = 0
        self.msg = None                         # the compiled loop's zmqc.new_msg(), if any
        fd4, fd6 = fds
        if fd4 >= 0 and not (_is_bpf_map(fd4) and _is_bpf_map(fd6)):
            self.log(f"risk-engine: ingress: autoblock_fds={fd4},{fd6} are not BPF maps here "
                     f"(enforcement stopped before this ingress started): rule blocks are counted no_peer")
            fd4 = fd6 = -1
        self.fd, self.fd6 = fd4, fd6
        if fd4 >= 0:
            self._adopt(fd4, 4)
            self._adopt(fd6, 16)

    def decision(self, tok: int, ttl_ms: int, fast, pending: dict) -> bool:
        """A block_source rule fired for the decision of ring token ``tok``: block the
        sender of its request (a fast row, or a general-path request)."""
        if tok & FAST_BIT:
            row = tok & INDEX_MASK
            live = int(fast.ft[row, FT_SEQ]) == (tok >> INDEX_BITS) & SEQ_MASK
            if not live:                         # answered already (deadline)
                peer = 0
            elif fast.compiled:
                hi, lo = fast.peer[row].tolist()
                peer = hi << 64 | lo
            else:
                peer = fast.peers[row]
        else:
            p = pending.get(tok >> INDEX_BITS)
            peer = p.peer if p is not None else 0
        return self.fired(peer, ttl_ms)

    def _fd(self, peer: int) -> int:
        return self.fd if is_peer4(peer) else self.fd6

    def fired(self, peer: int, ttl_ms: int) -> bool:
        """Block ``peer`` (peer_key) for ``ttl_ms`` from now (before the reply); False when it
        cannot (no sender known, no enforcement, the kernel refused: counted)."""
        if not peer or self.fd < 0:
            self.cells[NO_PEER] += 1
            return False
        now = time.monotonic_ns()
        exp = now + ttl_ms * 1_000_000
        fd, key = self._fd(peer), key_of(peer)
        value = ctypes.create_string_buffer(_VALUE.size)
        if _bpf(BPF_MAP_LOOKUP_ELEM, fd, key, value) == 0 and _VALUE.unpack(value.raw)[0] >= exp:
            self.cells[BLOCKED] += 1             # already blocked for longer (not lifted)
            return True
        value = ctypes.create_string_buffer(_VALUE.pack(exp, now), _VALUE.size)
        rc = _bpf(BPF_MAP_UPDATE_ELEM, fd, key, value)
        if rc < 0:
            self.cells[FAILED] += 1
            if self.cells[FAILED] == 1:
                self.log(f"risk-engine: ingress: blocking source={format_peer(peer)} "
                         f"failed: {os.strerror(-rc)} (counted in risk_enforce_auto_blocks_total)")
            return False
        self.expiry[peer] = exp
        heapq.heappush(self.heap, (exp, peer))
        self.cells[BLOCKED] += 1
        return True

    def service(self, now: int) -> None:
        """The router's periodic call (every 10 ms while busy, 0.1 s idle): the capture
        switch into the compiled receive, and ``sweep``."""
        if self.msg is not None:
            self.msg[CAPTURE_WORD] = self.capture[0]
        self.sweep(now)

    def sweep(self, now: int) -> None:
        """Remove the blocks whose expiry passed (the program already ignores them)."""
        if now < self.sweep_due or not self.heap:
            return
        self.sweep_due = now + SWEEP_EVERY_NS
        heap = self.heap
        while heap and heap[0][0] <= now:
            exp, peer = heapq.heappop(heap)
            if self.expiry.get(peer) == exp:     # not re-blocked since
                del self.expiry[peer]
                _bpf(BPF_MAP_DELETE_ELEM, self._fd(peer), key_of(peer))    # ENOENT: lifted

    def _adopt(self, fd: int, size: int) -> None:
        """The blocks a previous ingress made (it died): swept from here on."""
        key, nxt = None, ctypes.create_string_buffer(size)
        value = ctypes.create_string_buffer(_VALUE.size)
        for _ in range(1 << 20):                 # bounded: the map's capacity is far below
            attr = _ElemAttr(fd, 0, 0 if key is None else ctypes.addressof(key),
                             ctypes.addressof(nxt), 0)
            if _syscall(BPF_MAP_GET_NEXT_KEY, attr):
                return
            key = ctypes.create_string_buffer(nxt.raw, size)
            if _bpf(BPF_MAP_LOOKUP_ELEM, fd, key.raw, value) == 0:
                raw = int.from_bytes(key.raw, "big")
                peer = MAPPED4 | raw if size == 4 else raw
                exp = _VALUE.unpack(value.raw)[0]
                self.expiry[peer] = exp
                heapq.heappush(self.heap, (exp, peer))
