"""bpf/enforce.c against real packets (root + bcc; see conftest for skip/fail rules).

Two namespaces made here, joined by a veth pair (bench/netns.py, ULA IPv6 addresses only
inside them): the server listens on its IPv4 and IPv6 addresses in one, clients connect from
three IPv4 sources and three IPv6 sources (in three /64s) in the other. A listed source gets no handshake (the connect
times out) and its drop counter rises; an unlisted one connects. Outcomes allowed: none other
(a dropped SYN is never answered; an allowed one is answered within the generous timeout).
Raw SYNs test the IPv6 extension-header walk: counters are read after a bounded wait for the
packets to be judged.
"""
from __future__ import annotations

import socket
import threading
import time

import pytest

from bench.netns import VethPair, syn_packet, syn_packet6
from shm.ipv4 import cidr4_key, parse_ipv4
from shm.ipv6 import cidr6_key, peer_key
from tests.bpf.conftest import free_tcp_port, require_ebpf

ALLOWED_TIMEOUT_S = 5.0      # an answered SYN takes well under a millisecond here
BLOCKED_TIMEOUT_S = 1.0      # a dropped one is never answered: the wait is the test's cost
LISTS = (("blocked_ips", "ipv4"), ("nets", "cidr4"), ("nets6", "cidr6"))


@pytest.fixture(scope="module")
def net():
    require_ebpf()
    with VethPair() as n:
        n.port = free_tcp_port()
        with n.inside(n.server_ns):
            n.listeners = [socket.socket(), socket.socket(socket.AF_INET6)]
        try:
            for s, addr in zip(n.listeners, (n.server, n.server6)):
                s.bind((addr, n.port))
                s.listen(64)                # the kernel completes handshakes; none accepted
            yield n
        finally:
            for s in n.listeners:
                s.close()


@pytest.fixture(scope="module")
def loaded(net):
    """One compiled program per mode for the module (a bcc compile costs seconds)."""
    from bpf.enforce import Enforcer
    cache = {}

    def get(mode):
        if mode not in cache:
            cache[mode] = Enforcer(mode, net.server_if, (net.port,), LISTS, max_prefixes6=4096)
            cache[mode].load()
        e = cache[mode]
        assert not e.attached
        e.replace("nets", [])
        e.replace("blocked_ips", [parse_ipv4(net.blocked)])     # filled before attach
        e.replace("nets6", [cidr6_key(net.prefix6)])
        return e
    try:
        yield get
    finally:
        with net.inside(net.server_ns):
            for e in cache.values():
                e.close()


def _served(net, source) -> bool:
    return net.connect_from(source, net.port, ALLOWED_TIMEOUT_S)


def _dropped(net, source) -> bool:
    return not net.connect_from(source, net.port, BLOCKED_TIMEOUT_S)


