"""shm.names: every shared-memory name an engine instance uses, spelled in one place."""
from __future__ import annotations

import os

import pytest

from shm import names as N


def test_names_carry_instance_and_owner_pid():
    assert N.segment_name("re", "req0", 1234) == "/risk-engine.re.1234.req0"
    assert N.segment_name("re", "x") == f"/risk-engine.re.{os.getpid()}.x"
    p = N.parse_name("risk-engine.re.1234.req0")
    assert (p.instance, p.owner_pid, p.name) == ("re", 1234, "req0")
    assert N.parse_name("/risk-engine.re.12x.req0") is None
    for bad in (("r.e", "x"), ("", "x"), ("re", "a/b"), ("re", "a.b"), ("a" * 17, "x"), ("re", "x", 0)):
        with pytest.raises(N.SegmentError):
            N.segment_name(*bad)


def test_worker_roles_and_the_derived_fired_ring():
    assert [f(3) for f in (N.request_ring, N.response_ring, N.fired_ring, N.request_bell)] == \
        ["req3", "resp3", "fired3", "reqbell3"]
    resp = N.segment_name("re", N.response_ring(3), 77)
    assert N.fired_ring_name(resp, 3) == "/risk-engine.re.77.fired3"
    assert N.fired_ring_name(resp[1:], 3) == "/risk-engine.re.77.fired3"
    for bad in (N.segment_name("re", N.response_ring(2), 77), N.segment_name("re", "resp3x", 77),
                "/elsewhere.re.77.resp3"):
        with pytest.raises(ValueError, match="response ring name="):
            N.fired_ring_name(bad, 3)


def test_feature_arrays_are_named_by_their_kernel_argument():
    for arg in ("ft_txn_count_1m", "fl_blocked_ips", "st_account_state", "fs_control"):
        assert N.feature_array(arg) == arg
    for bad in ("control", "ft_", "xx_name", "req0", "ft_a.b"):
        with pytest.raises(N.SegmentError, match="feature array="):
            N.feature_array(bad)
