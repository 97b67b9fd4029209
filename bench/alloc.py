"""``python -m bench.latency --alloc``: Python allocations per event in the worker hot path and
per message in the ingress codec (the design's ``pprof -alloc_space`` bar).

Worker: the worker's own per-batch body, ``engine.worker.BatchProcessor.process`` (kernel,
journal append, publish of the decisions), in-process over real shared-memory rings, a real
journal in a temporary directory and the real compiled kernel; each step publishes a batch
into the request ring as the ingress would, drains and processes it as the worker loop
does, releases it, and drains the response ring.

Ingress: ``Codec.decode`` of a binary request and ``Codec.encode_reply`` of its decisions
(the general path's codec), in-process.

Engine processes: a real engine (``risk-engine serve``) takes windows of single-event binary
requests (the ingress's fast path) over a real socket, and each process's own count of live
blocks (``risk_python_blocks``: refreshed every 50 ms, a worker's when idle) is read from its
/stats after each window, once the processes are idle: the whole per-message path of the real ingress (socket
calls, fast path, bookkeeping, idempotency window) and of the real worker loop.

Measured with ``sys.getallocatedblocks()`` around ``events`` events after a warm-up, with the
collector disabled so a collection cannot hide or add blocks. The target is 0 net new blocks
per event in the worker loop at steady state. Numbers are net (allocated minus freed):
temporaries that are freed in the same iteration cost time but not net blocks.
"""
from __future__ import annotations

import dataclasses
import gc
import os
import shutil
import sys
import tempfile
import time
import tracemalloc

import numpy as np
import zmq

from bench.engine_proc import EngineProcess
from bench.events import random_records
from engine.journal import JournalWriter
from engine.worker import Active, BatchProcessor
from engine.worker_fast import FastStep
from ingress import wire
from ingress.codec import Codec, RulesetMeta
from rules import compile_ruleset
from rules.features import feature_set_for
from shm.control import Block, BlockLayout
from shm.doorbell import EventfdDoorbell
from shm.rings import EngineRings
from shm.runtime.config import load_config
from shm.types import RESPONSE_SLOT_DTYPE, request_slot_dtype


def blocks_delta(fn, iterations: int, warmup: int, windows: int = 3) -> list[int]:
    """Net new blocks over each of ``windows`` consecutive runs of ``iterations`` calls, after
    ``warmup`` calls, minus the same measurement of a no-op (the harness's own blocks). A
    per-call leak shows in every window; one-time caches only in the first."""
    base = _raw_delta(lambda: None, iterations, 10, windows)
    return [a - b for a, b in zip(_raw_delta(fn, iterations, warmup, windows), base)]


def _raw_delta(fn, iterations: int, warmup: int, windows: int) -> list[int]:
    for _ in range(warmup):
        fn()
    gc.collect()
    gc.disable()
    out = []
    try:
        for _ in range(windows):
            b0 = sys.getallocatedblocks()
            for _ in range(iterations):
                fn()
            out.append(sys.getallocatedblocks() - b0)
    finally:
        gc.enable()
    return out


def top_allocators(fn, iterations: int, limit: int = 5) -> list[str]:
    """Where net new memory comes from (tracemalloc, by line) over ``iterations`` calls:
    printed when a window is not 0, so a leak names its line."""
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for _ in range(iterations):
            fn()
        stats = tracemalloc.take_snapshot().compare_to(before, "lineno")
    finally:
        tracemalloc.stop()
    return [str(st) for st in stats if st.count_diff > 0][:limit]


def worker_loop(cfg, batch: int, instance: str, fast: bool = False):
    """(step, close, ruleset): ``step()`` moves one batch of ``batch`` events through the
    request ring, ``BatchProcessor.process`` (kernel, journal append, publish) and the response
    ring, as engine.worker.serve's loop does; ``fast``: through engine.worker_fast's compiled
    step instead, as the loop does by default."""


    rs = compile_ruleset(list(cfg.rules.files), cfg.schema, thresholds=cfg.rules.thresholds,
                         on_error=cfg.rules.on_error, features=feature_set_for(cfg))
    rs.warm_up()
    cap = max(64, 1 << (2 * batch - 1).bit_length())
    cfg = dataclasses.replace(cfg, instance=instance, rings=dataclasses.replace(cfg.rings, capacity=cap))
    efd = EventfdDoorbell.create()
    rings = EngineRings.create(cfg, os.getpid(), 0, efd)
    block = Block(bytearray(BlockLayout(1).nbytes), 1, create=True)
    jdir = tempfile.mkdtemp(prefix="risk-engine-alloc-")
    # one segment holds every event of a run: a rotation is a one-time cost, not per event
    jcfg = dataclasses.replace(cfg.durability.journal_config(), fsync="none", segment_bytes=256 << 20)
    journal = JournalWriter(jdir, cfg.schema.dtype, cfg.schema.hash, config=jcfg)
    proc = BatchProcessor(rings, Active(rs, 1, block, 0, batch), block, 0, batch, journal,
                          rs.feature_arrays)
    slots = np.zeros(batch, request_slot_dtype(cfg.schema.dtype))
    # uniform keys: the same few events repeat every step, and on hot (zipf) keys their
    # velocity features soon fire more rules than the response ring holds fired lists for
    slots["event"] = random_records(cfg.schema, batch, seed=3, keys="uniform")
    slots["token"] = np.arange(batch)
    req, resp = rings.request, rings.response
    arrival = slots["arrival_ns"]
    fast_step = FastStep(proc, block, rings.worker_idle.strategy) if fast else None

    def step() -> None:
        arrival[:] = time.monotonic_ns()                # the ingress stamps arrival (else every
        req.try_publish(slots)                          # batch "waited" and logs a stall)
        if fast_step is not None:
            fast_step.step()
        else:
            v, _ = req.try_drain(batch)                 # the worker loop
            req.release(proc.process(v))
        r1, r2 = resp.try_drain(resp.capacity)          # the ingress: decisions, and fired
        resp.release(len(r1) + len(r2))                 # lists once repeats make >16 rules fire

    def close() -> None:
        if fast_step is not None:
            fast_step.close()
        journal.close()
        shutil.rmtree(jdir, ignore_errors=True)
        rings.close()
        rings.unlink()
        efd.close()

    return step, close, rs


