"""ingress.compiled_loop against the Python loop: the same request sequence (fast-path binary
requests, a batch, JSON, malformed and non-finite requests, a retry while in flight and
after, an idempotency conflict, one over ingress.max_inflight) sent to two engines, one per
setting, gets byte-identical replies, and the request counters agree."""
from __future__ import annotations

import json
import time
from contextlib import ExitStack

import numpy as np
import pytest
import zmq

from bench.engine_proc import EngineProcess
from bench.events import random_events, records_to_json
from ingress import wire
from shm.runtime.config import load_config
from shm.types import DecisionFlag, ErrorCode
from tests.engine.test_metrics import scrape
from tests.engine.test_reliability import frozen_worker

MAX_INFLIGHT = 4
ON_LINE = "ingress.compiled_loop=true"


def off_and_on(tmp_path_factory, name: str, workers: int, ingress: dict):
    """Yield (off, on): two engines, ``ingress.compiled_loop`` false and true, launched
    together so their start-ups overlap; each must stop with exit 0."""
    with ExitStack() as stack:
        engs = []
        for on in (False, True):
            e = EngineProcess(tmp_path_factory.mktemp(f"{name}{int(on)}"), workers=workers,
                              overrides={"ingress": {**ingress, "compiled_loop": on}})
            stack.callback(e.close)
            engs.append(e.launch())
        for e in engs:
            e.wait_serving()
        yield engs
        for e in engs:
            assert e.stop() == 0, e.output()


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    yield from off_and_on(tmp_path_factory, "loop", 1,
                          {"default_deadline_ms": 10_000, "max_inflight": MAX_INFLIGHT,
                           "max_inflight_per_peer": MAX_INFLIGHT})


@pytest.fixture(scope="module")
def schema():
    return load_config().schema



def dealer(engine) -> zmq.Socket:
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.linger = 0
    s.connect(engine.endpoint)
    return s


def recv(s: zmq.Socket) -> bytes:
    assert s.poll(20_000), "no reply within 20 s"
    return s.recv_multipart()[-1]


def one_by_one(engine, bodies: list) -> list:
    """Each body sent with an empty delimiter and answered before the next."""
    s = dealer(engine)
    try:
        out = []
        for b in bodies:
            s.send_multipart([b"", b])
            out.append(recv(s))
        return out
    finally:
        s.close(0)


def while_frozen(engine, bodies: list, retry_of: int) -> list:
    """With the worker stopped, one socket each: ``bodies[:-2]``, a retry of
    ``bodies[retry_of]`` (attached to it: admission is asked first, so while under
    max_inflight), ``bodies[-2]`` (the limit reached), ``bodies[-1]`` (one too many); then
    thawed. The replies in that order."""
    order = bodies[:-2] + [bodies[retry_of]] + bodies[-2:]
    socks = [dealer(engine) for _ in order]
    try:
        with frozen_worker(engine):
            for s, b in zip(socks, order):
                s.send_multipart([b"", b])
                time.sleep(0.05)      # in this order (one socket each: no order otherwise)
            time.sleep(0.5)           # every request read while the worker is stopped
        return [recv(s) for s in socks]
    finally:
        for s in socks:
            s.close(0)


def counters(engine) -> dict:
    m = scrape(engine.metrics_url)
    keep = ("risk_requests_total", "risk_overloaded_total", "risk_decisions_total",
            "risk_deduplicated_total")
    return {k: v for k, v in m.items() if k[0] in keep}


def test_replies_are_byte_identical_with_the_compiled_loop_on_and_off(engines, schema):
    off, on = engines
    assert ON_LINE in on.output() and ON_LINE not in off.output()
    rng = np.random.default_rng(22)
    h = schema.hash
    recs = [random_events(rng, schema, 1) for _ in range(12)]
    batch = random_events(rng, schema, 3)
    nan = random_events(rng, schema, 1)
    nan[next(n for n in schema.dtype.names if schema.dtype[n].kind == "f")] = np.nan
    bad_magic = bytearray(wire.pack_request(h, recs[0], 9, 1))
    bad_magic[0] ^= 0xFF
    sequence = [wire.pack_request(h, r, 7, i + 1) for i, r in enumerate(recs[:8])]      # fast
    sequence += [wire.pack_request(h, recs[8], 0, 100),                                 # no key
                 wire.pack_request(h, batch, 7, 101),                                   # batch
                 json.dumps({"request_id": 102, "client_id": 7,
                             "events": records_to_json(schema, recs[9])}).encode(),     # JSON
                 bytes(bad_magic),                                                      # malformed
                 wire.pack_request(h, nan, 7, 103),                                     # NaN
                 wire.pack_request(h, recs[0], 7, 1),                                   # retry: decided
                 wire.pack_request(h, recs[1], 7, 1),                                   # conflict
                 b"{not json"]
    frozen = [wire.pack_request(h, r, 8, 200 + i) for i, r in enumerate(recs[:MAX_INFLIGHT + 1])]
    got = {}
    for eng in (off, on):
        got[eng] = (one_by_one(eng, sequence), while_frozen(eng, frozen, retry_of=1))
    assert got[off][0] == got[on][0]
    assert got[off][1] == got[on][1]
    # the sequence did what it is meant to: decisions, errors, a DUPLICATE, one OVERLOADED
    codes = [wire.unpack_reply(r)[1] for r in got[on][1]]
    assert codes == [0] * (MAX_INFLIGHT + 1) + [int(ErrorCode.OVERLOADED)], codes
    dec = wire.unpack_reply(got[on][1][MAX_INFLIGHT - 1])[2]
    assert dec["flags"][0] & int(DecisionFlag.DUPLICATE)
    assert counters(off) == counters(on)
