"""ingress.zmqc's sender capture (rules that block a source, ingress.autoblock): with
new_msg()'s CAPTURE word set, recv_frame leaves the message's Peer-Address in its PEER words
(shm.ipv6.peer_key's int: IPv4 mapped, IPv6 as is); with it clear, they are 0 (nothing read);
0 for a sender without an address (ipc://). The Python receive (ingress.autoblock.PeerRecv,
``ingress.compiled_loop: false``) reads the same int and the same bytes, through the compiled
receive (a socket with MAXMSGSIZE, as the router's) or pyzmq's Frame (without); the compiled
parser agrees with ipaddress on every address getnameinfo writes."""
from __future__ import annotations

import ipaddress
import random
from types import SimpleNamespace

import numpy as np
import pytest
import zmq

from ingress import zmqc
from ingress.autoblock import PeerRecv
from shm.ipv6 import peer_key
from tests.ingress.test_zmqc import _recv_message


def _pair(ctx, endpoint, host="127.0.0.1"):
    r, d = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    for s in (r, d):
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.IPV6, int(":" in host))
    port = r.bind_to_random_port(f"tcp://{host}") if endpoint == "tcp" else None
    if port is None:
        r.bind(endpoint)
    d.connect(f"tcp://{host}:{port}" if port else endpoint)
    return r, d


@pytest.mark.parametrize("capture", [0, 1])
@pytest.mark.parametrize("host, sender", [("127.0.0.1", "127.0.0.1"), ("[::1]", "::1")])
def test_peer_of_a_tcp_message_only_when_captured(capture, host, sender):
    ctx = zmq.Context()
    r, d = _pair(ctx, "tcp", host)
    try:
        msg = zmqc.new_msg()
        msg[zmqc.PEER:zmqc.PEER + 2] = 12345      # a stale value must never survive a receive
        msg[zmqc.CAPTURE] = capture
        d.send(b"hello")
        assert r.poll(5000)
        buf, sizes = np.zeros(4096, np.uint8), np.zeros(8, np.int64)
        assert _recv_message(zmqc.handle(r), msg, buf, sizes, 0) == 2
        assert zmqc.peer_of(msg) == (peer_key(sender) if capture else 0)

        for maxmsgsize in (-1, 4096):                      # the Python receive, same sender
            r.setsockopt(zmq.MAXMSGSIZE, maxmsgsize)
            fast = SimpleNamespace(peer_now=7)
            d.send_multipart([b"", b"body"])
            d.send_multipart([b"second"])
            assert r.poll(5000)
            r.recv()                                       # the identity frame
            pr = PeerRecv()
            assert pr.recv(r, fast) == b"" and fast.peer_now == peer_key(sender)
            assert r.get(zmq.RCVMORE) and r.recv() == b"body" and not r.get(zmq.RCVMORE)
            fast.peer_now = 7
            r.recv()
            assert pr.recv(r, fast) == b"second" and fast.peer_now == peer_key(sender)
    finally:
        d.close(0)
        r.close(0)
        ctx.term()


def test_a_sender_without_an_address_is_zero(tmp_path):
    ctx = zmq.Context()
    r, d = _pair(ctx, f"ipc://{tmp_path}/peer.sock")
    try:
        msg = zmqc.new_msg()
        msg[zmqc.CAPTURE] = 1
        d.send(b"hello")
        assert r.poll(5000)
        buf, sizes = np.zeros(4096, np.uint8), np.zeros(8, np.int64)
        assert _recv_message(zmqc.handle(r), msg, buf, sizes, 0) == 2
        assert zmqc.peer_of(msg) == 0
        for maxmsgsize in (-1, 4096):
            r.setsockopt(zmq.MAXMSGSIZE, maxmsgsize)
            fast = SimpleNamespace(peer_now=7)
            d.send(b"hello")
            assert r.poll(5000)
            r.recv()
            assert PeerRecv().recv(r, fast) == b"hello" and fast.peer_now == 0
    finally:
        d.close(0)
        r.close(0)
        ctx.term()


def _parsed(text: str) -> int:
    b = np.frombuffer(b"xx" + text.encode() + b"yy", np.uint8)    # bytes around: not read
    hi, lo = zmqc.parse_peer(b, 2, 2 + len(text))
    return int(hi) << 64 | int(lo)


def test_the_compiled_parser_agrees_with_ipaddress():
    """Random addresses written as getnameinfo writes them (compressed, IPv4 mapped), and
    malformed text, which must give 0 (no sender) and never another address."""
    rng = random.Random(7)
    masks = [(1 << 128) - 1, ((1 << 128) - 1) ^ ((1 << 64) - 1), 0xFFFF << 32 | 0xFFFF,
             ((1 << 128) - 1) ^ (0xFFFFFFFF << 32), 0xFFFF << 112 | 0xFF]
    texts = [str(ipaddress.IPv6Address(rng.getrandbits(128) & rng.choice(masks))) for _ in range(2000)]
    texts += [str(ipaddress.IPv4Address(rng.getrandbits(32))) for _ in range(500)]
    texts += ["::FFFF:1.2.3.4", "FD00::B", "1:2:3:4:5:6:7:8", "1::", "::2:3:4:5:6:7:8"]
    for t in texts:
        assert _parsed(t) == peer_key(t), t
    for bad in ["", "::", ":1", "1:", ":::", "1::2::3", "12345::1", "1:2:3:4:5:6:7:8:9", "g::1",
                "1:2:3:4:5:6:7::8", "fe80::1%eth0", "256.1.1.1", "1.2.3", "1.2.3.4.5", "::fffe:1.2.3.4",
                "1..2.3", "1.2.3.4:", "::ffff:1.2.3.4.5", "0.0.0.0x"]:
        assert _parsed(bad) == 0, bad
