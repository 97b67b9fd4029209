"""Every feature kind, on the smallest and oddest tables a config can declare, stays inside
its table: capacity 1-6, any probe, 1-6 buckets, 16-32 HLL registers, keys and times at
random, through the compiled read, update and fused read+update functions, with
guard words after the table that must stay zero. (capacity < probe once wrote past the
table: see test_spec_lists.)"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from shm.runtime.config import load_config
from shm.features import distinct as D, scalar as S, state as ST, table as T, windows as W
from shm.features.spec import parse_specs

SCHEMA = load_config().schema
GUARD = 64


@st.composite
def table_specs(draw):
    kind = draw(st.sampled_from(["count", "sum", "avg", "min", "max", "distinct", "age", "last", "state"]))
    cap = draw(st.integers(1, 6))
    raw = {"capacity": cap, "probe": draw(st.integers(1, 40))}
    if kind == "state":
        return kind, parse_specs({}, {}, {"s": {"key": "account_id", **raw}}, SCHEMA).states[0]
    raw.update(kind=kind, key="account_id")
    if kind not in ("count", "age"):
        raw["of"] = "ip" if kind == "distinct" else "amount"
    if kind not in ("age", "last"):
        nb = draw(st.integers(1, 6))
        raw.update(window=f"{nb * draw(st.sampled_from([1, 2, 60]))}s", buckets=nb)
    if kind == "distinct":
        raw["registers"] = draw(st.sampled_from([16, 32]))
    return kind, parse_specs({"f": raw}, {}, {}, SCHEMA).features[0]


def _call(kind, spec, t, op, key, now, value):
    a = (t, spec.capacity, spec.slot_words, spec.probe_len)
    if kind == "state":
        return ST._set_state(*a, key, op % 3, now) if op else ST._read_state(*a, key)
    if kind in ("age", "last"):
        extra = (value,) if kind == "last" else ()
        f = getattr(S, ("_read_", "_update_", "_read_update_")[op] + kind)
        return f(*a, key, now, *(extra if op or kind != "last" else ()))
    w = (spec.nbuckets, spec.bucket_ms)
    if kind == "distinct":
        f = getattr(D, ("_read_", "_update_", "_read_update_")[op] + kind)
        return f(*a, *w, int(np.log2(spec.registers)), key, now, int(value) & 0xFFFFFFFF)
    f = getattr(W, ("_read_", "_update_", "_read_update_")[op] + kind)
    return f(*a, *w, key, now, value)


@settings(max_examples=150, deadline=None)
@pytest.mark.slow                # about a minute of table kernels: make test-slow (CI)
@given(table_specs(), st.lists(st.tuples(st.integers(0, 2), st.integers(1, 12),
                                         st.integers(0, 400_000), st.floats(0, 1e6)),
                               min_size=1, max_size=60))
def test_every_kind_stays_inside_the_smallest_tables(ks, ops):
    kind, spec = ks
    assert spec.probe_len <= spec.capacity
    end = T.table_words(spec.capacity, spec.slot_words)
    buf = np.zeros(end + GUARD, np.uint64)
    t = buf[:end]
    T.init_table(t, spec.capacity, spec.slot_words)
    for op, key, now, value in ops:
        _call(kind, spec, t, op, key, now, value)
    assert not buf[end:].any(), f"{kind} capacity={spec.capacity} probe={spec.probe_len} wrote past the table"
    c = T.counters(t)
    assert 0 <= c["fill"] <= spec.capacity and c["lock_timeouts"] == 0
