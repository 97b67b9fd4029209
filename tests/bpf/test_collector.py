"""The sidecar's exposition of one map snapshot (no kernel needed: a Snapshot is plain data)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bpf.collector import SRTT_BUCKETS_S, SocketCollector, srtt_buckets
from bpf.loader import NSLOTS, Snapshot


def _samples(snap: Snapshot) -> dict:
    reg = CollectorRegistry()
    reg.register(SocketCollector(lambda: snap, 7000))
    out = {}
    for fam in text_string_to_metric_families(generate_latest(reg).decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_srtt_buckets_are_cumulative_and_bounded():
    slots = [0] * NSLOTS
    slots[1], slots[7], slots[8], slots[NSLOTS - 1] = 2, 5, 3, 1   # 1 us, <128 us, <256 us, huge
    pairs = srtt_buckets(Snapshot(srtt_slots=slots))
    les = [le for le, _ in pairs]
    counts = [c for _, c in pairs]
    assert les[-1] == "+Inf" and counts[-1] == 11
    assert counts == sorted(counts)
    assert dict(pairs)[repr(128e-6)] == 7           # slot 7 holds srtt < 2**7 us
    assert dict(pairs)[repr(256e-6)] == 10
    assert dict(pairs)[repr(SRTT_BUCKETS_S[-1])] == 10   # the overflow slot only reaches +Inf


def test_exposition_values():
    slots = [0] * NSLOTS
    slots[7] = 4
    snap = Snapshot(bytes_tx=100, bytes_rx=250, retransmits=3, srtt_sum_us=400, srtt_count=4,
                    srtt_slots=slots, connections=2, table_full=1,
                    transitions={("SYN_RECV", "ESTABLISHED"): 2, ("LAST_ACK", "CLOSE"): 1})
    s = _samples(snap)
    p = ("port", "7000")
    assert s[("risk_ebpf_enabled", ())] == 1
    assert s[("risk_tcp_srtt_seconds_count", (p,))] == 4
    assert abs(s[("risk_tcp_srtt_seconds_sum", (p,))] - 400e-6) < 1e-12
    assert s[("risk_tcp_retransmits_total", (p,))] == 3
    assert s[("risk_tcp_bytes_total", (("direction", "rx"), p))] == 250
    assert s[("risk_tcp_bytes_total", (("direction", "tx"), p))] == 100
    assert s[("risk_tcp_connections", (p,))] == 2
    assert s[("risk_tcp_conn_table_full_total", (p,))] == 1
    assert s[("risk_tcp_state_transitions_total",
              (("from", "SYN_RECV"), p, ("to", "ESTABLISHED")))] == 2
