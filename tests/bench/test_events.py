"""bench.events' key distributions: Zipf (the bench's default) and uniform ids, the same for
a seed, skewed as the exponent says, and carried through PayloadPool and the bench options."""
from __future__ import annotations

import argparse

import numpy as np
import pytest

from bench import events as be
from bench import latency
from ingress import wire
from shm.runtime.config import load_config

SCHEMA = load_config(None).schema


def test_keys_are_the_same_for_a_seed_and_differ_between_seeds():
    for keys in be.KEY_DISTRIBUTIONS:
        a = be.draw_keys(np.random.default_rng(7), 5000, keys=keys)
        b = be.draw_keys(np.random.default_rng(7), 5000, keys=keys)
        c = be.draw_keys(np.random.default_rng(8), 5000, keys=keys)
        assert (a == b).all() and not (a == c).all()
        assert a.min() >= 1 and a.max() <= be.N_KEYS
    r1, r2 = (be.random_records(SCHEMA, 2000, seed=3) for _ in range(2))
    for f in ("account_id", "card_id", "device_id"):
        assert (r1[f] == r2[f]).all()


def test_zipf_puts_the_expected_share_on_the_hottest_ids_and_uniform_does_not():
    n = 200_000
    z = be.draw_keys(np.random.default_rng(1), n, keys="zipf", zipf_s=be.ZIPF_S)
    counts = np.sort(np.bincount(z))[::-1]
    h = np.sum(np.arange(1, be.N_KEYS + 1, dtype=np.float64) ** -be.ZIPF_S)
    want_top1, want_top1000 = 1 / h, np.sum(np.arange(1, 1001, dtype=np.float64) ** -be.ZIPF_S) / h
    assert counts[0] / n == pytest.approx(want_top1, rel=0.05)            # about 6.5 %
    assert counts[:1000].sum() / n == pytest.approx(want_top1000, rel=0.03)  # about half
    steeper = be.draw_keys(np.random.default_rng(1), n, keys="zipf", zipf_s=1.3)
    assert np.bincount(steeper).max() > counts[0] * 2
    u = be.draw_keys(np.random.default_rng(1), n, keys="uniform")
    assert np.bincount(u).max() < 10 and len(np.unique(u)) > 0.85 * n


def test_each_key_field_has_its_own_hot_ids():
    """The hottest account is not the hottest card or device: rules compare card_id with
    device_id and account_id with card_id, which the same id for every field would fire."""
    r = be.random_records(SCHEMA, 20_000, seed=1)
    hot = {f: np.bincount(r[f].astype(np.int64)).argmax() for f in ("account_id", "card_id", "device_id")}
    assert len(set(hot.values())) == 3
    assert (r["card_id"] == r["device_id"]).sum() < 50 and (r["account_id"] == r["card_id"]).sum() < 50


def test_bad_key_options_are_refused():
    with pytest.raises(ValueError, match="keys='normal'"):
        be.draw_keys(np.random.default_rng(0), 10, keys="normal")
    with pytest.raises(ValueError, match="zipf_s=0"):
        be.draw_keys(np.random.default_rng(0), 10, zipf_s=0)
    ns = argparse.Namespace(clients=1, batch=1, processes=1, rounds=1, duration=1, warmup=0, rate=0,
                            echo_only=False, no_echo=False, zipf_s=-1.0)
    with pytest.raises(SystemExit, match="zipf-s"):
        latency.check_args(ns)


def test_payload_pool_holds_the_distribution_it_is_asked_for():
    """A pool of single events holds POOL_EVENTS of them (256 bodies would sample only the
    head of a Zipf distribution); its binary bodies carry the drawn account ids."""
    zipf = be.PayloadPool(SCHEMA, 1, "binary", seed=2)
    uni = be.PayloadPool(SCHEMA, 1, "binary", seed=2, keys="uniform")
    assert zipf.size * zipf.batch >= be.POOL_EVENTS
    assert be.PayloadPool(SCHEMA, 64, "binary").size * 64 >= be.POOL_EVENTS

    def accounts(pool):
        rec = np.frombuffer(b"".join(pool.bodies), dtype=SCHEMA.dtype)
        return rec["account_id"]
    a, u = accounts(zipf), accounts(uni)
    assert np.bincount(a.astype(np.int64)).max() > 0.03 * len(a) > np.bincount(u.astype(np.int64)).max()
    assert (accounts(be.PayloadPool(SCHEMA, 1, "binary", seed=2)) == a).all()
    frame = zipf.request(5, 9, 10)
    assert len(frame) == wire.REQUEST_HEADER.size + SCHEMA.dtype.itemsize


def test_the_bench_options_default_to_zipf_with_the_documented_exponent():
    ap = argparse.ArgumentParser()
    latency.add_arguments(ap)
    a = ap.parse_args([])
    assert a.keys == "zipf" and a.zipf_s == be.ZIPF_S
    assert ap.parse_args(["--keys", "uniform"]).keys == "uniform"
