"""Kernel-side enforcement: bpf/enforce.c's maps mirrored from the engine's lists.

    enf = Enforcer(mode="xdp", ifname="lo", ports=(5555,), lists=(("blocked_ips", "ipv4"),))
    enf.load()                           # compile (about 1-4 s, LLVM), no packet judged yet
    enf.replace("blocked_ips", values)   # every list filled before attach
    enf.attach()                         # removes a crashed run's leftover first
    enf.add("blocked_ips", [v]); enf.remove(...); enf.replace(...)
    enf.counters(); enf.poll_events()
    enf.detach()                         # on every stop

Values are the lists' u64 encodings (shm.features.lists): an ipv4/u32 value is the address,
a cidr4 value is prefix length << 32 | network, a cidr6 value prefix length << 128 | network
(shm.ipv6). Map keys hold the address in network byte
order (as the packet does); each value is a bit mask of the enforced lists holding that key,
so removing a key from one list leaves it dropped while another list still holds it.

Guarantees: ``add``/``remove`` write one map entry per value, each atomic for the packets;
``replace`` rebuilds the inactive generation's maps completely and then flips ``gen`` with
one array store, and a packet reads ``gen`` once, so no packet is judged by a half-applied
list. A packet that read the old generation just before the flip is judged by the whole old
list (its program run lasts microseconds, under RCU); the old maps are rewritten only by the
next ``replace``.
"""
from __future__ import annotations

import ctypes as ct
import time
from dataclasses import dataclass
from pathlib import Path

from bpf import hooks
from shm.ipv6 import MAPPED4, is_peer4

PROGRAM_PATH = Path(__file__).with_name("enforce.c")
MODES = ("xdp", "tc")
ADDR_TYPES, NET_TYPES, NET6_TYPES = ("ipv4", "u32"), ("cidr4",), ("cidr6",)
C_PASSED, C_OTHER, C_EVENTS_LOST, C_LIST0 = 0, 1, 2, 3     # keep in step with enforce.c
MAX_LISTS = 16
C_AUTO = C_LIST0 + MAX_LISTS
NCOUNTERS = C_AUTO + 1
AUTO_LIST, AUTO_REASON = 255, "auto-blocked"   # event list index, reason: a rule's block (no list name has "-")


class EnforceError(RuntimeError):
    """Enforcement cannot be set up; the message is one line."""


class _Event(ct.Structure):
    _fields_ = [("ts_ns", ct.c_uint64), ("saddr", ct.c_uint32), ("dport", ct.c_uint16),
                ("list", ct.c_uint8), ("gen", ct.c_uint8)]


class _Event6(ct.Structure):
    _fields_ = [("ts_ns", ct.c_uint64), ("saddr", ct.c_uint8 * 16), ("dport", ct.c_uint16),
                ("list", ct.c_uint8), ("gen", ct.c_uint8), ("pad", ct.c_uint32)]


@dataclass(frozen=True)
class DropEvent:
    ts_ns: int          # CLOCK_MONOTONIC (time.monotonic_ns), when the program dropped it
    saddr: int          # host-order u32 (10.0.0.1 = 0x0A000001); family 6: the 128-bit address
    dport: int          # family 6: 0 when the header chain was longer than the walk (enforce.c)
    list: str           # the enforced list that holds the source
    generation: int
    family: int = 4


def _net(addr: int) -> int:
    """A host-order u32 as the packet's network-order bytes read as a little-endian u32."""
    return int.from_bytes(int(addr).to_bytes(4, "big"), "little")


def _host(net: int) -> int:
    return int.from_bytes(int(net).to_bytes(4, "little"), "big")


def _table(vtype: str) -> str:
    """The map (without its generation digit) a list type's values live in."""
    return "addrs" if vtype in ADDR_TYPES else "nets6_" if vtype in NET6_TYPES else "nets"


