"""Binary batch requests with ingress.compiled_loop on and off: the general path's replies
are sent from compiled code when it is on (ingress._batch_kernels.finish_send), from Python
when it is off. The same sequence (batch sizes 1, 2, 63, 64, 65 and ingress.max_batch, with
and without an empty delimiter frame, keyed and not, events of both workers in one request,
bad counts, values and lengths, retries decided and in flight, an idempotency conflict) sent
to two engines of two workers each gets byte-identical replies, and the counters agree."""
from __future__ import annotations

import time

import numpy as np
import pytest

from bench.events import random_events
from ingress import wire
from ingress.admission import Shards
from shm.runtime.config import load_config
from shm.types import DecisionFlag, ErrorCode
from tests.engine.test_compiled_loop import ON_LINE, counters, dealer, off_and_on, recv
from tests.engine.test_reliability import frozen_worker

MAX_BATCH = 130
SIZES = (1, 2, 63, 64, 65, MAX_BATCH)


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    """(off, on), two workers each."""
    yield from off_and_on(tmp_path_factory, "batch", 2,
                          {"default_deadline_ms": 10_000, "max_batch": MAX_BATCH})


def exchange(engine, steps: list) -> list:
    """Each (delimiter?, body) sent on a socket of its shape and answered before the next."""
    socks = {d: dealer(engine) for d in (True, False)}
    try:
        out = []
        for delim, body in steps:
            socks[delim].send_multipart([b"", body] if delim else [body])
            out.append(recv(socks[delim]))
        return out
    finally:
        for s in socks.values():
            s.close(0)


def retried_in_flight(engine, body: bytes) -> list:
    """``body`` and a retry of it from another socket while worker 0 (holding some of its
    events) is stopped: the retry is attached to the first copy. The two replies."""
    socks = [dealer(engine) for _ in range(2)]
    try:
        with frozen_worker(engine):
            for s in socks:
                s.send_multipart([b"", body])
                time.sleep(0.2)       # read while the worker is stopped, in this order
        return [recv(s) for s in socks]
    finally:
        for s in socks:
            s.close(0)


def test_batch_replies_are_byte_identical_with_the_compiled_loop_on_and_off(engines):
    off, on = engines
    assert ON_LINE in on.output() and ON_LINE not in off.output()
    schema = load_config().schema
    h = schema.hash
    rng = np.random.default_rng(64)
    batches = {n: random_events(rng, schema, n) for n in SIZES}
    workers = Shards(schema, 2).of(batches[64])
    assert 0 < workers.sum() < 64                  # one request, events for both workers
    steps = [(True, wire.pack_request(h, batches[n], 11, n)) for n in SIZES]        # keyed
    steps += [(False, wire.pack_request(h, batches[n], 0, 1000 + n)) for n in SIZES]  # no key
    nan = random_events(rng, schema, 64)
    nan[next(f for f in schema.dtype.names if schema.dtype[f].kind == "f")][40] = np.nan
    too_many = random_events(rng, schema, MAX_BATCH + 1)
    steps += [(True, wire.pack_request(h, too_many, 11, 500)),                      # BAD_COUNT
              (True, wire.pack_request(h, nan, 11, 501)),                           # NON_FINITE
              (False, wire.pack_request(h, batches[64], 11, 502)[:-7]),             # BAD_LENGTH
              (True, wire.pack_request(h, batches[64], 11, 64)),                    # retry
              (False, wire.pack_request(h, batches[65], 11, 65)),                   # retry
              (True, wire.pack_request(h, batches[63], 11, 64))]                    # conflict
    frozen = wire.pack_request(h, random_events(rng, schema, 64), 12, 1)
    got = {e: (exchange(e, steps), retried_in_flight(e, frozen)) for e in (off, on)}
    assert got[off][0] == got[on][0]
    assert got[off][1] == got[on][1]
    # the sequence did what it is meant to: decisions, errors, DUPLICATEs, a conflict
    replies = [wire.unpack_reply(r) for r in got[on][0] + got[on][1]]
    codes = [r[1] for r in replies]
    assert codes == [0] * 2 * len(SIZES) + [
        int(ErrorCode.BAD_COUNT), int(ErrorCode.NON_FINITE), int(ErrorCode.BAD_LENGTH), 0, 0,
        int(ErrorCode.IDEMPOTENCY_CONFLICT), 0, 0], codes
    assert [len(r[2]) for r in replies[:2 * len(SIZES)]] == list(SIZES) * 2
    dup = int(DecisionFlag.DUPLICATE)
    for i in (-5, -4, -1):                          # the retries, decided and in flight
        assert np.all(replies[i][2]["flags"] & dup), i
    assert not np.any(replies[-2][2]["flags"] & dup)
    assert counters(off) == counters(on)
