"""The allocation counter itself: it sees a per-call leak, reports a no-op as zero, and runs
on the real ingress codec and the real worker batch body."""
from __future__ import annotations

import pytest

from bench.alloc import blocks_delta, ingress_codec, top_allocators
from shm.runtime.config import load_config


def test_blocks_delta_sees_a_per_call_leak_and_not_a_noop():
    kept = []
    assert blocks_delta(lambda: kept.append(object()), 500, 10) == [500, 500, 500]
    assert blocks_delta(lambda: None, 500, 10) == [0, 0, 0]


def test_temporaries_freed_in_the_call_are_not_net_blocks():
    assert blocks_delta(lambda: [object() for _ in range(5)], 500, 10)[-1] == 0


def test_ingress_codec_step_runs_on_the_default_config():
    cfg = load_config(None)
    step = ingress_codec(cfg, 4)
    step()
    w = blocks_delta(step, 200, 50)
    assert len(w) == 3 and all(isinstance(x, int) for x in w)


@pytest.mark.slow                # its own cold kernel compile, 60 s: make test-slow (CI)
def test_worker_loop_drives_the_real_batch_body(monkeypatch):
    """The worker check runs engine.worker.BatchProcessor.process itself (kernel, journal,
    rings): 0 net blocks per batch at steady state, and a leak put into process() shows."""
    import os

    from bench.alloc import worker_loop
    from engine.worker import BatchProcessor
    instance = f"talloc{os.getpid() % 100000}"
    step, close, _ = worker_loop(load_config(None), 8, instance)
    try:
        assert blocks_delta(step, 300, 100)[-1] == 0
        kept, real = [], BatchProcessor.process
        monkeypatch.setattr(BatchProcessor, "process",
                            lambda self, v: kept.append(object()) or real(self, v))
        assert blocks_delta(step, 300, 10)[1:] == [300, 300]     # (first: one-time caches)
    finally:
        close()
    assert not [e for e in os.listdir("/dev/shm") if instance in e]


def test_top_allocators_names_the_leaking_line():
    kept = []

    def leak():
        kept.append(bytearray(100))

    lines = top_allocators(leak, 200)
    assert lines and "test_alloc.py" in lines[0]


@pytest.mark.slow                # an engine under a load phase, 14 s: make test-slow (CI)
def test_a_real_engine_allocates_nothing_per_request():
    """The real ingress and worker processes count their own live blocks
    (risk_python_blocks); over windows of one-event requests through the fast path, a
    per-request leak would add about one block per request: allow a few blocks per window
    (the worker's housekeeping thread allocates asynchronously)."""
    from bench.alloc import engine_processes
    n = 2000
    d = engine_processes(None, n, windows=3, warmup=2000)
    assert set(d) == {"ingress", "worker 0"}
    for proc, w in d.items():
        assert len(w) == 3 and w[-1] < n // 100, (proc, w)
