"""One load process: ``clients`` REQ sockets, each with exactly one request in flight, driven
by one ``zmq.Poller`` loop (no thread per client, no busy spin).

Closed loop (``rate == 0``, like ``wrk -c``): each client sends its next request as soon as
the reply arrives; latency = reply time - send time.

Open loop (``rate > 0``, like wrk2): requests are due at fixed intended times
``t0 + (k + phase) / rate``; a due request goes out on the first free client. Latency is
measured from the INTENDED send time, so time spent waiting for a free client (because the
server is slow) is counted instead of silently dropped: coordinated omission is corrected.
Requests still due but unsent at the end are reported as ``unsent``.

Only requests intended (open) or sent (closed) in the measurement window
``[t0 + warmup, t0 + warmup + duration)`` are recorded. After the window no new request is
sent; in-flight ones get ``drain_s`` to answer, then count as ``NO_REPLY``. A client whose
reply takes longer than ``timeout_ms`` counts ``NO_REPLY`` and reopens its socket (Lazy
Pirate). So for the window: ``sent == ok + sum(errors)``.
"""
from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, field

import zmq
from hdrh.histogram import HdrHistogram

from bench.events import ZIPF_S, PayloadPool
from bench.replies import NO_REPLY, classify
from shm.runtime.config import load_config

HIST_MAX_NS = 60_000_000_000      # 60 s; slower replies are clamped (and count as max)
HIST_DIGITS = 3


def new_histogram() -> HdrHistogram:
    return HdrHistogram(1, HIST_MAX_NS, HIST_DIGITS)


def run_client_id_base() -> int:
    """Client ids unique to this run (``LoadSpec.client_id_base``): the engine's idempotency
    window answers a repeated (client id, request id) from its cache, so two runs must never
    share them."""
    return random.getrandbits(40) << 20


@dataclass
class LoadSpec:
    target: str
    kind: str = "engine"              # 'engine' (decode replies) | 'echo' (reply == request)
    clients: int = 50                 # in this process
    duration_s: float = 10.0
    warmup_s: float = 1.0
    rate: float = 0.0                 # requests/s for this process; 0 = closed loop
    phase: float = 0.0                # open loop: offset of this process's schedule, in slots
    batch: int = 1
    transport: str = "binary"
    config: str | None = None         # engine config whose schema the events follow
    seed: int = 0
    keys: str = "zipf"                # how events' account, card, device ids are drawn (bench.events)
    zipf_s: float = ZIPF_S
    client_id_base: int = 1
    timeout_ms: int = 5000
    drain_s: float = 2.0
    interval_s: float = 0.0           # > 0: also one histogram per interval (soak)
    keep_samples: bool = False        # tests: also return every raw latency


@dataclass
class LoadResult:
    sent: int = 0
    ok: int = 0
    events_ok: int = 0
    errors: dict = field(default_factory=dict)           # request-level name -> count
    decision_errors: dict = field(default_factory=dict)  # per-decision name -> count
    unsent: int = 0
    hist: bytes = b""
    intervals: list = field(default_factory=list)        # encoded histograms
    samples: list = field(default_factory=list)
    cpu_s: float = 0.0


def _bump(d: dict, key: str, n: int = 1) -> None:
    d[key] = d.get(key, 0) + n


