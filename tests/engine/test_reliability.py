"""Deadlines, overload and idempotent retries against a real engine whose worker is frozen
with SIGSTOP (so "not ready in time" and "ring full" are made to happen, not hoped for)."""
from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from contextlib import contextmanager

import numpy as np
import psutil
import pytest
import zmq

from bench.events import records_to_json
from shm.runtime.config import load_config
from shm.types import ErrorCode
from ingress import wire
from ingress.client import Client, RequestError
from bench.engine_proc import EngineProcess
from bench.events import random_events
from tests.engine.test_metrics import scrape, value

CAPACITY = 64


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    with EngineProcess(tmp_path_factory.mktemp("rel"), workers=1,
                       overrides={"rings": {"capacity": CAPACITY},
                                  "ingress": {"default_deadline_ms": 10_000, "on_timeout": "block"}}) as eng:
        yield eng


@pytest.fixture(scope="module")
def short_deadline_engine(tmp_path_factory):
    """One worker and a 400 ms default deadline: a stopped worker is behind (stuck) after
    800 ms (ingress._fast_kernels.STUCK_FACTOR), so tests stop it past both."""
    with EngineProcess(tmp_path_factory.mktemp("behind"), workers=1,
                       overrides={"ingress": {"default_deadline_ms": 400}}) as eng:
        yield eng


@pytest.fixture(scope="module")
def schema():
    return load_config().schema


