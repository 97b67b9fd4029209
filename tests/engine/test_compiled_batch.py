"""Binary batch requests with ingress.compiled_loop on and off: the general path's batches
are admitted (ingress.batchadmit) and their replies sent (ingress._batch_kernels.finish_send)
from compiled code when it is on, from Python when it is off. The same sequence (batch sizes
1..ingress.max_batch, with and without an empty delimiter frame, keyed and not, events of
both workers in one request, every header field wrong once, bad values in several records,
retries decided and in flight, reused keys, a full ring) sent to two engines of two workers
each gets byte-identical replies, and the counters agree."""
from __future__ import annotations

import time

import numpy as np
import pytest

from bench.events import random_events
from ingress import wire
from ingress.batchtable import MAX_ROWS
from ingress.admission import Shards
from shm.runtime.config import load_config
from shm.types import DecisionFlag, ErrorCode
from tests.engine.test_compiled_loop import ON_LINE, counters, dealer, off_and_on, recv
from tests.engine.test_metrics import scrape, value
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


def with_bad(records: np.ndarray, i: int, field: str, raw: bytes) -> np.ndarray:
    """A copy of ``records`` whose record ``i`` has the bytes ``raw`` in ``field``."""
    out = records.copy()
    off = out.dtype.fields[field][1]
    out.view(np.uint8).reshape(len(out), -1)[i, off:off + len(raw)] = np.frombuffer(raw, np.uint8)
    return out


