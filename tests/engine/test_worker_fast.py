"""engine.worker_fast's compiled step against BatchProcessor.process, the Python path it
replaces in the worker's loop: the same batches through real rings, the default ruleset
with its features and a real journal give the same responses, fired lists, journal records
(seq and check included), rule counters and metrics, bit for bit. The journal's segments are
small, so rotations (the compiled step hands those batches to Python) happen in the run."""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

from bench.events import random_records
from engine.journal import JournalConfig, JournalReader, JournalWriter
from engine.worker import Active, BatchProcessor
from engine.worker_fast import FastStep
from rules import compile_ruleset
from rules.features import feature_set_for
from shm.control import Block, BlockLayout
from shm.doorbell import EventfdDoorbell
from shm.journal_format import HEADER_SIZE, journal_dtype
from shm.rings import EngineRings
from shm.runtime.config import load_config
from shm.types import MAX_FIRED, request_slot_dtype

MAX_BATCH = 16
CAPACITY = 1024              # rings: a round's responses and fired lists always fit
ROUNDS = 70                  # at up to 40 events a round the request ring wraps


# with the default rules: more than MAX_FIRED fire on a third of the events (their fired
# lists go on the fired ring), an enforce rule that blocks its source on a tenth
EXTRA = "ruleset: many\nversion: 1\nrules:\n" + "".join(
    f"  - {{id: many{k}, when: 'amount > {k * 8}', action: review, score: 1}}\n" for k in range(20)) + \
    "  - {id: blocker, when: 'amount > 400', action: block, block_source: {ttl: 1m}}\n"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    cfg = load_config(None)
    extra = tmp_path_factory.mktemp("rules") / "many.yaml"
    extra.write_text(EXTRA)
    rs = compile_ruleset(list(cfg.rules.files) + [str(extra)], cfg.schema, thresholds=cfg.rules.thresholds,
                         on_error=cfg.rules.on_error, features=feature_set_for(cfg))
    rs.warm_up()
    rng = np.random.default_rng(7)
    sizes = rng.integers(1, 41, ROUNDS)
    # a few hot keys: velocity features make many rules fire (fired lists beyond MAX_FIRED)
    events = random_records(cfg.schema, int(sizes.sum()), seed=5, n_accounts=1)
    return cfg, rs, sizes, events


def _run(cfg, rs, sizes, events, tmp, fast: bool, stall: bool):
    """Every round's events through one path; what it produced."""
    init = [a.copy() for a in rs.feature_arrays]
    name = f"tfast{os.getpid() % 100000}{int(fast)}{int(stall)}"
    cfg = dataclasses.replace(cfg, instance=name, rings=dataclasses.replace(cfg.rings, capacity=CAPACITY))
    efd = EventfdDoorbell.create()
    rings = EngineRings.create(cfg, os.getpid(), 0, efd)
    block = Block(bytearray(BlockLayout(1).nbytes), 1, create=True)
    jdir = tmp / name
    rec = journal_dtype(cfg.schema.dtype).itemsize
    journal = JournalWriter(str(jdir), cfg.schema.dtype, cfg.schema.hash, writer_id=1,
                            config=JournalConfig(segment_bytes=HEADER_SIZE + 100 * rec, fsync="none"))
    proc = BatchProcessor(rings, Active(rs, 3, block, 0, MAX_BATCH), block, 0, MAX_BATCH, journal,
                          rs.feature_arrays)
    step = FastStep(proc, block, rings.worker_idle.strategy) if fast else None
    by_python, process = [], proc.process

    def python_path(v):
        by_python.append(len(v))
        n = process(v)
        journal._unmap_retired()      # the journal's thread may close a rotated-away map now
        return n
    proc.process = python_path
    req, resp, fired = rings.request, rings.response, rings.fired
    slots = np.zeros(len(events), request_slot_dtype(cfg.schema.dtype))
    slots["event"] = events
    slots["token"] = np.arange(len(events)) * 3 + 1
    # far in the future: no pickup wait counts as a stall; with ``stall``, long past: all do
    slots["arrival_ns"] = (1 << 40 if stall else 1 << 62) + np.arange(len(events)) * 1000
    got_resp, got_fired = [], []
    try:
        at = 0
        for k in sizes:
            assert req.try_publish(slots[at:at + k])
            at += k
            while True:
                if step is not None:
                    done = step.step()
                else:
                    v1, _ = req.try_drain(MAX_BATCH)
                    done = len(v1) > 0 and (req.release(proc.process(v1)) or 1)
                if not done:
                    break
            for ring, out in ((resp, got_resp), (fired, got_fired)):
                v1, v2 = ring.try_drain(ring.capacity)
                out += [v1.copy(), v2.copy()]
                ring.release(len(v1) + len(v2))
        assert req.occupancy() == 0
        if step is not None:
            step.close()
        journal.close()
        records = JournalReader(str(jdir), cfg.schema.dtype, cfg.schema.hash, 1).read_all()
        w = {k: block.worker(0, k).copy() for k in
             ("rule_hits", "rule_errors", "batches", "events", "stalls", "pickup_hist", "kernel_hist")}
        return np.concatenate(got_resp), np.concatenate(got_fired), records, w, by_python, journal.rotations
    finally:
        for a, b in zip(rs.feature_arrays, init):
            a[:] = b
        rings.close()
        rings.unlink()
        efd.close()