def run(spec: LoadSpec, wait_start=None, progress=None, slot: int = 0) -> LoadResult:
    """Connect, then ``start_ns = wait_start()`` (a ``time.monotonic_ns`` value shared by every
    load process; default: now) and run the load from then. ``progress[slot]`` (optional, a
    shared array) is kept at the number of answered measured requests."""


    pool = PayloadPool(load_config(spec.config).schema, spec.batch, spec.transport,
                       seed=spec.seed, keys=spec.keys, zipf_s=spec.zipf_s)
    ctx = zmq.Context.instance()
    poller = zmq.Poller()
    socks: list = [None] * spec.clients

    def open_client(i: int):
        s = ctx.socket(zmq.REQ)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(spec.target)
        poller.register(s, zmq.POLLIN)
        socks[i] = s
        return s

    owner = {id(open_client(i)): i for i in range(spec.clients)}
    in_flight: dict[int, tuple] = {}          # client -> (t_ns, measured, request, rid)
    free = list(range(spec.clients - 1, -1, -1))
    rids = [0] * spec.clients
    start_ns = wait_start() if wait_start else time.monotonic_ns()
    res = LoadResult()
    hist = new_histogram()
    intervals: list = []
    t_measure = start_ns + int(spec.warmup_s * 1e9)
    t_end = t_measure + int(spec.duration_s * 1e9)
    interval_ns = int(spec.interval_s * 1e9)
    gap_ns = int(1e9 / spec.rate) if spec.rate > 0 else 0
    next_due = start_ns + int(spec.phase * gap_ns)
    k = 0
    cpu0 = time.process_time()
    now = time.monotonic_ns()
    if start_ns > now:
        time.sleep((start_ns - now) / 1e9)

    def send(i: int, t_ns: int) -> None:
        nonlocal k
        rids[i] += 1
        req = pool.request(k, spec.client_id_base + i, rids[i])
        k += 1
        measured = t_measure <= t_ns < t_end
        in_flight[i] = (t_ns, measured, req, rids[i])
        socks[i].send(req, copy=True)
        if measured:
            res.sent += 1

    if gap_ns == 0:
        while free:
            send(free.pop(), time.monotonic_ns())
    last_timeout_scan = 0
    last_progress = 0
    while True:
        now = time.monotonic_ns()
        if gap_ns:
            while next_due <= now < t_end and free:
                send(free.pop(), next_due)
                next_due += gap_ns
        if now >= t_end and (not in_flight or now >= t_end + spec.drain_s * 1e9):
            break
        wait_ms = 100
        if gap_ns and next_due < t_end and free:      # no free client: a reply wakes us
            wait_ms = max(0, min(wait_ms, (next_due - now) // 1_000_000))
        events = poller.poll(wait_ms)
        for s, _ in events:
            reply = s.recv()
            t_rx = time.monotonic_ns()
            i = owner[id(s)]
            t_tx, measured, req, rid = in_flight.pop(i)
            if measured:
                lat = min(t_rx - t_tx, HIST_MAX_NS)
                hist.record_value(lat)
                if interval_ns:
                    j = (t_tx - t_measure) // interval_ns
                    while len(intervals) <= j:
                        intervals.append(new_histogram())
                    intervals[j].record_value(lat)
                if spec.keep_samples:
                    res.samples.append(lat)
                code, derrs = classify(spec.kind, spec.transport, req, reply, rid)
                if code is None:
                    res.ok += 1
                    res.events_ok += spec.batch
                else:
                    _bump(res.errors, code)
                for e in derrs:
                    _bump(res.decision_errors, e)
            if gap_ns == 0 and t_rx < t_end:
                send(i, t_rx)
            else:
                free.append(i)
        if not events and gap_ns and next_due < t_end and free:
            left_ns = next_due - time.monotonic_ns()
            if 0 < left_ns < 1_000_000:       # sub-millisecond: sleep, never spin
                time.sleep(left_ns / 1e9)
        now = time.monotonic_ns()
        if now - last_timeout_scan > 50_000_000:
            last_timeout_scan = now
            for i, (t_tx, measured, _, _) in list(in_flight.items()):
                if now - t_tx > spec.timeout_ms * 1_000_000:
                    del in_flight[i]
                    if measured:
                        _bump(res.errors, NO_REPLY)
                    poller.unregister(socks[i])
                    del owner[id(socks[i])]
                    socks[i].close(0)
                    owner[id(open_client(i))] = i
                    if gap_ns == 0 and now < t_end:
                        send(i, now)
                    else:
                        free.append(i)
        if progress is not None and now - last_progress > 100_000_000:
            last_progress = now
            progress[slot] = res.ok + sum(res.errors.values())
    for i, (_, measured, _, _) in in_flight.items():
        if measured:
            _bump(res.errors, NO_REPLY)
    if gap_ns:
        first = start_ns + int(spec.phase * gap_ns)
        due = -((first - t_end) // gap_ns) - max(0, -((first - t_measure) // gap_ns))
        res.unsent = max(0, due - res.sent)
    if progress is not None:
        progress[slot] = res.ok + sum(res.errors.values())
    for s in socks:
        s.close(0)
    res.hist = hist.encode()
    res.intervals = [h.encode() for h in intervals]
    res.cpu_s = time.process_time() - cpu0
    return res


def child_main(spec: LoadSpec, conn, progress, slot: int) -> None:
    """multiprocessing target: report ready, receive the start time, run, send the result."""
    try:

        def wait_start() -> int:
            conn.send(("ready", os.getpid()))
            return conn.recv()

        conn.send(("result", run(spec, wait_start, progress, slot)))
    except BaseException as e:          # the parent reports it; never die silently
        conn.send(("error", f"{type(e).__name__}: {e}"))
    finally:
        conn.close()
