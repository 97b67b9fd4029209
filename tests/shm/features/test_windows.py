"""Window kinds against a brute-force oracle over random event streams.

Oracle (the documented semantics): epoch(t) = t // bucket_ms; head(key) = largest epoch
committed for the key; an event is committed iff epoch > head - nb (else dropped as late);
a read at event time t covers the committed events with epoch in (E - nb, E], E =
max(head, epoch(t)), plus the event itself if its epoch is in that range.
"""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from shm.features import layout, table as T
from shm.features.hll import _hll_add_many, _hll_estimate
from shm.features.scalar import (_read_age, _read_last, _read_update_age, _read_update_last,
                                 _update_age, _update_last)
from shm.features.distinct import _read_distinct, _read_update_distinct, _update_distinct
from shm.features.windows import (LATE, OK, _read_update_avg, _read_update_count,
                                  _read_update_max, _read_update_min, _read_update_sum, _read_avg, _read_count, _read_max,
                                  _read_min, _read_sum, _update_avg, _update_count,
                                  _update_max, _update_min, _update_sum)

READ = {"count": _read_count, "sum": _read_sum, "avg": _read_avg, "min": _read_min, "max": _read_max}
UPDATE = {"count": _update_count, "sum": _update_sum, "avg": _update_avg, "min": _update_min,
          "max": _update_max}
FUSED = {"count": _read_update_count, "sum": _read_update_sum, "avg": _read_update_avg,
         "min": _read_update_min, "max": _read_update_max}
PROBE = 8


def new_table(kind, nb, capacity, registers=0):
    sw = layout.slot_words(kind, nb, registers)
    t = np.zeros(T.table_words(capacity, sw), dtype=np.uint64)
    T.init_table(t, capacity, sw)
    return t, sw


class Oracle:
    def __init__(self, nb, bucket_ms):
        self.nb, self.bucket_ms = nb, bucket_ms
        self.events = {}               # key -> list of (epoch, value)
        self.head = {}

    def window(self, key, t_ms):
        e = t_ms // self.bucket_ms
        head = self.head.get(key, e)
        eff = max(head, e)
        vals = [v for (ep, v) in self.events.get(key, []) if eff - self.nb < ep <= eff]
        return vals, e > eff - self.nb

    def commit(self, key, t_ms, v):
        e = t_ms // self.bucket_ms
        head = self.head.get(key, e)
        if e <= head - self.nb:
            return LATE
        self.head[key] = max(head, e)
        self.events.setdefault(key, []).append((e, v))
        return OK


def agg(kind, vals):
    if kind == "count":
        return len(vals)
    if not vals:
        return math.nan
    return {"sum": sum, "min": min, "max": max, "avg": lambda x: sum(x) / len(x)}[kind](vals)


def same(a, b):
    if isinstance(b, float) and math.isnan(b):
        return math.isnan(a)
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


# times cluster around bucket and window boundaries; deltas go backwards (out of order)
event = st.tuples(st.integers(0, 3),                                   # key
                  st.sampled_from([-5000, -1001, -1000, -999, -1, 0, 0, 1, 999, 1000, 1001,
                                   3000, 4999, 5000, 5001, 12000]),    # time delta ms
                  st.integers(-50, 50))                                # value


@pytest.mark.slow                # 45-60 s of window kernels: make test-slow (CI)
@settings(max_examples=60, deadline=None)
@given(kind=st.sampled_from(["count", "sum", "avg", "min", "max"]),
       nb=st.sampled_from([1, 2, 5]), stream=st.lists(event, min_size=1, max_size=80))
def test_window_matches_oracle(kind, nb, stream):
    bucket_ms = 1000
    t, sw = new_table(kind, nb, 16)
    fused, _ = new_table(kind, nb, 16)          # read+update in one call must agree
    ref = Oracle(nb, bucket_ms)
    now = 20_000
    for key, dt, v in stream:
        now = max(0, now + dt)
        k = np.uint64(key)
        got = READ[kind](t, 16, sw, PROBE, nb, bucket_ms, k, now, float(v))
        vals, inside = ref.window(key, now)
        want = agg(kind, vals + ([v] if inside else []))
        assert same(got, want), (kind, key, now, got, want)
        assert same(FUSED[kind](fused, 16, sw, PROBE, nb, bucket_ms, k, now, float(v)), want)
        rc = UPDATE[kind](t, 16, sw, PROBE, nb, bucket_ms, k, now, float(v))
        assert rc == ref.commit(key, now, v)
    assert T.counters(t)["evictions"] == 0
    assert T.counters(t)["late_dropped"] == T.counters(fused)["late_dropped"]