def ingress_codec(cfg, batch: int, rs=None):
    """``step()`` decodes one binary request of ``batch`` events and encodes its reply."""

    codec = Codec(cfg.schema, cfg.ingress.max_batch, cfg.ingress.max_frame_bytes)
    frame = wire.pack_request(cfg.schema.hash, random_records(cfg.schema, batch, seed=4), 1, 1)
    slots = np.zeros(batch, RESPONSE_SLOT_DTYPE)
    meta = RulesetMeta(0, "bench@1", (), ()) if rs is None else \
        RulesetMeta(0, rs.label, tuple(rs.rule_ids), tuple(rs.modes))

    def step() -> None:
        codec.encode_reply(codec.decode(frame), slots, meta)

    return step


def engine_processes(config: str | None, n: int, windows: int = 3, warmup: int = 5000,
                     in_flight: int = 64) -> dict[str, list[int]]:
    """Net blocks per window of ``n`` single-event requests in each process of a real engine
    (module doc). Requests go out ``in_flight`` at a time from one DEALER, each with a fresh
    (client id, request id), every reply is checked; after each window the processes go idle
    and their counts are read."""
    schema = load_config(config).schema
    recs = random_records(schema, 256, seed=5)
    eng = EngineProcess(config=config, workers=None, own_session=False).start()
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(eng.endpoint)
    rid = 0

    def send(count: int) -> None:
        nonlocal rid
        while count > 0:
            k = min(in_flight, count)
            for _ in range(k):
                rid += 1
                sock.send_multipart([b"", wire.pack_request(schema.hash, recs[rid % 256:rid % 256 + 1],
                                                            7, rid)])
            for _ in range(k):
                if not sock.poll(10_000):
                    raise RuntimeError("alloc: no reply from the engine within 10 s")
                _, err, _, msg = wire.unpack_reply(sock.recv_multipart()[-1])
                if err:
                    raise RuntimeError(f"alloc: the engine answered error {err}: {msg}")
            count -= k

    def blocks() -> dict[str, int]:
        time.sleep(0.3)                              # every process back in its idle loop
        return {r["process"]: int(r["value"]) for r in eng.stats()["risk_python_blocks"]}

    try:
        send(warmup)
        before = blocks()
        out = {p: [] for p in before}
        for _ in range(windows):
            send(n)
            after = blocks()
            for p in out:
                out[p].append(after[p] - before[p])
            before = after
        return out
    finally:
        sock.close(0)
        eng.close()


def run(a) -> int:
    cfg = load_config(a.config)
    batch = a.batch
    events = a.alloc_events
    iters = max(1, events // batch)
    instance = f"alloc{os.getpid() % 100000}"
    print(f"alloc check: {iters * batch} events in batches of {batch}, gc disabled while counting; "
          f"net new blocks (sys.getallocatedblocks) per event", flush=True)
    rc = 0
    rs = None
    try:
        step, close, rs = worker_loop(cfg, batch, instance)
        try:
            w = blocks_delta(step, iters, warmup=min(iters, 1000))
            leaks = top_allocators(step, min(iters, 10_000)) if w[-1] > 0 else []
        finally:
            close()
        ok = w[-1] <= 0
        rc = 0 if ok else 1
        print(f"worker loop (BatchProcessor: kernel, journal, rings; in-process): net blocks per window of "
              f"{iters * batch} events: {w}; steady state (last window) {w[-1] / (iters * batch):+.5f}"
              f" blocks/event [{'OK' if ok else 'ALLOCATES'}; target 0]")
        for line in leaks:
            print(f"  {line}")
    except ImportError as e:
        print(f"worker loop: not measured ({e})")
    n = max(1, iters // 10)
    i = blocks_delta(ingress_codec(cfg, batch, rs), n, warmup=200)
    print(f"ingress codec (decode + encode_reply, the general path): net blocks per window of "
          f"{n} messages: {i}; last window {i[-1] / n:+.5f} blocks/message")
    n = max(1000, events // 10)
    e = engine_processes(a.config, n)
    for proc, d in e.items():
        ok = d[-1] / n < 0.01                      # well under one block per 100 messages
        rc = rc if ok else 1
        print(f"engine process {proc} (real engine, one-event binary requests: the fast path): net "
              f"blocks per window of {n} requests: {d}; last window {d[-1] / n:+.5f} blocks/request "
              f"[{'OK' if ok else 'ALLOCATES'}]")
    return rc