@pytest.mark.parametrize("stall", [False, True], ids=["no stalls", "every batch a stall"])
def test_the_compiled_step_does_what_process_does(setup, tmp_path, stall):
    cfg, rs, sizes, events = setup
    py = _run(cfg, rs, sizes, events, tmp_path, fast=False, stall=stall)
    fa = _run(cfg, rs, sizes, events, tmp_path, fast=True, stall=stall)
    (r0, f0, j0, w0, by_py0, rot0), (r1, f1, j1, w1, by_py1, rot1) = py, fa
    assert len(r0) == len(events) and len(j0) == len(events)
    assert r0.tobytes() == r1.tobytes()                       # responses, every byte
    assert (r0["generation"] == 3).all() and (r0["token"] == np.arange(len(events)) * 3 + 1).all()
    assert (r0["nfired"] > MAX_FIRED).any() and len(f0) > 0    # fired lists were due
    assert f0.tobytes() == f1.tobytes()
    assert j0.tobytes() == j1.tobytes()                       # records, seq and check included
    assert rot0 == rot1 > 0                                   # rotations: the Python path's
    for k in ("rule_hits", "rule_errors", "batches", "events"):
        assert (w0[k] == w1[k]).all(), k
    assert w0["stalls"][0] == w1["stalls"][0]                 # pickup (the others are timed)
    assert w0["events"][0] == len(events) and w0["rule_hits"].sum() > 0
    assert (w0["stalls"][0] > 0) == stall and w0["stalls"][0] in (0, w0["batches"][0])
    # the pickup wait's bucket counts (its sum is clock time); the kernel's count of events
    assert (w0["pickup_hist"][:-1] == w1["pickup_hist"][:-1]).all()
    assert w0["kernel_hist"][:-1].sum() == w1["kernel_hist"][:-1].sum() == len(events)
    # the compiled step took most batches; Python those a rotation came before
    assert sum(by_py0) == len(events) and 0 < len(by_py1) <= rot1 < w1["batches"][0] // 4


def test_a_ruleset_with_other_feature_arrays_is_served_by_python_while_its_step_compiles(setup, tmp_path):
    """A reload to a ruleset with another number of feature arrays needs run() compiled for
    those types: the Python path takes the batches until a thread has compiled it (joined
    here, bounded), then the compiled step does, with the same responses."""
    cfg, rs, sizes, events = setup
    stateless = compile_ruleset([f for f in cfg.rules.files if f.endswith(("payments.yaml", "pretrade.yaml"))],
                                cfg.schema, thresholds=cfg.rules.thresholds, on_error=cfg.rules.on_error)
    assert stateless.feature_arrays == () and rs.feature_arrays != ()
    name = f"tfastr{os.getpid() % 100000}"
    cfg = dataclasses.replace(cfg, instance=name, rings=dataclasses.replace(cfg.rings, capacity=CAPACITY))
    efd = EventfdDoorbell.create()
    rings = EngineRings.create(cfg, os.getpid(), 0, efd)
    block = Block(bytearray(BlockLayout(1).nbytes), 1, create=True)
    proc = BatchProcessor(rings, Active(rs, 1, block, 0, MAX_BATCH), block, 0, MAX_BATCH, None,
                          rs.feature_arrays)
    step = FastStep(proc, block, rings.worker_idle.strategy)
    by_python, process = [], proc.process
    proc.process = lambda v: by_python.append(len(v)) or process(v)
    slots = np.zeros(4, request_slot_dtype(cfg.schema.dtype))
    slots["event"], slots["arrival_ns"] = events[:4], 1 << 62
    try:
        def one(k: int) -> np.ndarray:
            slots["token"] = k
            assert rings.request.try_publish(slots[:1])
            assert step.step() == 1
            v1, _ = rings.response.try_drain(8)
            rings.response.release(len(v1))
            return v1.copy()
        one(1)
        assert by_python == []                            # bound at start-up: compiled
        proc.active = Active(stateless, 2, block, 0, MAX_BATCH)
        first = one(2)
        assert by_python == [1]
        compiling = step._compiling
        if compiling is not None:
            compiling.join(600)
        assert step._compiling is None
        again = one(2)
        assert by_python == [1]                           # the compiled step from now on
        assert first.tobytes() == again.tobytes() and first["generation"][0] == 2
    finally:
        step.close()
        rings.close()
        rings.unlink()
        efd.close()