@contextmanager
def frozen_worker(engine):
    w = [p for p in psutil.Process(engine.proc.pid).children() if "worker 0" in " ".join(p.cmdline())]
    assert len(w) == 1
    time.sleep(0.2)           # a worker releases its requests just after publishing the replies
    os.kill(w[0].pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(w[0].pid, signal.SIGCONT)


def events_done(engine) -> float:
    return value(scrape(engine.metrics_url), "risk_worker_events_total", worker="0")


def test_deadline_gives_fail_closed_default_flagged_timeout(engine, schema):
    rec = random_events(np.random.default_rng(1), schema, 1)
    with frozen_worker(engine), Client(engine.endpoint, schema, timeout_ms=5000, retries=0) as c:
        t0 = time.monotonic()
        d = c.evaluate_batch(rec, deadline_ms=100)[0]
        elapsed = time.monotonic() - t0
    assert d.action == "block" and "DEFAULT_TIMEOUT" in d.flags and d.error == "TIMEOUT"
    assert elapsed < 4.0          # answered at the deadline, not at the client's timeout


def test_a_timeout_and_the_stall_behind_it_are_logged_with_their_times(engine, schema):
    """The forensics bench.soak relies on: the ingress logs the TIMEOUT (which worker, how old,
    the request still in its ring) and the worker, once it runs again, logs the pickup stall."""
    rec = random_events(np.random.default_rng(2), schema, 1)
    stats_url = engine.metrics_url.replace("/metrics", "/stats")
    before = json.load(urllib.request.urlopen(stats_url, timeout=5))["log"]
    t0 = time.time_ns()
    with frozen_worker(engine), Client(engine.endpoint, schema, timeout_ms=5000, retries=0) as c:
        assert c.evaluate_batch(rec, deadline_ms=60)[0].error == "TIMEOUT"
        time.sleep(0.1)                  # the worker stays stopped well past the deadline
    for _ in range(100):                 # bounded: the thawed worker drains the stale request
        log = json.load(urllib.request.urlopen(stats_url, timeout=5))["log"]
        if len(log["stalls"]) > len(before["stalls"]):
            break
        time.sleep(0.05)
    new_t = [e for e in log["timeouts"] if e["time_ns"] >= t0]
    assert len(new_t) == 1, log["timeouts"]
    assert new_t[0]["worker"] == 0 and new_t[0]["max_age_ns"] >= 60e6 and new_t[0]["timeouts"] == 1
    assert new_t[0]["request_ring_occupancy_max"] >= 1
    pick = [e for e in log["stalls"] if e["time_ns"] >= t0 and e["phase"] == "pickup"]
    assert pick and pick[-1]["ns"] >= 150e6 and pick[-1]["worker"] == 0, log["stalls"]
    assert value(scrape(engine.metrics_url), "risk_worker_stalls_total", worker="0", phase="pickup") >= 1


def send_singles(endpoint: str, schema, rng, n: int, client_id: int) -> list:
    """n DEALER sockets, each sending one single-event request and reading nothing yet."""
    socks = []
    for i in range(n):
        s = zmq.Context.instance().socket(zmq.DEALER)
        s.linger = 0
        s.connect(endpoint)
        s.send_multipart([b"", wire.pack_request(schema.hash, random_events(rng, schema, 1), client_id, i + 1)])
        socks.append(s)
    return socks


def answered_while_frozen(socks: list, n: int, within_s: float = 8.0) -> list[int]:
    """Indexes of the sockets answered while the worker is stopped: waits (bounded, well
    under the 10 s deadline after which the ingress would answer the admitted ones too)
    until ``n`` have replied, so a slow ingress on a loaded machine is not taken for an
    admission; then any further reply already there is counted too."""
    poller = zmq.Poller()
    for s in socks:
        poller.register(s, zmq.POLLIN)
    got: set[int] = set()
    end = time.monotonic() + within_s
    while len(got) < n and (left_s := end - time.monotonic()) > 0:
        got.update(socks.index(s) for s, _ in poller.poll(left_s * 1000))
    got.update(i for i, s in enumerate(socks) if s.poll(0))
    return sorted(got)


def settle(engine, schema) -> None:
    """One round trip, so the worker has drained whatever an earlier test left in its ring."""
    with Client(engine.endpoint, schema, timeout_ms=20_000, retries=0) as c:
        c.evaluate_batch(random_events(np.random.default_rng(0), schema, 1))


def test_full_ring_gets_fast_overloaded_and_admitted_are_decided(engine, schema):
    rng = np.random.default_rng(2)
    settle(engine, schema)
    full0 = value(scrape(engine.metrics_url), "risk_overloaded_total", reason="ring_full")
    with frozen_worker(engine):
        socks = send_singles(engine.endpoint, schema, rng, CAPACITY + 20, 77)
        quick = []
        for i in answered_while_frozen(socks, 20):        # the refused ones answered at once
            rid, err, dec, msg = wire.unpack_reply(socks[i].recv_multipart()[-1])
            quick.append((i, rid, err, msg, dec))
        # which 20 are refused depends on the order the connections' messages reach the
        # ROUTER, not on the order they were sent: count them, and match each reply to its id
        assert len(quick) == 20, quick[:3]
        assert all(q[2] == ErrorCode.OVERLOADED and q[1] == q[0] + 1 for q in quick), quick[:3]
        assert value(scrape(engine.metrics_url), "risk_overloaded_total", reason="ring_full") == full0 + 20
        refused = {q[0] for q in quick}
        socks = [s for i, s in enumerate(socks) if i not in refused]
    decided = 0
    for s in socks:
        if s.poll(10_000):
            rid, err, dec, _ = wire.unpack_reply(s.recv_multipart()[-1])
            assert err == 0 and not (dec["flags"] & 0xFE).any()     # FIRED_OVERFLOW at most
            decided += 1
        s.close(0)
    assert decided == CAPACITY


def test_retry_with_same_ids_is_answered_once(engine, schema):
    settle(engine, schema)
    rec = random_events(np.random.default_rng(3), schema, 1)
    before = events_done(engine)
    with Client(engine.endpoint, schema, timeout_ms=5000, retries=0, client_id=4242) as c:
        first = c.evaluate_batch(rec)[0]
    # the same (client id, request id) again, as a Lazy-Pirate retry would send it
    frame = wire.pack_request(schema.hash, rec, 4242, 1, 0, int(wire.HeaderFlag.RETRY))
    s = zmq.Context.instance().socket(zmq.REQ)
    s.linger = 0
    s.connect(engine.endpoint)
    s.send(frame)
    assert s.poll(5000)
    rid, err, dec, _ = wire.unpack_reply(s.recv())
    s.close(0)
    assert rid == 1 and err == 0
    assert dec["action"][0] == {"allow": 0, "review": 1, "block": 2}[first.action]
    assert dec["score"][0] == first.score and dec["flags"][0] & 16      # DUPLICATE
    # the same ids in JSON: answered in JSON, from the same first decision
    from ingress.jsonevents import EventConverter
    body = {"request_id": 1, "client_id": 4242, "events": EventConverter(schema).to_events(rec)}
    s = zmq.Context.instance().socket(zmq.REQ)
    s.linger = 0
    s.connect(engine.endpoint)
    import json
    s.send(json.dumps(body).encode())
    assert s.poll(5000)
    rep = json.loads(s.recv())
    s.close(0)
    d = rep["decisions"][0]
    assert d["action"] == first.action and d["score"] == first.score and "DUPLICATE" in d["flags"]
    assert events_done(engine) == before + 1                            # evaluated once


def test_an_undersized_window_forgets_oldest_first_and_counts_it(tmp_path, schema):
    """dedup_max_entries: 4. Ten decided requests: the six oldest are forgotten early and
    counted; a retry of the newest is still a duplicate, a retry of the oldest is evaluated
    again (what risk_dedup_evicted_total warns about)."""
    with EngineProcess(tmp_path, workers=1, overrides={"ingress": {"dedup_max_entries": 4}}) as eng:
        recs = random_events(np.random.default_rng(8), schema, 10)
        with Client(eng.endpoint, schema, timeout_ms=20_000, retries=0, client_id=777) as c:
            for i in range(10):
                c.evaluate_batch(recs[i:i + 1])          # request ids 1..10
        assert value(scrape(eng.metrics_url), "risk_dedup_evicted_total") == 6
        before = events_done(eng)
        s = zmq.Context.instance().socket(zmq.REQ)
        s.linger = 0
        s.connect(eng.endpoint)
        flags = {}
        for rid in (10, 1):
            s.send(wire.pack_request(schema.hash, recs[rid - 1:rid], 777, rid, 0, int(wire.HeaderFlag.RETRY)))
            assert s.poll(10_000)
            got, err, dec, _ = wire.unpack_reply(s.recv())
            assert (got, err) == (rid, 0)
            flags[rid] = int(dec["flags"][0])
        s.close(0)
        assert flags[10] & 16 and not flags[1] & 16          # DUPLICATE only for the newest
        assert events_done(eng) == before + 1               # the forgotten one evaluated again


def test_lazy_pirate_retry_while_worker_is_stalled(engine, schema):
    settle(engine, schema)
    rec = random_events(np.random.default_rng(4), schema, 1)
    before = events_done(engine)
    c = Client(engine.endpoint, schema, timeout_ms=300, retries=20, client_id=999)
    w = [p for p in psutil.Process(engine.proc.pid).children() if "worker 0" in " ".join(p.cmdline())][0]
    os.kill(w.pid, signal.SIGSTOP)
    import threading
    threading.Timer(1.0, os.kill, (w.pid, signal.SIGCONT)).start()   # thaw after 3 retries
    try:
        d = c.evaluate_batch(rec)[0]
    finally:
        os.kill(w.pid, signal.SIGCONT)
        c.close()
    assert c.reconnects >= 2
    assert d.action in ("allow", "review", "block") and "DEFAULT_TIMEOUT" not in d.flags
    t_end = time.monotonic() + 5
    while time.monotonic() < t_end and events_done(engine) < before + 1:
        time.sleep(0.05)
    time.sleep(0.3)
    assert events_done(engine) == before + 1          # one evaluation for all the attempts


def test_killed_ingress_is_restarted_and_lazy_pirate_client_carries_on(engine, schema):
    settle(engine, schema)
    before = value(scrape(engine.metrics_url), "risk_ingress_restarts_total")
    rng = np.random.default_rng(6)
    with Client(engine.endpoint, schema, timeout_ms=1000, retries=60) as c:
        assert c.evaluate_batch(random_events(rng, schema, 1))
        ing = [p for p in psutil.Process(engine.proc.pid).children() if "ingress" in " ".join(p.cmdline())]
        assert len(ing) == 1
        os.kill(ing[0].pid, signal.SIGKILL)
        got = [c.evaluate_batch(random_events(rng, schema, 2)) for _ in range(5)]
    assert all(len(g) == 2 for g in got)
    assert value(scrape(engine.metrics_url), "risk_ingress_restarts_total") == before + 1


def test_inflight_bound_sheds_load_at_the_door(tmp_path, schema):
    rng = np.random.default_rng(8)
    with EngineProcess(tmp_path, workers=1, metrics=False,
                       overrides={"ingress": {"max_inflight": 5, "default_deadline_ms": 10_000}}) as eng:
        settle(eng, schema)
        with frozen_worker(eng):
            socks = send_singles(eng.endpoint, schema, rng, 12, 5)
            # which five are admitted depends on the order the 12 connections' messages reach
            # the ROUTER, not on the order they were sent: count, do not name them
            quick = answered_while_frozen(socks, 7)
            assert len(quick) == 7
            for i in quick:
                assert wire.unpack_reply(socks[i].recv_multipart()[-1])[1] == ErrorCode.OVERLOADED
        for i, s in enumerate(socks):
            if i not in quick:                 # the admitted five are decided after the thaw
                assert s.poll(10_000) and wire.unpack_reply(s.recv_multipart()[-1])[1] == 0
        for s in socks:
            s.close(0)


def test_a_worker_behind_gets_fast_overloaded_before_its_ring_fills(short_deadline_engine, schema):
    """Two default deadlines are the most a worker's oldest unfinished event may have
    waited: past them new work for that worker is refused at once (one event on the fast
    path, a batch on the general path, JSON too), so a stuck worker's ring does not keep
    filling with requests that can only time out; once it moves, requests are admitted again."""
    rng = np.random.default_rng(10)
    eng = short_deadline_engine
    settle(eng, schema)
    with frozen_worker(eng):
        first = send_singles(eng.endpoint, schema, rng, 1, 3)[0]
        time.sleep(1.0)                              # its event has waited > 800 ms
        late = send_singles(eng.endpoint, schema, rng, 2, 4)
        late[1].send_multipart([b"", wire.pack_request(schema.hash, random_events(rng, schema, 3), 4, 9)])
        j = zmq.Context.instance().socket(zmq.DEALER)
        j.linger = 0
        j.connect(eng.endpoint)
        ev = records_to_json(schema, random_events(rng, schema, 1))[0]
        j.send_multipart([b"", json.dumps({"request_id": 5, "event": ev}).encode()])
        for s in late + [j]:
            assert s.poll(2000), "refused at once, not after the thaw"
        replies = [wire.unpack_reply(s.recv_multipart()[-1]) for s in late[:1] + late[1:] * 2]
        assert [r[1] for r in replies] == [ErrorCode.OVERLOADED] * 3
        assert all("worker 0 is behind" in r[3] for r in replies), replies
        err = json.loads(j.recv_multipart()[-1])["error"]
        assert err["code"] == "OVERLOADED" and "behind" in err["message"]
    assert first.poll(10_000)                        # answered (decided or TIMEOUT)
    deadline = time.monotonic() + 30                 # thawed, the worker moves when it is scheduled
    with Client(eng.endpoint, schema, timeout_ms=10_000, retries=0) as c:
        while True:
            try:
                d = c.evaluate_batch(random_events(rng, schema, 1))[0]
                break
            except RequestError as e:
                assert e.code == ErrorCode.OVERLOADED and time.monotonic() < deadline, e
                time.sleep(0.05)
    assert d.error is None and not d.flags                   # admitted again
    for s in late + [first, j]:
        s.close(0)


def test_a_stall_costs_only_the_request_in_flight(short_deadline_engine, schema):
    """Issue 22 (no refusal storms): a worker stopped past the deadline times out the request
    in flight, and the client's resend, made at once while the worker is still stopped, is
    admitted (the timed-out event left in the ring is no sign the worker cannot decide it)
    and decided once the worker continues. It used to be refused OVERLOADED worker_behind,
    and so was every immediate resend after it, one per round trip, until the worker ran.
    Allowed outcomes: the first request TIMEOUT (the worker is stopped throughout its
    deadline); no reply at all while the worker stays stopped 0.2 s more (every refusal
    counted, and the client resends at once); then the resend decided, or TIMEOUT if the
    continued worker is not scheduled within the ~200 ms its deadline leaves; never refused."""
    eng = short_deadline_engine
    rng = np.random.default_rng(11)
    settle(eng, schema)
    behind0 = value(scrape(eng.metrics_url), "risk_overloaded_total", reason="worker_behind")
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.linger = 0
    s.connect(eng.endpoint)
    refused = []

    def send(rid: int) -> None:
        s.send_multipart([b"", wire.pack_request(schema.hash, random_events(rng, schema, 1), 21, rid)])

    try:
        with frozen_worker(eng):
            send(1)
            assert s.poll(10_000), "answered at its deadline while the worker is stopped"
            rid, err, dec, _ = wire.unpack_reply(s.recv_multipart()[-1])
            assert (rid, err, int(dec["error"][0])) == (1, 0, ErrorCode.TIMEOUT)
            rid = 2
            send(rid)
            hold_end = time.monotonic() + 0.2          # bounded: the worker stays stopped
            while time.monotonic() < hold_end:
                if s.poll(10):                         # only a refusal can come back now
                    refused.append(wire.unpack_reply(s.recv_multipart()[-1])[1:4:2])
                    rid += 1
                    send(rid)
        assert s.poll(10_000), "the resend is answered once the worker runs"
        got, err, dec, msg = wire.unpack_reply(s.recv_multipart()[-1])
    finally:
        s.close(0)
    assert refused == [], f"{len(refused)} refusals while the worker was stopped: {refused[:3]}"
    assert (got, err) == (rid, 0), msg
    assert int(dec["error"][0]) in (0, ErrorCode.TIMEOUT)
    assert value(scrape(eng.metrics_url), "risk_overloaded_total", reason="worker_behind") == behind0


def test_a_queue_that_never_empties_is_shed_and_every_request_answered(tmp_path, schema):
    """The CoDel-like shedder: 6,000 requests queued on one DEALER while the ingress is stopped
    keep the ROUTER's queue non-empty for far longer than 5 ms, so after the first READ_BATCH decisions the
    ingress answers the rest of the queue with OVERLOADED ('shedding load') without decoding
    them; every request gets exactly one reply. A worker ring large enough for all of them
    and no in-flight bound make the shedder the only source of refusals."""
    from ingress.router import READ_BATCH
    n = 6000
    recs = random_events(np.random.default_rng(9), schema, n)
    with EngineProcess(tmp_path, workers=1,
                       overrides={"rings": {"capacity": 8192},
                                  "ingress": {"max_inflight": 100_000, "default_deadline_ms": 10_000}}) as eng:
        settle(eng, schema)
        ctx = zmq.Context.instance()
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.SNDHWM, 0)
        s.setsockopt(zmq.RCVHWM, 0)
        s.connect(eng.endpoint)
        ingress = [p for p in psutil.Process(eng.proc.pid).children() if "ingress" in " ".join(p.cmdline())]
        assert len(ingress) == 1
        try:
            # queued while the ingress is stopped: a queue it cannot have emptied, however
            # fast it reads (the compiled loop kept up with this sender)
            ingress[0].suspend()
            try:
                for i in range(n):
                    s.send_multipart([b"", wire.pack_request(schema.hash, recs[i:i + 1], 77, i + 1)])
                time.sleep(0.5)                # all of them in the ROUTER's queue
            finally:
                ingress[0].resume()
            codes, shed_msgs = {}, 0
            deadline = time.monotonic() + 60
            while len(codes) < n and time.monotonic() < deadline:     # bounded
                if not s.poll(1000):
                    continue
                rid, err, _, msg = wire.unpack_reply(s.recv_multipart()[-1])
                assert rid not in codes                # exactly one reply per request
                codes[rid] = err
                shed_msgs += "shedding load" in msg
            by_reason = {r: value(scrape(eng.metrics_url), "risk_overloaded_total", reason=r)
                         for r in ("shed", "ring_full", "max_inflight", "worker_behind")}
        finally:
            s.close(0)
    assert len(codes) == n
    refused = [r for r, e in codes.items() if e == ErrorCode.OVERLOADED]
    assert shed_msgs == len(refused) > 0               # every refusal came from the shedder
    assert by_reason == {"shed": len(refused), "ring_full": 0, "max_inflight": 0, "worker_behind": 0}
    assert set(codes.values()) <= {0, int(ErrorCode.OVERLOADED)}
    assert min(refused) > READ_BATCH                   # the first READ_BATCH were decided
