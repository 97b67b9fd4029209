"""A restarted worker answers, from the journal, the requests its predecessor journaled but
did not release, and leaves the rest to be decided (no double count, nothing lost)."""
from __future__ import annotations

import os
import types

import numpy as np
import pytest

from shm.runtime.config import load_config
from engine.journal import JournalConfig, JournalWriter
from shm.types import RESPONSE_SLOT_DTYPE, request_slot_dtype
from engine.worker import serve_journaled_tail
from shm.idle import SleepingBackoff
from shm.ring import OneToOneRing
from bench.events import random_events


@pytest.fixture
def rings():
    inst = f"tail{os.getpid() % 100000}"
    cfg = load_config()
    req = OneToOneRing.create("req", 16, request_slot_dtype(cfg.schema.dtype), instance=inst)
    resp = OneToOneRing.create("resp", 16, RESPONSE_SLOT_DTYPE, instance=inst)
    r = types.SimpleNamespace(request=req, response=resp,
                              response_full_idle=types.SimpleNamespace(wait=SleepingBackoff().idle))
    yield cfg, r
    for ring in (req, resp):
        ring.unlink()
        ring.close()


@pytest.mark.parametrize("journaled", [0, 3, 5])
def test_journaled_prefix_is_answered_from_the_journal(tmp_path, rings, journaled):
    cfg, r = rings
    ev = random_events(np.random.default_rng(journaled), cfg.schema, 5)
    slots = np.zeros(5, request_slot_dtype(cfg.schema.dtype))
    slots["event"] = ev
    slots["arrival_ns"] = np.arange(5) + 1000
    slots["token"] = np.arange(5) + 77
    assert r.request.try_publish(slots)
    with JournalWriter(str(tmp_path), cfg.schema.dtype, cfg.schema.hash, 0, JournalConfig(fsync="none")) as j:
        older = random_events(np.random.default_rng(99), cfg.schema, 2)     # earlier traffic
        j.append_columns(older, np.arange(2), 0, 0, 0.0, 1)
        if journaled:
            j.append_columns(ev[:journaled], slots["arrival_ns"][:journaled], 2, 0,
                             np.arange(journaled) + 0.5, 3)
        proc = types.SimpleNamespace(out=np.zeros(16, RESPONSE_SLOT_DTYPE), gate=None,
                                     stop=np.zeros(1, np.int64))
        assert serve_journaled_tail(r, j, proc) == journaled
    got, _ = r.response.try_drain(16)
    assert len(got) == journaled
    assert got["token"].tolist() == list(range(77, 77 + journaled))
    assert (got["action"] == 2).all() and (got["generation"] == 3).all()
    assert got["score"].tolist() == [i + 0.5 for i in range(journaled)]
    left, _ = r.request.try_drain(16)
    assert left["token"].tolist() == list(range(77 + journaled, 82))       # decided normally
