"""ingress.zmqc against a real pyzmq peer: compiled code receives and sends on a pyzmq socket
through the libzmq pyzmq loaded (multi-frame, empty and large frames, EAGAIN), and a closed
socket's handle never reaches libzmq."""
from __future__ import annotations

import numpy as np
import pytest
import zmq
from numba import njit

from ingress import zmqc


@pytest.fixture
def router_dealer():
    ctx = zmq.Context()
    r, d = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    r.setsockopt(zmq.LINGER, 0)
    d.setsockopt(zmq.LINGER, 0)
    try:
        r.bind("inproc://zmqc-test")
        d.connect("inproc://zmqc-test")
        yield r, d
    finally:
        d.close(0)
        r.close(0)
        ctx.term()


@njit(cache=True)
def _recv_message(h, msg, buf, sizes, flags):
    """Every frame of one message into ``buf`` back to back; returns the frame count (sizes in
    ``sizes``) or -errno."""
    off = 0
    k = 0
    while True:
        size, more = zmqc.recv_frame(h, msg, buf, off, flags)
        if size < 0:
            return size
        sizes[k] = size
        k += 1
        off += min(size, buf.shape[0] - off)
        flags = 0                               # the rest of a message is there already
        if not more:
            return k


@njit(cache=True)
def _send_message(h, buf, sizes, k):
    off = 0
    for j in range(k):
        r = zmqc.send_frame(h, buf, off, sizes[j], zmqc.SNDMORE if j < k - 1 else zmqc.DONTWAIT)
        if r < 0:
            return r
        off += sizes[j]
    return 0


def _recv(sock, cap=1 << 16, flags=0):
    buf, sizes = np.zeros(cap, np.uint8), np.zeros(64, np.int64)
    k = _recv_message(zmqc.handle(sock), zmqc.new_msg(), buf, sizes, flags)
    if k < 0:
        return k, []
    out, off = [], 0
    for s in sizes[:k]:
        out.append(buf[off:off + s].tobytes())
        off += s
    return k, out


def test_multi_frame_and_empty_frames_round_trip(router_dealer):
    r, d = router_dealer
    d.send_multipart([b"", b"abc", b"", b"x" * 300])
    assert r.poll(2000)
    k, frames = _recv(r)
    assert k == 5 and frames[1:] == [b"", b"abc", b"", b"x" * 300]
    ident = frames[0]
    assert ident                                  # the ROUTER's identity frame
    reply = [ident, b"", b"", b"back"]
    buf = np.frombuffer(b"".join(reply), np.uint8).copy()
    sizes = np.array([len(f) for f in reply], np.int64)
    assert _send_message(zmqc.handle(r), buf, sizes, len(reply)) == 0
    assert d.poll(2000)
    assert d.recv_multipart() == [b"", b"", b"back"]


def test_large_frame_is_copied_whole_and_truncation_is_reported(router_dealer):
    r, d = router_dealer
    big = np.random.default_rng(1).integers(0, 256, 3 << 20, dtype=np.uint8).tobytes()
    d.send_multipart([big])
    assert r.poll(2000)
    k, frames = _recv(r, cap=4 << 20)
    assert k == 2 and frames[1] == big
    d.send_multipart([big])
    assert r.poll(2000)
    buf, sizes = np.zeros(1 << 20, np.uint8), np.zeros(8, np.int64)
    k = _recv_message(zmqc.handle(r), zmqc.new_msg(), buf, sizes, 0)
    assert k == 2 and sizes[1] == len(big)          # full size reported, bytes that fit kept
    n0 = sizes[0]
    assert buf[n0:].tobytes() == big[:len(buf) - n0]


def test_dontwait_on_an_empty_queue_is_eagain(router_dealer):
    r, _ = router_dealer
    k, _ = _recv(r, flags=zmqc.DONTWAIT)
    assert k == -zmqc.EAGAIN
    # still usable afterwards
    d = router_dealer[1]
    d.send(b"later")
    assert r.poll(2000)
    assert _recv(r)[1][1:] == [b"later"]


def test_send_to_an_unknown_peer_is_an_error_code_not_a_crash(router_dealer):
    r, _ = router_dealer
    r.setsockopt(zmq.ROUTER_MANDATORY, 1)
    buf = np.frombuffer(b"nobodyhello", np.uint8).copy()
    assert zmqc.send_frame(zmqc.handle(r), buf, 0, 6, zmqc.SNDMORE) == -zmq.EHOSTUNREACH


def test_a_closed_socket_handle_is_refused_before_compiled_code():
    ctx = zmq.Context()
    s = ctx.socket(zmq.ROUTER)
    s.close(0)
    with pytest.raises(zmq.ZMQError) as e:
        zmqc.handle(s)
    assert e.value.errno == zmq.ENOTSOCK
    ctx.term()


def test_clock_is_time_monotonic_ns():
    import time
    ts = np.zeros(2, np.int64)
    a = time.monotonic_ns()
    b = zmqc.monotonic_ns(ts)
    c = time.monotonic_ns()
    assert a <= b <= c


def test_libzmq_is_the_one_pyzmq_loaded():
    assert zmqc.zmq_msg_recv is not None
    # the same library: a socket pyzmq made is an object this libzmq knows (EAGAIN, not ENOTSOCK)
    ctx = zmq.Context()
    s = ctx.socket(zmq.PULL)
    s.bind("inproc://zmqc-same")
    buf = np.zeros(8, np.uint8)
    assert zmqc.recv_frame(zmqc.handle(s), zmqc.new_msg(), buf, 0, zmqc.DONTWAIT)[0] == -zmq.EAGAIN
    s.close(0)
    ctx.term()
    assert zmqc._maps_path() is not None and "libzmq" in zmqc._maps_path()
