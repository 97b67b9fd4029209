"""bpf/enforce.c against real packets (root + bcc; see conftest for skip/fail rules).

Two namespaces made here, joined by a veth pair: the server listens in one, clients connect
from three source addresses in the other. A listed source gets no handshake (the connect
times out) and its drop counter rises; an unlisted one connects. Outcomes allowed: none other
(a dropped SYN is never answered; an allowed one is answered within the generous timeout).
"""
from __future__ import annotations

import socket
import threading
import time

import pytest

from bench.netns import VethPair, syn_packet
from shm.ipv4 import cidr4_key, parse_ipv4
from tests.bpf.conftest import free_tcp_port, require_ebpf

ALLOWED_TIMEOUT_S = 5.0      # an answered SYN takes well under a millisecond here
BLOCKED_TIMEOUT_S = 1.0      # a dropped one is never answered: the wait is the test's cost


@pytest.fixture(scope="module")
def net():
    require_ebpf()
    with VethPair() as n:
        n.port = free_tcp_port()
        with n.inside(n.server_ns):
            n.listener = socket.socket()
        n.listener.bind((n.server, n.port))
        n.listener.listen(64)               # the kernel completes handshakes; none accepted
        try:
            yield n
        finally:
            n.listener.close()


@pytest.fixture(scope="module")
def loaded(net):
    """One compiled program per mode for the module (a bcc compile costs seconds)."""
    from bpf.enforce import Enforcer
    cache = {}

    def get(mode):
        if mode not in cache:
            cache[mode] = Enforcer(mode, net.server_if, (net.port,), (("blocked_ips", "ipv4"), ("nets", "cidr4")))
            cache[mode].load()
        e = cache[mode]
        assert not e.attached
        e.replace("nets", [])
        e.replace("blocked_ips", [parse_ipv4(net.blocked)])     # filled before attach
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


def test_list_replace_under_a_syn_stream_never_lets_a_source_listed_on_both_sides_through(net, loaded):
    """A source in the old AND the new content must be dropped by every packet during the
    swap: a half-applied list (cleared, then filled) would pass some of a dense SYN stream.
    Each replace rewrites 2,000 entries, so a non-atomic swap is open for milliseconds while
    the stream sends thousands of packets a second: the passed counter would rise."""
    e = loaded("xdp")
    fill_a = [parse_ipv4(f"10.201.{i // 250}.{i % 250 + 1}") for i in range(2000)]   # map keys only
    fill_b = [parse_ipv4(f"10.202.{i // 250}.{i % 250 + 1}") for i in range(2000)]
    both = parse_ipv4(net.blocked)
    raw = net.raw_socket()
    stop = threading.Event()
    sent = [0]

    def stream():
        pkt = syn_packet(net.blocked, net.server, net.port)
        deadline = time.monotonic() + 30          # bounded even if the test body hangs
        while not stop.is_set() and time.monotonic() < deadline:
            raw.sendto(pkt, (net.server, 0))
            sent[0] += 1

    t = threading.Thread(target=stream, daemon=True)
    try:
        e.replace("blocked_ips", [both, *fill_a])
        with net.inside(net.server_ns):
            e.attach()
        t.start()
        before = e.counters()
        for i in range(20):
            e.replace("blocked_ips", [both, *(fill_b if i % 2 == 0 else fill_a)])
        stop.set()
        t.join(10)
        after = e.counters()
        dropped = after["dropped:blocked_ips"] - before["dropped:blocked_ips"]
        print(f"sent={sent[0]} dropped_during_swaps={dropped} passed={after['passed'] - before['passed']}")
        assert dropped > 1000, "the stream must be dense for the check to mean anything"
        assert after["passed"] == before["passed"]
    finally:
        stop.set()
        raw.close()
        with net.inside(net.server_ns):
            e.detach()


def test_a_rule_block_drops_its_source_until_its_expiry(net, loaded):
    """ingress.autoblock writes the autoblk map through its descriptor (as the ingress
    process does): the source is dropped with the auto-blocked reason and a ring-buffer event;
    once its expiry passes the program passes it even before the sweep removes the entry, and
    a restarted writer adopts the entries a dead one left."""
    import numpy as np
    from ingress.autoblock import BLOCKED, AutoBlock
    e = loaded("xdp")
    cells = np.zeros(4, np.int64)
    other = parse_ipv4(net.other)
    try:
        with net.inside(net.server_ns):
            e.attach()
        ab = AutoBlock(e.auto_fd(), cells)
        e.poll_events()                      # earlier tests' events (a full ring sends none)
        before = e.counters()["dropped:auto-blocked"]
        assert ab.fired(other, 2000) and cells[BLOCKED] == 1
        assert [a for a, _ in e.auto_entries(time.monotonic_ns())] == [other]
        assert _dropped(net, net.other)
        assert _served(net, net.allowed)
        assert e.counters()["dropped:auto-blocked"] > before
        ev = e.poll_events(timeout_ms=500)
        assert any(x.saddr == other and x.list == "auto-blocked" for x in ev), ev
        again = AutoBlock(e.auto_fd(), np.zeros(4, np.int64))    # a restarted ingress
        assert list(again.expiry) == [other]
        time.sleep(max(0.0, (ab.expiry[other] - time.monotonic_ns()) / 1e9) + 0.05)
        assert e.auto_entries(time.monotonic_ns()) == []          # expired, not yet swept
        assert _served(net, net.other)
        ab.sweep(time.monotonic_ns())
        assert len(e.bpf[b"autoblk"]) == 0 and ab.expiry == {}
    finally:
        with net.inside(net.server_ns):
            e.detach()
