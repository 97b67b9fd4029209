"""Prometheus custom collector: reads the BPF maps at scrape time, never per event."""
from __future__ import annotations

import threading
from typing import Callable

from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily)

from bpf.loader import NSLOTS, Snapshot

# Slot k (1 <= k < NSLOTS-1) counts srtt < 2**k us (program.c uses bpf_log2l, which also
# puts 0 in slot 1); the last slot absorbs everything larger, so it only reaches +Inf.
SRTT_BUCKETS_S = tuple(float(2 ** k) * 1e-6 for k in range(1, NSLOTS - 1))


def srtt_buckets(snap: Snapshot) -> list[tuple[str, float]]:
    """Cumulative (le, count) pairs for risk_tcp_srtt_seconds, ending with +Inf."""
    out, acc = [], snap.srtt_slots[0]
    for k, le_s in enumerate(SRTT_BUCKETS_S, start=1):
        acc += snap.srtt_slots[k]
        out.append((repr(le_s), acc))
    out.append(("+Inf", sum(snap.srtt_slots)))
    return out


class SocketCollector:
    """Exposes one Snapshot per scrape. ``read`` is called under a lock (one scrape at a time)."""

    def __init__(self, read: Callable[[], Snapshot], port: int):
        self._read = read
        self._lock = threading.Lock()
        self._port = str(port)

    def collect(self):
        with self._lock:
            snap = self._read()
        port = self._port
        yield GaugeMetricFamily("risk_ebpf_enabled", "1 when the eBPF socket sidecar is loaded",
                                value=1)
        h = HistogramMetricFamily("risk_tcp_srtt_seconds",
                                  "Smoothed RTT samples of front-door sockets (tcp:tcp_probe)",
                                  labels=["port"])
        h.add_metric([port], srtt_buckets(snap), sum_value=snap.srtt_sum_us * 1e-6)
        yield h
        c = CounterMetricFamily("risk_tcp_retransmits_total",
                                "Segments retransmitted by front-door sockets", labels=["port"])
        c.add_metric([port], snap.retransmits)
        yield c
        c = CounterMetricFamily("risk_tcp_state_transitions_total",
                                "TCP state changes of front-door sockets",
                                labels=["port", "from", "to"])
        for (frm, to), n in sorted(snap.transitions.items()):
            c.add_metric([port, frm, to], n)
        yield c
        g = GaugeMetricFamily("risk_tcp_connections",
                              "Open front-door connections tracked in the BPF map",
                              labels=["port"])
        g.add_metric([port], snap.connections)
        yield g
        c = CounterMetricFamily("risk_tcp_bytes_total",
                                "Bytes through front-door sockets at the socket layer "
                                "(tx: engine sent, rx: engine received)",
                                labels=["port", "direction"])
        c.add_metric([port, "rx"], snap.bytes_rx)
        c.add_metric([port, "tx"], snap.bytes_tx)
        yield c
        c = CounterMetricFamily("risk_tcp_conn_table_full_total",
                                "Connections not tracked because the BPF map was full",
                                labels=["port"])
        c.add_metric([port], snap.table_full)
        yield c