class Enforcer:
    """One loaded program on one interface; single writer (the admin plane's thread)."""

    def __init__(self, mode: str, ifname: str, ports: tuple[int, ...],
                 lists: tuple[tuple[str, str], ...], max_addrs: int = 1 << 16,
                 max_prefixes: int = 1 << 16, events_per_s: int = 1000, max_auto: int = 1 << 16,
                 max_prefixes6: int = 1 << 10):
        if mode not in MODES:
            raise ValueError(f"mode={mode!r}: must be one of {', '.join(MODES)}")
        if not ports or not all(1 <= int(p) <= 65535 for p in ports):
            raise ValueError(f"ports={ports!r}: need 1..65535, at least one")
        if not 1 <= len(lists) <= MAX_LISTS:
            raise ValueError(f"lists: {len(lists)} lists, need 1..{MAX_LISTS}")
        for name, t in lists:
            if t not in ADDR_TYPES + NET_TYPES + NET6_TYPES:
                raise ValueError(f"list={name!r}: type={t!r} cannot be enforced")
        self.mode, self.ifname = mode, ifname
        self.ports = tuple(int(p) for p in ports)
        self.lists = tuple(lists)
        self.bit = {name: 1 << i for i, (name, _) in enumerate(lists)}
        self.types = dict(lists)
        self.members: dict[str, set[int]] = {name: set() for name, _ in lists}
        self.max_addrs, self.max_prefixes, self.events_per_s = max_addrs, max_prefixes, events_per_s
        self.max_auto = max_auto
        self.max_prefixes6 = max_prefixes6
        self.bpf = None
        self.gen = 0
        self.attached = False
        self._made_qdisc = False
        self._events: list[DropEvent] = []

    # --- setup ---------------------------------------------------------------------------
    def load(self) -> None:
        """Compile and load; nothing is attached. Raises EnforceError."""
        match = " || ".join(f"(p) == {p}" for p in self.ports)
        try:
            from bcc import BPF   # lazy: optional (Debian's python3-bpfcc), needed only here
            self.bpf = BPF(src_file=str(PROGRAM_PATH).encode(), cflags=[
                f"-DPORT_MATCH(p)=({match})", f"-DMAX_ADDRS={int(self.max_addrs)}",
                f"-DMAX_PREFIXES={int(self.max_prefixes)}", f"-DMAX_AUTO={int(self.max_auto)}",
                f"-DMAX_PREFIXES6={int(self.max_prefixes6)}",
                f"-DEVENTS_PER_S={int(self.events_per_s)}", "-w"])
            kind = BPF.XDP if self.mode == "xdp" else BPF.SCHED_CLS
            self.fn = self.bpf.load_func(f"{self.mode}_enforce".encode(), kind)
        except Exception as e:                # bcc raises bare Exception on compile/load
            raise EnforceError(f"enforce: loading bpf/enforce.c failed: {str(e).splitlines()[0]}") from None
        self.bpf[b"events"].open_ring_buffer(self._on_event)
        self.bpf[b"events6"].open_ring_buffer(self._on_event6)

    def attach(self) -> list[str]:
        """Attach to the interface (after the maps are filled); returns the lines of what a
        crashed run left and was removed first. Raises EnforceError (nothing left attached)."""
        try:
            removed = hooks.remove_leftover(self.ifname)
            if self.mode == "xdp":
                hooks.attach_xdp(self.ifname, self.fn.fd)
            else:
                self._made_qdisc = hooks.attach_tc(self.ifname, self.fn.fd)
        except hooks.HookError as e:
            raise EnforceError(f"enforce: {e}") from None
        self.attached = True
        return removed

    def detach(self) -> None:
        """Idempotent; every stop calls it."""
        if not self.attached:
            return
        self.attached = False
        try:
            if self.mode == "xdp":
                hooks.detach_xdp(self.ifname)
            else:
                hooks.detach_tc(self.ifname, self._made_qdisc)
        except hooks.HookError as e:
            raise EnforceError(f"enforce: {e}") from None

    # --- list updates ----------------------------------------------------------------------
    def _maps(self, gen: int, name: str):
        return self.bpf[f"{_table(self.types[name])}{gen}".encode()]

    def _key(self, m, name: str, v: int):
        if self.types[name] in ADDR_TYPES:
            return m.Key(_net(v & 0xFFFFFFFF))
        if self.types[name] in NET6_TYPES:
            return m.Key(int(v) >> 128 & 255, (ct.c_uint8 * 16)(*(int(v) & (1 << 128) - 1).to_bytes(16, "big")))
        return m.Key(int(v) >> 32 & 63, _net(v & 0xFFFFFFFF))

    def _mask(self, name: str, v: int) -> int:
        """Bits of the lists of ``name``'s map (address, prefix, IPv6 prefix) that hold ``v``."""
        table = _table(self.types[name])
        return sum(self.bit[n] for n, vals in self.members.items()
                   if _table(self.types[n]) == table and v in vals)

    def _write(self, gen: int, name: str, values) -> None:
        m = self._maps(gen, name)
        for v in values:
            k, mask = self._key(m, name, v), self._mask(name, v)
            if mask:
                m[k] = ct.c_uint32(mask)
            else:
                try:
                    del m[k]
                except KeyError:
                    pass

    def add(self, name: str, values) -> None:
        vals = [int(v) for v in values]
        self.members[name].update(vals)
        self._write(self.gen, name, vals)

    def remove(self, name: str, values) -> None:
        vals = [int(v) for v in values]
        self.members[name].difference_update(vals)
        self._write(self.gen, name, vals)

    def replace(self, name: str, values) -> None:
        """``name`` holds exactly ``values`` now: the inactive generation is rebuilt from every
        list, then made active with one store."""
        self.members[name] = {int(v) for v in values}
        nxt = self.gen ^ 1
        for table in ("addrs", "nets", "nets6_"):
            self.bpf[f"{table}{nxt}".encode()].clear()
        for n in self.members:
            self._write(nxt, n, self.members[n])
        self.bpf[b"gen"][ct.c_int(0)] = ct.c_uint32(nxt)    # the flip: one array store
        self.gen = nxt

    def entries(self) -> dict[str, int]:
        return {n: len(v) for n, v in self.members.items()}

    # --- what it did -----------------------------------------------------------------------
    def counters(self) -> dict[str, int]:
        t = self.bpf[b"counters"]
        c = [int(sum(t[t.Key(i)])) for i in range(NCOUNTERS)]
        out = {"passed": c[C_PASSED], "other": c[C_OTHER], "events_lost": c[C_EVENTS_LOST]}
        out.update({f"dropped:{n}": c[C_LIST0 + i] for i, (n, _) in enumerate(self.lists)})
        out[f"dropped:{AUTO_REASON}"] = c[C_AUTO]
        return out

    # --- sources blocked by rules (block_source; written by the ingress: ingress.autoblock) --
    def auto_fds(self) -> tuple[int, int]:
        """The ``autoblk`` and ``autoblk6`` maps' descriptors, for the ingress to inherit."""
        return self.bpf[b"autoblk"].map_fd, self.bpf[b"autoblk6"].map_fd

    def auto_entries(self, now_ns: int) -> list[tuple[int, int]]:
        """(source, expires_ns) of the rule blocks in force at ``now_ns`` (CLOCK_MONOTONIC),
        by expiry, the source as shm.ipv6.peer_key makes it (IPv4 mapped); expired ones not
        yet swept are left out (the program drops nothing for them either)."""
        out = [(MAPPED4 | _host(k.value), int(v.expires_ns)) for k, v in self.bpf[b"autoblk"].items()
               if v.expires_ns > now_ns]
        out += [(int.from_bytes(bytes(k.saddr), "big"), int(v.expires_ns))
                for k, v in self.bpf[b"autoblk6"].items() if v.expires_ns > now_ns]
        return sorted(out, key=lambda e: (e[1], e[0]))

    def auto_lift(self, source: int) -> bool:
        """Remove the rule block of ``source`` (peer_key) before its expiry; False if none
        is in force. One map delete, atomic for the packets."""
        if is_peer4(source):
            m = self.bpf[b"autoblk"]
            key = m.Key(_net(source & 0xFFFFFFFF))
        else:
            m = self.bpf[b"autoblk6"]
            key = m.Key((ct.c_uint8 * 16)(*int(source).to_bytes(16, "big")))
        try:
            in_force = m[key].expires_ns > time.monotonic_ns()
            del m[key]
        except KeyError:            # not blocked, or swept by the ingress meanwhile
            return False
        return in_force

    def _on_event(self, ctx, data, size) -> int:
        e = ct.cast(data, ct.POINTER(_Event)).contents
        name = AUTO_REASON if e.list == AUTO_LIST else \
            self.lists[e.list][0] if e.list < len(self.lists) else f"list{e.list}"
        self._events.append(DropEvent(e.ts_ns, _host(e.saddr), e.dport, name, e.gen))
        return 0

    def _on_event6(self, ctx, data, size) -> int:
        e = ct.cast(data, ct.POINTER(_Event6)).contents
        name = AUTO_REASON if e.list == AUTO_LIST else \
            self.lists[e.list][0] if e.list < len(self.lists) else f"list{e.list}"
        self._events.append(DropEvent(e.ts_ns, int.from_bytes(bytes(e.saddr), "big"), e.dport,
                                      name, e.gen, family=6))
        return 0

    def poll_events(self, timeout_ms: int = 0) -> list[DropEvent]:
        """The drop events sent since the last call (bounded by the program's rate limit)."""
        self.bpf.ring_buffer_poll(timeout_ms) if timeout_ms else self.bpf.ring_buffer_consume()
        out, self._events = self._events, []
        return out

    def close(self) -> None:
        try:
            self.detach()
        finally:                    # the maps and program go even when the detach failed
            if self.bpf is not None:
                self.bpf.cleanup()
                self.bpf = None