@settings(max_examples=30, deadline=None)
@given(stream=st.lists(event, min_size=1, max_size=80))
def test_distinct_window_is_hll_of_window_values(stream):
    """The windowed sketch is exactly the HLL of the values inside the window."""
    nb, bucket_ms, p = 3, 1000, 6
    t, sw = new_table("distinct", nb, 16, 1 << p)
    fused, _ = new_table("distinct", nb, 16, 1 << p)
    ref = Oracle(nb, bucket_ms)
    now = 20_000
    for key, dt, v in stream:
        now = max(0, now + dt)
        val = np.uint64(v & 0xFFFF)
        got = _read_distinct(t, 16, sw, PROBE, nb, bucket_ms, p, np.uint64(key), now, val)
        vals, inside = ref.window(key, now)
        regs = np.zeros(1 << p, np.uint8)
        _hll_add_many(regs, p, np.array(vals + ([int(val)] if inside else []), dtype=np.uint64))
        assert got == round(_hll_estimate(regs))
        assert _read_update_distinct(fused, 16, sw, PROBE, nb, bucket_ms, p, np.uint64(key), now, val) == got
        rc = _update_distinct(t, 16, sw, PROBE, nb, bucket_ms, p, np.uint64(key), now, val)
        assert rc == ref.commit(key, now, int(val))


def test_bucket_and_window_boundaries_exact():
    nb, bucket_ms = 60, 1000
    t, sw = new_table("count", nb, 8)
    k = np.uint64(7)
    _update_count(t, 8, sw, PROBE, nb, bucket_ms, k, 999, 0.0)       # epoch 0
    _update_count(t, 8, sw, PROBE, nb, bucket_ms, k, 1000, 0.0)      # epoch 1
    assert _read_count(t, 8, sw, PROBE, nb, bucket_ms, k, 59_999, 0.0) == 3   # epoch 59: both in
    assert _read_count(t, 8, sw, PROBE, nb, bucket_ms, k, 60_000, 0.0) == 2   # epoch 60: epoch 0 out
    assert _read_count(t, 8, sw, PROBE, nb, bucket_ms, k, 61_000, 0.0) == 1   # both out
    assert _update_count(t, 8, sw, PROBE, nb, bucket_ms, k, 200_000, 0.0) == OK
    assert _update_count(t, 8, sw, PROBE, nb, bucket_ms, k, 140_999, 0.0) == LATE   # epoch 140 <= 200-60
    assert _update_count(t, 8, sw, PROBE, nb, bucket_ms, k, 141_000, 0.0) == OK     # epoch 141: inside
    assert _read_count(t, 8, sw, PROBE, nb, bucket_ms, k, 0, 0.0) == 2    # late read: head's window
    assert T.counters(t)["late_dropped"] == 1


def test_event_times_are_clamped_to_what_the_meta_holds():
    """A time field beyond 2^62 - 1 ms (or negative) is clamped, as the kernel and the reference
    model both do, so a hostile timestamp cannot wrap a key's head."""
    from shm.features.featureset import FeatureSet
    from shm.features.spec import parse_specs
    from shm.schema import Schema
    from rules.feature_model import FeatureModel
    schema = Schema.build({"account_id": "u64", "ts": "u64"}, "account_id")
    specs = parse_specs({"n": {"kind": "count", "key": "account_id", "window": "60s", "time": "ts"}},
                        {}, {}, schema)
    b = FeatureSet(specs, schema).binding("n")
    assert "min(max(0, np.int64(rec.ts)), %d)" % T.MAX_TIME_MS in b.emit_read("rec")
    model = FeatureModel(specs, schema)
    for raw, want in ((2**64 - 1, 0), (2**62 + 5, T.MAX_TIME_MS), (2**63 - 1, T.MAX_TIME_MS), (5, 5)):
        assert model._now(specs.features[0], {"ts": raw}, 0) == want


