"""bpf/enforce.c judging IPv6 (cidr6 lists) against real packets (root + bcc; see conftest).

Two namespaces made here, joined by a veth pair, with ULA addresses only inside them
(bench/netns.py): the server listens on its IPv4 and IPv6 addresses, clients connect from
three IPv6 sources in three /64s. Outcomes allowed: a source in a listed prefix never
completes a handshake (its SYN is dropped, never answered), an unlisted one always does
within the generous timeout. Raw SYNs test the extension-header walk: counters are read
after a bounded wait for the packets to be judged.
"""
from __future__ import annotations

import socket
import threading
import time

import pytest

from shm.ipv4 import cidr4_key
from shm.ipv6 import cidr6_key
from tests.bpf.conftest import free_tcp_port, require_ebpf
from bench.netns import VethPair, syn_packet6

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
        e.replace("blocked_ips", [])
        e.replace("nets", [])
        e.replace("nets6", [cidr6_key(net.prefix6)])     # filled before attach
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


def test_cidr6_list_replace_under_a_syn_stream_never_lets_a_source_listed_on_both_sides_through(net, loaded):
    """As the cidr4 test in test_enforce.py: a source whose /64 is in the old AND the new
    content is dropped by every packet of a dense raw SYN stream during 20 replaces of 2,001
    prefixes each; a replace that cleared and refilled the active trie would pass some."""
    e = loaded("xdp")
    fill_a = [cidr6_key(f"fd00:a{i // 4096:x}:{i % 4096:x}::/64") for i in range(2000)]   # trie keys only
    fill_b = [cidr6_key(f"fd00:b{i // 4096:x}:{i % 4096:x}::/64") for i in range(2000)]
    both = cidr6_key(net.prefix6)
    raw = net.raw_socket6()
    stop = threading.Event()
    sent = [0]

    def stream():
        pkt = syn_packet6(net.blocked6, net.server6, net.port)
        deadline = time.monotonic() + 30          # bounded even if the test body hangs
        while not stop.is_set() and time.monotonic() < deadline:
            raw.sendto(pkt, (net.server6, 0))
            sent[0] += 1

    t = threading.Thread(target=stream, daemon=True)
    try:
        e.replace("nets6", [both, *fill_a])
        with net.inside(net.server_ns):
            e.attach()
        t.start()
        before = e.counters()
        for i in range(20):
            e.replace("nets6", [both, *(fill_b if i % 2 == 0 else fill_a)])
        stop.set()
        t.join(10)
        after = e.counters()
        dropped = after["dropped:nets6"] - before["dropped:nets6"]
        print(f"sent={sent[0]} dropped_during_swaps={dropped} passed={after['passed'] - before['passed']}")
        assert dropped > 1000, "the stream must be dense for the check to mean anything"
        assert after["passed"] == before["passed"]
    finally:
        stop.set()
        raw.close()
        with net.inside(net.server_ns):
            e.detach()
