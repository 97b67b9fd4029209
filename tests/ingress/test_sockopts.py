"""ingress.sockopts against real ZeroMQ sockets: the same answers as pyzmq's Socket.get, and
the backend's send delivers what Socket.send would."""
from __future__ import annotations

import pytest
import zmq

from ingress.sockopts import SockOpts, backend_send


@pytest.fixture
def router_dealer():
    """A ROUTER bound and a DEALER connected over inproc://."""
    ctx = zmq.Context()
    r, d = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    try:
        r.bind("inproc://sockopts-test")
        d.connect("inproc://sockopts-test")
        yield r, d
    finally:
        d.close(0)
        r.close(0)
        ctx.term()


def test_events_and_rcvmore_match_pyzmq(router_dealer):
    r, d = router_dealer
    opts = SockOpts(r)
    assert opts.direct                        # pyzmq's libzmq was found
    assert opts.events() & zmq.POLLIN == 0 == r.get(zmq.EVENTS) & zmq.POLLIN
    d.send_multipart([b"", b"a", b"body"])
    assert r.poll(2000)
    assert opts.events() & zmq.POLLIN and r.get(zmq.EVENTS) & zmq.POLLIN
    frames, more = [r.recv()], []
    while True:
        m = opts.rcvmore()
        assert m == r.get(zmq.RCVMORE)
        more.append(m)
        if not m:
            break
        frames.append(r.recv())
    assert frames[1:] == [b"", b"a", b"body"] and more == [1, 1, 1, 0]
    assert opts.events() & zmq.POLLIN == 0


def test_backend_send_sends_frames_like_socket_send(router_dealer):
    r, d = router_dealer
    send = backend_send(d)
    assert send.__func__ is not zmq.Socket.send        # the compiled one, not the wrapper
    send(b"", int(zmq.SNDMORE))
    send(b"body", int(zmq.NOBLOCK))
    assert r.poll(2000)
    ident, *rest = r.recv_multipart()
    assert rest == [b"", b"body"]
    back = backend_send(r)
    back(ident, int(zmq.SNDMORE))
    back(b"reply")
    assert d.poll(2000) and d.recv() == b"reply"