def _until(cond, timeout_s: float = 5.0) -> bool:
    """Bounded wait: a raw packet crosses the veth in a softirq, not in sendto."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


@pytest.mark.parametrize("mode", ["xdp", "tc"])
def test_listed_sources_get_no_handshake(net, loaded, mode):
    e = loaded(mode)
    try:
        with net.inside(net.server_ns):
            e.attach()
        assert net.xdp_shown() == (mode == "xdp")
        before = e.counters()
        assert _served(net, net.allowed)
        assert _dropped(net, net.blocked)
        c = e.counters()
        assert c["dropped:blocked_ips"] > before["dropped:blocked_ips"]
        assert c["passed"] > before["passed"]
        ev = e.poll_events(timeout_ms=500)
        assert any(x.saddr == parse_ipv4(net.blocked) and x.dport == net.port
                   and x.list == "blocked_ips" for x in ev), ev

        # one entry at a time, in the map the packets read
        e.add("blocked_ips", [parse_ipv4(net.other)])
        assert _dropped(net, net.other)
        e.remove("blocked_ips", [parse_ipv4(net.other)])
        assert _served(net, net.other)

        # a prefix list: the whole /24 of the clients, swapped in and out with a generation flip
        gen = e.gen
        e.replace("nets", [cidr4_key(net.prefix)])
        assert e.gen == gen ^ 1
        assert _dropped(net, net.allowed)
        assert e.counters()["dropped:nets"] > c["dropped:nets"]
        e.replace("nets", [])
        assert _served(net, net.allowed)
        assert _dropped(net, net.blocked)         # the other list survived both flips
    finally:
        with net.inside(net.server_ns):
            e.detach()
    assert not net.xdp_shown()
    assert _served(net, net.blocked)


def test_removing_a_list_entry_keeps_it_dropped_while_another_list_holds_it(net, loaded):
    e = loaded("xdp")
    try:
        with net.inside(net.server_ns):
            e.attach()
        e.add("nets", [cidr4_key(f"{net.other}/32")])
        e.add("blocked_ips", [parse_ipv4(net.other)])
        e.remove("blocked_ips", [parse_ipv4(net.other)])    # still in nets
        assert _dropped(net, net.other)
    finally:
        with net.inside(net.server_ns):
            e.detach()


def test_a_program_left_by_a_dead_run_is_removed_at_the_next_attach(net, loaded):
    """An XDP program attached through netlink outlives its process: the next start finds it
    by name on the interface and removes it before attaching its own."""
    from bpf import hooks
    from bpf.enforce import Enforcer
    dead = Enforcer("xdp", net.server_if, (net.port,), (("blocked_ips", "ipv4"),))
    dead.load()
    with net.inside(net.server_ns):
        dead.attach()
    dead.attached = False           # as after SIGKILL: nobody will detach it
    dead.bpf.cleanup()              # and no process holds the program's descriptors
    assert net.xdp_shown()
    e = loaded("xdp")
    try:
        with net.inside(net.server_ns):
            removed = e.attach()
            assert len(removed) == 1 and "leftover XDP program" in removed[0]
            assert hooks.prog_name(hooks.xdp_prog_id(net.server_if)) == hooks.XDP_PROG_NAME
    finally:
        with net.inside(net.server_ns):
            e.detach()
    assert not net.xdp_shown()


def test_an_attached_xdp_program_is_never_replaced(net, loaded):
    """attach_xdp asks the kernel to attach only where no XDP program is (UPDATE_IF_NOEXIST):
    a second attach fails with one line naming the program there, which stays."""
    from bpf import hooks
    first = loaded("xdp")
    try:
        with net.inside(net.server_ns):
            first.attach()
            pid = hooks.xdp_prog_id(net.server_if)
            with pytest.raises(hooks.HookError, match=rf"another XDP program \(id {pid}, 'xdp_enforce'\)"):
                hooks.attach_xdp(net.server_if, first.fn.fd)
            assert hooks.xdp_prog_id(net.server_if) == pid
    finally:
        with net.inside(net.server_ns):
            first.detach()


@pytest.mark.parametrize("family", [4, 6])
def test_list_replace_under_a_syn_stream_never_lets_a_source_listed_on_both_sides_through(net, loaded, family):
    """A source in the old AND the new content must be dropped by every packet during the
    swap: a half-applied list (cleared, then filled) would pass some of a dense SYN stream.
    Each replace rewrites 2,001 entries (a hash for IPv4 addresses, the cidr6 trie for IPv6),
    so a non-atomic swap is open for milliseconds while the stream sends thousands of packets
    a second: the passed counter would rise."""
    e = loaded("xdp")
    if family == 4:
        name, both = "blocked_ips", parse_ipv4(net.blocked)
        fill_a = [parse_ipv4(f"10.201.{i // 250}.{i % 250 + 1}") for i in range(2000)]   # map keys only
        fill_b = [parse_ipv4(f"10.202.{i // 250}.{i % 250 + 1}") for i in range(2000)]
        raw, pkt, dest = net.raw_socket(), syn_packet(net.blocked, net.server, net.port), net.server
    else:
        name, both = "nets6", cidr6_key(net.prefix6)
        fill_a = [cidr6_key(f"fd00:a{i // 4096:x}:{i % 4096:x}::/64") for i in range(2000)]
        fill_b = [cidr6_key(f"fd00:b{i // 4096:x}:{i % 4096:x}::/64") for i in range(2000)]
        raw, pkt, dest = net.raw_socket6(), syn_packet6(net.blocked6, net.server6, net.port), net.server6
    stop = threading.Event()
    sent = [0]

    def stream():
        deadline = time.monotonic() + 30          # bounded even if the test body hangs
        while not stop.is_set() and time.monotonic() < deadline:
            raw.sendto(pkt, (dest, 0))
            sent[0] += 1

    t = threading.Thread(target=stream, daemon=True)
    try:
        e.replace(name, [both, *fill_a])
        with net.inside(net.server_ns):
            e.attach()
        t.start()
        before = e.counters()
        for i in range(20):
            e.replace(name, [both, *(fill_b if i % 2 == 0 else fill_a)])
        stop.set()
        t.join(10)
        after = e.counters()
        dropped = after[f"dropped:{name}"] - before[f"dropped:{name}"]
        print(f"sent={sent[0]} dropped_during_swaps={dropped} passed={after['passed'] - before['passed']}")
        assert dropped > 1000, "the stream must be dense for the check to mean anything"
        assert after["passed"] == before["passed"]
    finally:
        stop.set()
        raw.close()
        with net.inside(net.server_ns):
            e.detach()


@pytest.mark.parametrize("family", ["other", "other6"])
def test_a_rule_block_drops_its_source_until_its_expiry(net, loaded, family):
    """ingress.autoblock writes the autoblk (IPv4) or autoblk6 (IPv6) map through its
    descriptors (as the ingress process does): the source is dropped with the auto-blocked
    reason and a ring-buffer event; once its expiry passes the program passes it even before
    the sweep removes the entry, and a restarted writer adopts the entries a dead one left.
    An operator's lift (Enforcer.auto_lift, admin autoblock-remove) serves it at once, and
    the same rule firing again blocks it again."""
    import numpy as np
    from ingress.autoblock import BLOCKED, AutoBlock
    e = loaded("xdp")
    cells = np.zeros(4, np.int64)
    source = getattr(net, family)
    other = peer_key(source)
    try:
        with net.inside(net.server_ns):
            e.attach()
        ab = AutoBlock(e.auto_fds(), cells)
        e.poll_events()                      # earlier tests' events (a full ring sends none)
        before = e.counters()["dropped:auto-blocked"]
        assert ab.fired(other, 2000) and cells[BLOCKED] == 1
        assert [a for a, _ in e.auto_entries(time.monotonic_ns())] == [other]
        assert _dropped(net, source)
        assert _served(net, net.allowed) and _served(net, net.allowed6)
        assert e.counters()["dropped:auto-blocked"] > before
        ev = e.poll_events(timeout_ms=500)
        want = (6, other) if family == "other6" else (4, other & 0xFFFFFFFF)
        assert any((x.family, x.saddr) == want and x.list == "auto-blocked" for x in ev), ev

        assert e.auto_lift(other) and not e.auto_lift(other)     # lifted: served at once
        assert e.auto_entries(time.monotonic_ns()) == [] and _served(net, source)
        assert ab.fired(other, 2000) and cells[BLOCKED] == 2      # fired again: blocked again
        assert _dropped(net, source)

        again = AutoBlock(e.auto_fds(), np.zeros(4, np.int64))    # a restarted ingress
        assert list(again.expiry) == [other]
        time.sleep(max(0.0, (ab.expiry[other] - time.monotonic_ns()) / 1e9) + 0.05)
        assert e.auto_entries(time.monotonic_ns()) == []          # expired, not yet swept
        assert _served(net, source)
        ab.sweep(time.monotonic_ns())
        assert len(e.bpf[b"autoblk"]) == len(e.bpf[b"autoblk6"]) == 0 and ab.expiry == {}
    finally:
        with net.inside(net.server_ns):
            e.detach()


@pytest.mark.parametrize("mode", ["xdp", "tc"])
def test_a_listed_ipv6_prefix_gets_no_handshake(net, loaded, mode):
    e = loaded(mode)
    try:
        with net.inside(net.server_ns):
            e.attach()
        before = e.counters()
        assert _served(net, net.allowed6)
        assert _dropped(net, net.blocked6)           # in the listed /64
        c = e.counters()
        assert c["dropped:nets6"] > before["dropped:nets6"]
        assert c["passed"] > before["passed"]
        ev = e.poll_events(timeout_ms=500)
        src = int.from_bytes(socket.inet_pton(socket.AF_INET6, net.blocked6), "big")
        assert any(x.family == 6 and x.saddr == src and x.dport == net.port and x.list == "nets6"
                   for x in ev), ev

        # one entry at a time: a bare address is its /128
        e.add("nets6", [cidr6_key(net.other6)])
        assert _dropped(net, net.other6)
        e.remove("nets6", [cidr6_key(net.other6)])
        assert _served(net, net.other6)

        # the whole list swapped with a generation flip, and back
        gen = e.gen
        e.replace("nets6", [cidr6_key(net.other6)])
        assert e.gen == gen ^ 1
        assert _served(net, net.blocked6) and _dropped(net, net.other6)
        e.replace("nets6", [cidr6_key(net.prefix6)])
        assert _dropped(net, net.blocked6) and _served(net, net.other6)
        assert _served(net, net.allowed)             # IPv4 untouched by the IPv6 list
    finally:
        with net.inside(net.server_ns):
            e.detach()
    assert not net.xdp_shown()
    assert _served(net, net.blocked6)


def test_cidr4_and_cidr6_entries_with_the_same_value_stay_apart(net, loaded):
    """0.0.0.0/0 and ::/0 are both the value 0: removing one from its list must not leave it
    in its trie on the strength of the other list's bit."""
    e = loaded("xdp")
    try:
        with net.inside(net.server_ns):
            e.attach()
        e.add("nets", [cidr4_key("0.0.0.0/0")])
        e.add("nets6", [cidr6_key("::/0")])
        assert _dropped(net, net.allowed) and _dropped(net, net.allowed6)
        e.remove("nets", [cidr4_key("0.0.0.0/0")])
        assert _served(net, net.allowed)
        assert _dropped(net, net.allowed6)
        e.remove("nets6", [cidr6_key("::/0")])
        assert _served(net, net.allowed6)
    finally:
        with net.inside(net.server_ns):
            e.detach()