def test_eviction_least_recently_seen():
    nb, bucket_ms, cap = 10, 1000, 4
    t, sw = new_table("count", nb, cap)
    for i, k in enumerate([1, 2, 3, 4]):
        _update_count(t, cap, sw, cap, nb, bucket_ms, np.uint64(k), 1000 * (i + 1), 0.0)
    _update_count(t, cap, sw, cap, nb, bucket_ms, np.uint64(1), 6000, 0.0)   # 1 is now the newest
    _update_count(t, cap, sw, cap, nb, bucket_ms, np.uint64(5), 7000, 0.0)   # full: evicts key 2
    c = T.counters(t)
    assert c["evictions"] == 1 and c["fill"] == 4 and c["fill_ratio"] == 1.0
    assert _read_count(t, cap, sw, cap, nb, bucket_ms, np.uint64(1), 7000, 0.0) == 3
    assert _read_count(t, cap, sw, cap, nb, bucket_ms, np.uint64(2), 7000, 0.0) == 1   # forgotten
    assert _read_count(t, cap, sw, cap, nb, bucket_ms, np.uint64(3), 7000, 0.0) == 2


@settings(max_examples=25, deadline=None)
@given(stream=st.lists(st.tuples(st.integers(0, 40), st.integers(0, 3000)), min_size=1, max_size=120))
def test_eviction_only_forgets(stream):
    """With a table too small for the keys, a count never exceeds the exact count and every
    insertion beyond capacity is an eviction."""
    nb, bucket_ms, cap = 4, 1000, 8
    t, sw = new_table("count", nb, cap)
    ref = Oracle(nb, bucket_ms)
    now = 10_000
    for key, dt in stream:
        now += dt
        got = _read_count(t, cap, sw, 4, nb, bucket_ms, np.uint64(key), now, 0.0)
        vals, inside = ref.window(key, now)
        assert 1 <= got <= len(vals) + 1
        rc = _update_count(t, cap, sw, 4, nb, bucket_ms, np.uint64(key), now, 0.0)
        if rc == OK:
            ref.commit(key, now, 0)
    c = T.counters(t)
    assert c["fill"] <= cap and c["lock_timeouts"] == 0
    if len({k for k, _ in stream}) > cap:
        assert c["evictions"] > 0


def test_bytes_per_key_count_60():
    assert layout.slot_bytes("count", 60) == 256


@settings(max_examples=30, deadline=None)
@given(stream=st.lists(st.tuples(st.integers(0, 3), st.integers(-3000, 5000), st.integers(0, 9)),
                       min_size=1, max_size=60))
def test_age_and_last_match_oracle(stream):
    sw = layout.slot_words("age")
    ta, tl, fa, fl = (new_table("age", 0, 16)[0] for _ in range(4))
    first, last = {}, {}                       # key -> first ms; key -> (ms, value)
    now = 10_000
    for key, dt, v in stream:
        now = max(0, now + dt)
        k = np.uint64(key)
        want_age = (now - min(first.get(key, now), now)) // 1000
        want_last = last[key][1] if key in last else math.nan
        assert _read_age(ta, 16, sw, PROBE, k, now) == want_age
        assert _read_update_age(fa, 16, sw, PROBE, k, now) == want_age
        assert same(_read_last(tl, 16, sw, PROBE, k, now), want_last)
        assert same(_read_update_last(fl, 16, sw, PROBE, k, now, float(v)), want_last)
        _update_age(ta, 16, sw, PROBE, k, now)
        rc = _update_last(tl, 16, sw, PROBE, k, now, float(v))
        first[key] = min(first.get(key, now), now)
        if key not in last or now >= last[key][0]:
            last[key] = (now, float(v))
            assert rc == OK
        else:
            assert rc == LATE


def test_lock_held_by_a_dead_process_times_out_and_is_counted():
    nb, bucket_ms, cap = 4, 1000, 8
    t, sw = new_table("count", nb, cap)
    k = np.uint64(3)
    assert _update_count(t, cap, sw, PROBE, nb, bucket_ms, k, 1000, 0.0) == OK
    used = np.nonzero(t[T.SLOT_BASE + 1::sw][:cap])[0]
    b = T.SLOT_BASE + int(used[0]) * sw
    t[b + 1] |= T.LOCK                               # a holder killed mid-update
    assert _update_count(t, cap, sw, PROBE, nb, bucket_ms, k, 1000, 0.0) == T.ERR_TIMEOUT
    assert _read_count(t, cap, sw, PROBE, nb, bucket_ms, k, 1000, 0.0) == 1   # only the event
    assert T.counters(t)["lock_timeouts"] == 2
