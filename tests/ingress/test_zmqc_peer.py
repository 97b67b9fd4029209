"""ingress.zmqc's sender capture (rules that block a source, ingress.autoblock): with
new_msg()'s CAPTURE word set, recv_frame leaves the message's Peer-Address as a host-order
IPv4 in its PEER word; with it clear, PEER is 0 (nothing read); 0 for a non-IPv4 sender."""
from __future__ import annotations

import numpy as np
import pytest
import zmq

from ingress import zmqc
from tests.ingress.test_zmqc import _recv_message


def _pair(ctx, endpoint):
    r, d = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    for s in (r, d):
        s.setsockopt(zmq.LINGER, 0)
    port = r.bind_to_random_port("tcp://127.0.0.1") if endpoint == "tcp" else None
    if port is None:
        r.bind(endpoint)
    d.connect(f"tcp://127.0.0.1:{port}" if port else endpoint)
    return r, d


@pytest.mark.parametrize("capture", [0, 1])
def test_peer_of_a_tcp_message_only_when_captured(capture):
    ctx = zmq.Context()
    r, d = _pair(ctx, "tcp")
    try:
        msg = zmqc.new_msg()
        msg[zmqc.PEER] = 12345                    # a stale value must never survive a receive
        msg[zmqc.CAPTURE] = capture
        d.send(b"hello")
        assert r.poll(5000)
        buf, sizes = np.zeros(4096, np.uint8), np.zeros(8, np.int64)
        assert _recv_message(zmqc.handle(r), msg, buf, sizes, 0) == 2
        assert msg[zmqc.PEER] == (0x7F000001 if capture else 0)
    finally:
        d.close(0)
        r.close(0)
        ctx.term()


def test_a_sender_without_an_ipv4_address_is_zero(tmp_path):
    ctx = zmq.Context()
    r, d = _pair(ctx, f"ipc://{tmp_path}/peer.sock")
    try:
        msg = zmqc.new_msg()
        msg[zmqc.CAPTURE] = 1
        d.send(b"hello")
        assert r.poll(5000)
        buf, sizes = np.zeros(4096, np.uint8), np.zeros(8, np.int64)
        assert _recv_message(zmqc.handle(r), msg, buf, sizes, 0) == 2
        assert msg[zmqc.PEER] == 0
    finally:
        d.close(0)
        r.close(0)
        ctx.term()