def test_extension_headers_never_hide_a_listed_source_nor_drop_an_unlisted_one(net, loaded):
    """Raw SYNs behind destination-options headers: one header is walked to the TCP port
    (listed: dropped, unlisted: passed as judged); a chain longer than the walk (7 headers) is
    judged by the source alone: listed dropped, unlisted passed unjudged ("other")."""
    e = loaded("xdp")
    raw = net.raw_socket6()
    try:
        with net.inside(net.server_ns):
            e.attach()
        for n_opts in (1, 7):
            c0 = e.counters()
            raw.sendto(syn_packet6(net.blocked6, net.server6, net.port, n_opts), (net.server6, 0))
            assert _until(lambda: e.counters()["dropped:nets6"] > c0["dropped:nets6"]), n_opts
            c1 = e.counters()
            key = "passed" if n_opts == 1 else "other"
            raw.sendto(syn_packet6(net.allowed6, net.server6, net.port, n_opts), (net.server6, 0))
            assert _until(lambda: e.counters()[key] > c1[key]), n_opts
            assert e.counters()["dropped:nets6"] == c1["dropped:nets6"]
        ev = e.poll_events(timeout_ms=500)
        assert [x.dport for x in ev if x.family == 6][-2:] == [net.port, 0], ev   # 0: port unknown
    finally:
        raw.close()
        with net.inside(net.server_ns):
            e.detach()