def test_every_batch_size_and_bad_record_is_admitted_alike_with_the_compiled_loop_on_and_off(engines):
    """Sizes 1..MAX_BATCH, keyed and not, split between both workers; a non-finite float or a
    bool byte over 1 in the first, a middle and the last record; every header field wrong
    once; decided retries and reused keys (other events, another count). The compiled
    admission declines what it does not admit, and the general path answers that alone."""
    off, on = engines
    schema = load_config().schema
    h = schema.hash
    rng = np.random.default_rng(130)
    steps, expect = [], []
    for n in range(1, MAX_BATCH + 1):
        steps.append((n % 2 == 0, wire.pack_request(h, random_events(rng, schema, n),
                                                    77 if n % 3 else 0, 10_000 + n)))
        expect.append(0)
    fbool = next(f for f in schema.dtype.names if schema.dtype[f] == np.bool_)
    for n in (1, 2, 64, MAX_BATCH):
        recs = random_events(rng, schema, n)
        for i in sorted({0, n // 2, n - 1}):
            for field, raw, code in (("amount", np.float64(np.nan).tobytes(), ErrorCode.NON_FINITE),
                                     ("amount", np.float64(-np.inf).tobytes(), ErrorCode.NON_FINITE),
                                     (fbool, b"\x02", ErrorCode.OUT_OF_RANGE)):
                steps.append((True, wire.pack_request(h, with_bad(recs, i, field, raw), 78, 20_000 + i)))
                expect.append(int(code))
        steps.append((False, wire.pack_request(h, recs, 78, 20_000 + n)))      # the key unused
        expect.append(0)
    good = random_events(rng, schema, 64)
    body = wire.pack_request(h, good, 79, 1)
    head = wire.REQUEST_HEADER
    bad_headers = [
        (head.pack(wire.REQUEST_MAGIC, wire.PROTOCOL_VERSION + 1, 0, h, 64, 0, 79, 2), ErrorCode.BAD_VERSION),
        (head.pack(wire.REQUEST_MAGIC, wire.PROTOCOL_VERSION, 0x4000, h, 64, 0, 79, 3), ErrorCode.BAD_FLAGS),
        (head.pack(wire.REQUEST_MAGIC, wire.PROTOCOL_VERSION, 0, h ^ 1, 64, 0, 79, 4), ErrorCode.SCHEMA_MISMATCH),
        (head.pack(wire.REQUEST_MAGIC, wire.PROTOCOL_VERSION, 0, h, 0, 0, 79, 5), ErrorCode.BAD_COUNT),
        (head.pack(wire.REQUEST_MAGIC, wire.PROTOCOL_VERSION, 0, h, 63, 0, 79, 6), ErrorCode.BAD_LENGTH),
        (head.pack(wire.REQUEST_MAGIC ^ 1, wire.PROTOCOL_VERSION, 0, h, 64, 0, 79, 7), ErrorCode.BAD_MAGIC)]
    for hdr, code in bad_headers:
        steps.append((True, hdr + body[head.size:]))
        expect.append(int(code))
    retry = int(wire.HeaderFlag.RETRY)
    steps += [(True, body),                                                     # decided
              (False, body),                                                    # its retry
              (True, wire.pack_request(h, good, 79, 1, flags=retry)),           # flagged retry
              (True, wire.pack_request(h, with_bad(good, 5, "amount", b"\0" * 7 + b"\x40"), 79, 1)),
              (True, wire.pack_request(h, good[:63], 79, 1)),                   # another count
              (True, wire.pack_request(h, good, 79, 8, deadline_us=3_000_000))] # a deadline
    expect += [0, 0, 0, int(ErrorCode.IDEMPOTENCY_CONFLICT), int(ErrorCode.IDEMPOTENCY_CONFLICT), 0]
    got = {e: exchange(e, steps) for e in (off, on)}
    assert got[off] == got[on]
    replies = [wire.unpack_reply(r) for r in got[on]]
    assert [r[1] for r in replies] == expect
    assert [len(r[2]) for r in replies[:MAX_BATCH]] == list(range(1, MAX_BATCH + 1))
    dup = int(DecisionFlag.DUPLICATE)
    assert not np.any(replies[-6][2]["flags"] & dup)
    assert np.all(replies[-5][2]["flags"] & dup) and np.all(replies[-4][2]["flags"] & dup)
    assert counters(off) == counters(on)


def test_a_full_ring_refuses_the_same_batches_with_the_compiled_loop_on_and_off(engines):
    """While worker 0 is stopped, 31 batches of MAX_BATCH of its events leave 66 slots of
    its 4096: a batch of 67 of its events and 63 of worker 1's is refused OVERLOADED (ring
    full) as a whole, one of 66 and 1 then fits exactly, one of worker 1's alone still
    does, and 2 more of worker 0's do not. Both admissions answer alike, the refusals at
    once (the last message is one: every message was read before the thaw); worker 1's
    batch may be answered before or between them (it runs), so replies are matched by id."""
    off, on = engines
    schema = load_config().schema
    h = schema.hash
    rng = np.random.default_rng(4096)
    pool = random_events(rng, schema, 12_000)
    of = Shards(schema, 2).of(pool)
    w0, w1 = pool[of == 0], pool[of == 1]
    mine = [w0[i * MAX_BATCH:(i + 1) * MAX_BATCH] for i in range(31)]
    at = 31 * MAX_BATCH
    batches = mine + [np.concatenate([w0[at:at + 67], w1[:63]]),
                      np.concatenate([w1[63:64], w0[at + 67:at + 133]]),
                      w1[64:64 + MAX_BATCH], w0[at + 133:at + 135]]
    bodies = [wire.pack_request(h, b, 90 if i % 2 else 0, 30_000 + i) for i, b in enumerate(batches)]

    def run(engine) -> list:
        s = dealer(engine)
        try:
            with frozen_worker(engine):
                for b in bodies:
                    s.send_multipart([b])
                early = []                                # answered before the thaw
                while sum(wire.unpack_reply(r)[1] != 0 for r in early) < 2 and len(early) < len(bodies):
                    early.append(recv(s))
            rest = [recv(s) for _ in range(len(bodies) - len(early))]
            return ([r for r in early if wire.unpack_reply(r)[1] != 0],
                    sorted(early + rest, key=lambda r: wire.unpack_reply(r)[0]))
        finally:
            s.close(0)

    got = {e: run(e) for e in (off, on)}
    assert got[off] == got[on]
    refused, replies = got[on]
    assert [wire.unpack_reply(r)[:2] for r in refused] == [(30_031, int(ErrorCode.OVERLOADED)),
                                                           (30_034, int(ErrorCode.OVERLOADED))]
    decided = [r for r in replies if wire.unpack_reply(r)[1] == 0]
    assert [len(wire.unpack_reply(r)[2]) for r in decided] == [len(b) for b in batches[:31] + batches[32:34]]
    assert counters(off) == counters(on)


def test_batches_past_the_table_split_between_workers_and_expired_are_answered_alike(engines):
    """The compiled loop keeps binary batches in a table of MAX_ROWS rows (ingress.batchtable).
    While worker 0 is stopped: MAX_ROWS + 4 batches of one event for each worker (the row
    is filed by two drains; the last four find the table full and take the general path),
    then from another socket one such batch with a 300 ms deadline, answered at its
    deadline (worker 1's decision, worker 0's event defaulted TIMEOUT) while the worker is
    still stopped. Both engines answer byte for byte alike, and count alike."""
    off, on = engines
    schema = load_config().schema
    h = schema.hash
    rng = np.random.default_rng(128)
    pool = random_events(rng, schema, 4 * MAX_ROWS)
    of = Shards(schema, 2).of(pool)
    w0, w1 = pool[of == 0], pool[of == 1]
    count = MAX_ROWS + 4
    assert len(w0) > count and len(w1) > count
    bodies = [wire.pack_request(h, np.concatenate([w1[i:i + 1], w0[i:i + 1]]), 91 if i % 2 else 0,
                                40_000 + i) for i in range(count)]
    late = wire.pack_request(h, np.concatenate([w0[count:count + 1], w1[count:count + 1]]), 92, 1,
                             deadline_us=300_000)

    def run(engine) -> tuple:
        a, b = dealer(engine), dealer(engine)
        try:
            with frozen_worker(engine):
                for body in bodies:
                    a.send_multipart([b"", body])
                b.send_multipart([late])
                expired = recv(b)                 # at its deadline, the worker still stopped
            return expired, sorted((recv(a) for _ in bodies), key=lambda r: wire.unpack_reply(r)[0])
        finally:
            a.close(0)
            b.close(0)

    got = {e: run(e) for e in (off, on)}
    assert got[off] == got[on]
    expired, replies = got[on]
    rid, code, dec = wire.unpack_reply(expired)[:3]
    assert rid == 1 and code == 0 and len(dec) == 2
    assert dec["error"].tolist() == [int(ErrorCode.TIMEOUT), 0]
    assert [wire.unpack_reply(r)[:2] for r in replies] == [(40_000 + i, 0) for i in range(count)]
    assert all(len(wire.unpack_reply(r)[2]) == 2 for r in replies)
    assert counters(off) == counters(on)


def test_valid_binary_requests_stay_in_compiled_code(engines):
    """Valid binary requests of 1..MAX_BATCH events, keyed and not, with and without an empty
    delimiter frame, events of both workers: the fast path's and the batch table's, read,
    admitted, filed and answered inside the compiled read and drain
    (ingress._loop_table_kernels): risk_ingress_python_messages_total does not move. A
    request with a bad header does (one message handed to Python), so the count is live."""
    _, on = engines
    schema = load_config().schema
    h = schema.hash
    rng = np.random.default_rng(256)

    def python_messages() -> float:
        return value(scrape(on.metrics_url), "risk_ingress_python_messages_total")

    steps = [(n % 2 == 0, wire.pack_request(h, random_events(rng, schema, n), 93 if n % 3 else 0,
                                            50_000 + n)) for n in range(1, MAX_BATCH + 1)]
    before = python_messages()
    replies = [wire.unpack_reply(r) for r in exchange(on, steps)]
    assert [(r[1], len(r[2])) for r in replies] == [(0, n) for n in range(1, MAX_BATCH + 1)]
    assert python_messages() == before
    bad = wire.pack_request(h, random_events(rng, schema, 64), 93, 60_000)
    bad = bytes([bad[0] ^ 1]) + bad[1:]                                   # its magic
    assert wire.unpack_reply(exchange(on, [(True, bad)])[0])[1] == int(ErrorCode.BAD_MAGIC)
    assert python_messages() == before + 1
