"""Rules that block a source (``block_source: {ttl: 10m}``): the ingress's side.

When a worker decides with an enforce rule that carries block_source, it publishes that
decision's fired list with the ttl on its fired ring (engine.worker.publish_fired); the
compiled drain hands that ring to Python (ingress._loop_kernels.drain_packed: FIRED), and
GeneralPath.drain_fired calls ``decision`` here BEFORE the decision's reply is sent: the sender's
IPv4 enters the kernel's ``autoblk`` map (bpf/enforce.c) with its expiry, so once the reply is
out, the client's next packet to the front door is dropped. The reply itself is still sent.

The sender is the ZeroMQ message's Peer-Address, read only while the supervisor says a
block_source rule is active and enforcement runs (control cell ``ingress.autoblock[CAPTURE]``):
ingress.zmqc.recv_frame then reads it per message, the compiled admit keeps it per fast row
(FastPath.peer), and a message handled in Python carries it (FastPath.peer_now, then its fast
row or general-path Pending.peer). Without such a rule nothing is read: one compare per frame.

This process is the map's only writer (the supervisor only reads it for list-show), so the
expiry table here is exact: ``sweep`` deletes an entry when its expiry passes, unless a newer
block replaced it. The program checks the expiry itself (CLOCK_MONOTONIC, this clock), so a
not-yet-swept entry never drops a packet. A restarted ingress re-reads the map (``_adopt``).

The map is a plain hash of fixed capacity: when full, a new block is refused and counted
(FAILED), rather than evicting an older block early. IPv4 only (the program judges IPv4).
"""
from __future__ import annotations

import ctypes
import heapq
import os
import socket
import struct
import sys
import time

from ingress._fast_kernels import SEQ as FT_SEQ
from ingress.zmqc import CAPTURE as CAPTURE_WORD
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
    k = ctypes.create_string_buffer(key, 4) if key is not None else None
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


def key_of(addr: int) -> bytes:
    """The map key of a host-order IPv4: its network-order bytes, as the packet holds them."""
    return struct.pack("!I", addr)


class AutoBlock:
    """The ingress's blocks; ``fd`` < 0: no enforcement (the supervisor leaves ``capture`` 0
    then; a block asked anyway is counted NO_PEER)."""

    def __init__(self, fd: int, cells, log=None):
        self.fd, self.capture, self.cells = fd, cells[CAPTURE:CAPTURE + 1], cells
        self.log = log or (lambda m: print(m, file=sys.stderr, flush=True))
        self.expiry: dict[int, int] = {}        # address -> expires_ns in the map
        self.heap: list[tuple[int, int]] = []   # (expires_ns, address), swept in order
        self.sweep_due = 0
        self.msg = None                         # the compiled loop's zmqc.new_msg(), if any
        if fd >= 0 and not _is_bpf_map(fd):
            self.log(f"risk-engine: ingress: autoblock_fd={fd} is not a BPF map here (enforcement "
                     f"stopped before this ingress started): rule blocks are counted no_peer")
            self.fd = fd = -1
        if fd >= 0:
            self._adopt()

    def decision(self, tok: int, ttl_ms: int, fast, pending: dict) -> bool:
        """A block_source rule fired for the decision of ring token ``tok``: block the
        sender of its request (a fast row, or a general-path request)."""
        if tok & FAST_BIT:
            row = tok & INDEX_MASK
            live = int(fast.ft[row, FT_SEQ]) == (tok >> INDEX_BITS) & SEQ_MASK
            peer = int(fast.peer[row]) if live else 0    # else answered already (deadline)
        else:
            p = pending.get(tok >> INDEX_BITS)
            peer = p.peer if p is not None else 0
        return self.fired(peer, ttl_ms)

    def fired(self, peer: int, ttl_ms: int) -> bool:
        """Block ``peer`` for ``ttl_ms`` from now (before the reply); False when it cannot
        (no sender known, no enforcement, the kernel refused: counted)."""
        if not peer or self.fd < 0:
            self.cells[NO_PEER] += 1
            return False
        now = time.monotonic_ns()
        exp = now + ttl_ms * 1_000_000
        if self.expiry.get(peer, 0) >= exp:      # already blocked for longer
            self.cells[BLOCKED] += 1
            return True
        value = ctypes.create_string_buffer(_VALUE.pack(exp, now), _VALUE.size)
        rc = _bpf(BPF_MAP_UPDATE_ELEM, self.fd, key_of(peer), value)
        if rc < 0:
            self.cells[FAILED] += 1
            if self.cells[FAILED] == 1:
                self.log(f"risk-engine: ingress: blocking source={socket.inet_ntoa(key_of(peer))} "
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
            exp, addr = heapq.heappop(heap)
            if self.expiry.get(addr) == exp:     # not re-blocked since
                del self.expiry[addr]
                _bpf(BPF_MAP_DELETE_ELEM, self.fd, key_of(addr))

    def _adopt(self) -> None:
        """The blocks a previous ingress made (it died): swept from here on."""
        key, nxt = None, ctypes.create_string_buffer(4)
        value = ctypes.create_string_buffer(_VALUE.size)
        for _ in range(1 << 20):                 # bounded: the map's capacity is far below
            attr = _ElemAttr(self.fd, 0, 0 if key is None else ctypes.addressof(key),
                             ctypes.addressof(nxt), 0)
            if _syscall(BPF_MAP_GET_NEXT_KEY, attr):
                return
            key = ctypes.create_string_buffer(nxt.raw, 4)
            if _bpf(BPF_MAP_LOOKUP_ELEM, self.fd, key.raw, value) == 0:
                addr, exp = struct.unpack("!I", key.raw)[0], _VALUE.unpack(value.raw)[0]
                self.expiry[addr] = exp
                heapq.heappush(self.heap, (exp, addr))
