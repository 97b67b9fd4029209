"""The harness on short runs against real ZeroMQ servers: the echo baseline process, an
in-test error server and a deliberately slow server. Bounded: each run is a few seconds."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import zmq

from bench.echo import EchoServer
from bench.engine_proc import free_port
from bench.loadgen import LoadSpec, run
from bench.phase import run_phase
from tests.bench.error_server import ErrorServer


@pytest.fixture
def echo():
    srv = EchoServer(f"tcp://127.0.0.1:{free_port()}")
    yield srv
    if srv.proc.poll() is None:
        srv.stop()


def nearest_rank(samples: np.ndarray, p: float) -> int:
    """The HdrHistogram percentile definition on raw samples: rank round(p/100 * n), >= 1."""
    s = np.sort(samples)
    return int(s[max(1, int(p / 100.0 * len(s) + 0.5)) - 1])


def test_echo_phase_counts_add_up_and_echo_process_handled_them(echo):
    spec = LoadSpec(echo.bind, kind="echo", clients=6, duration_s=1.5, warmup_s=0.3,
                    keep_samples=True, drain_s=1.0)
    r = run_phase("echo", spec, processes=2, server_pids=(echo.pid,), progress=False)
    handled = echo.stop()
    assert r.processes == 2
    assert r.sent > 0
    assert r.sent == r.ok + r.error_count
    assert r.errors == {} and r.decision_errors == {}
    assert r.hist.get_total_count() == r.sent == len(r.samples)
    assert r.events_ok == r.ok
    # the echo process itself answered every measured request (plus the warm-up ones)
    assert handled >= r.sent
    assert r.server_cpu_s is not None and r.server_cpu_s > 0
    assert r.load_cpu_s > 0
    # per thread: the echo's main thread and libzmq's I/O thread, adding up to the total
    assert any(k.endswith(": main") for k in r.server_threads)
    assert any("ZMQbg/IO" in k for k in r.server_threads)
    assert sum(r.server_threads.values()) == pytest.approx(r.server_cpu_s, rel=0.1, abs=0.05)
    assert r.server_write_bytes == 0                 # the echo writes no file


def test_percentiles_come_from_the_merged_histogram(echo):
    spec = LoadSpec(echo.bind, kind="echo", clients=4, duration_s=1.0, warmup_s=0.0,
                    keep_samples=True, drain_s=1.0)
    r = run_phase("echo", spec, processes=2, progress=False)
    samples = np.array(r.samples, dtype=np.int64)
    assert len(samples) > 100
    for p in (50.0, 90.0, 99.0, 99.9):
        want = nearest_rank(samples, p)
        got = r.hist.get_value_at_percentile(p)
        assert abs(got - want) <= want * 0.001 + 1, (p, got, want)
        # and numpy's own percentile lies between the neighbouring ranks
        lo, hi = np.percentile(samples, p, method="lower"), np.percentile(samples, p, method="higher")
        assert lo * 0.999 - 1 <= got <= hi * 1.001 + 1 or abs(got - want) <= want * 0.001 + 1
    assert abs(r.hist.get_max_value() - samples.max()) <= samples.max() * 0.001 + 1
    assert abs(r.hist.get_min_value() - samples.min()) <= samples.min() * 0.001 + 1


def test_errors_are_counted_not_hidden():
    srv = ErrorServer()
    try:
        spec = LoadSpec(srv.addr, kind="engine", clients=3, duration_s=1.5, warmup_s=0.0,
                        batch=2, timeout_ms=300, drain_s=0.6)
        r = run(spec)
    finally:
        srv.close()
    c = srv.counts
    assert c["received"] == r.sent > 7
    assert r.sent == r.ok + sum(r.errors.values())
    assert r.ok == c["ok"]
    assert r.errors.get("OVERLOADED", 0) == c["overloaded"] > 0
    assert r.errors.get("BAD_REPLY", 0) == c["garbage"] > 0
    assert r.errors.get("NO_REPLY", 0) == c["dropped"] > 0
    assert r.decision_errors.get("TIMEOUT", 0) == c["timeout_decisions"] > 0
    assert r.events_ok == 2 * r.ok


class SlowServer:
    """Answers one request at a time, each after at least ``delay_s`` (a sleep)."""

    def __init__(self, delay_s: float):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.addr = f"tcp://127.0.0.1:{self.sock.bind_to_random_port('tcp://127.0.0.1')}"
        self.delay_s = delay_s
        self.stop = False
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        while not self.stop:
            if self.sock.poll(50):
                frames = self.sock.recv_multipart()
                time.sleep(self.delay_s)
                self.sock.send_multipart(frames)

    def close(self):
        self.stop = True
        self.thread.join(5)
        self.sock.close(0)
        self.ctx.term()


def test_open_loop_counts_waiting_from_intended_send_time():
    """1 client, 100 req/s intended, server >= 50 ms per request: at most ~20 are sent in
    1 s, request k is intended at k*10 ms but sent at >= k*50 ms, so the corrected latency
    grows with k (coordinated omission), and the shortfall is reported as unsent."""
    srv = SlowServer(0.05)
    try:
        open_r = run(LoadSpec(srv.addr, kind="echo", clients=1, duration_s=1.0, warmup_s=0.0,
                              rate=100.0, keep_samples=True, drain_s=1.0))
        closed_r = run(LoadSpec(srv.addr, kind="echo", clients=1, duration_s=1.0, warmup_s=0.0,
                                keep_samples=True, drain_s=1.0))
    finally:
        srv.close()
    assert open_r.sent <= 21 and open_r.unsent >= 100 - 21 - 1
    assert open_r.sent == open_r.ok
    lat = np.array(open_r.samples)
    # k-th sent request waited at least k*40 ms beyond its own 50 ms service time
    assert all(lat[k] >= 50e6 + k * 40e6 * 0.99 for k in range(len(lat)))
    assert closed_r.unsent == 0
    assert min(closed_r.samples) >= 50e6
    assert max(lat) > 3 * max(50e6, np.median(closed_r.samples)) or max(lat) >= 0.6e9


def test_open_loop_reaches_a_modest_rate_against_echo(echo):
    r = run(LoadSpec(echo.bind, kind="echo", clients=4, duration_s=1.0, warmup_s=0.2,
                     rate=200.0, drain_s=1.0))
    assert r.errors == {}
    # 200 intended in the window; sent + unsent accounts for every one of them
    assert r.sent + r.unsent in (199, 200, 201)


def test_a_duplicate_decision_is_counted_not_taken_for_an_evaluation():
    """A reply from the engine's idempotency window means the bench reused a (client id,
    request id): counted as DUPLICATE, in both transports."""
    from bench.replies import DUPLICATE, classify
    from shm.runtime.config import load_config
    from shm.types import RESPONSE_SLOT_DTYPE, DecisionFlag
    from ingress.codec import Codec, Request
    codec = Codec(load_config(None).schema, 16, 1 << 20)
    for kind, n in (("binary", 1), ("binary", 2), ("json", 1), ("json", 2)):   # binary N = 1
        slots = np.zeros(n, RESPONSE_SLOT_DTYPE)                          # has its own branch
        slots["generation"] = 1
        req = Request(kind, 9, 5, 0, 0, np.zeros(n, codec._dtype))
        assert classify("engine", kind, b"", codec.encode_reply(req, slots), 9) == (None, [])
        dup = slots.copy()
        dup["flags"][-1] |= np.uint8(DecisionFlag.DUPLICATE)
        assert classify("engine", kind, b"", codec.encode_reply(req, dup), 9) == (None, [DUPLICATE])
        late = slots.copy()
        late["flags"][-1] |= np.uint8(DecisionFlag.DEFAULT_TIMEOUT | DecisionFlag.DUPLICATE)
        assert classify("engine", kind, b"", codec.encode_reply(req, late), 9) == \
            (None, ["TIMEOUT", DUPLICATE])
        assert classify("engine", kind, b"", codec.encode_reply(req, slots), 8)[0] == "BAD_REPLY"


def test_an_error_reply_of_a_decisions_length_is_read_as_an_error():
    """The one-decision fast path keys on the reply's length: an error reply whose message
    makes it exactly that long must still count by its code, and a header that does not
    parse must count BAD_REPLY."""
    from bench.replies import BAD_REPLY, classify
    from shm.types import ErrorCode
    from ingress import wire
    msg = b"m" * wire.DECISION_SIZE
    err = wire.pack_reply_header(int(ErrorCode.OVERLOADED), 0, 9, len(msg)) + msg
    assert len(err) == wire.REPLY_HEADER_SIZE + wire.DECISION_SIZE
    assert classify("engine", "binary", b"", err, 9) == ("OVERLOADED", [])
    assert classify("engine", "binary", b"", b"\0" * len(err), 9) == (BAD_REPLY, [])


def test_worker_stalls_are_the_difference_between_two_reads():
    from bench.engine_proc import stall_delta

    def stats(pickup, journal):
        return {"risk_worker_stalls": [
            {"worker": "0", "phase": "pickup", "value": pickup},
            {"worker": "0", "phase": "journal", "value": journal},
            {"worker": "1", "phase": "kernel", "value": 4.0}]}
    assert stall_delta(stats(3.0, 1.0), stats(5.0, 1.0)) == {"0 pickup": 2}
    assert stall_delta(stats(3.0, 1.0), stats(3.0, 1.0)) == {}
    assert stall_delta(None, stats(3.0, 1.0)) is None


def test_free_port_gives_each_xdist_worker_its_own_block(monkeypatch):
    seen = {}
    for worker in ("gw0", "gw1"):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        seen[worker] = {free_port() for _ in range(20)}
    assert all(20000 <= p < 22000 for p in seen["gw0"])
    assert all(22000 <= p < 24000 for p in seen["gw1"])
    assert len(seen["gw0"]) == 20                   # a worker does not hand one port out twice
