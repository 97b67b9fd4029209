"""bench.forensics: bursts of timeouts lined up with the stalls and snapshots around them."""
from __future__ import annotations

import io

from bench.forensics import bursts, explain, print_report

MS = 1_000_000
T = 1_800_000_000_000_000_000          # a wall time in ns


def _timeout(t_ms, last_ms=None, n=1, worker=0):
    return {"time_ns": T + t_ms * MS, "last_time_ns": T + (last_ms if last_ms is not None else t_ms) * MS,
            "worker": worker, "timeouts": n, "max_age_ns": 51 * MS, "request_ring_occupancy_max": 7}


def _stall(end_ms, dur_ms, phase="pickup"):
    return {"time_ns": T + end_ms * MS, "worker": 0, "phase": phase, "ns": dur_ms * MS,
            "events": 3, "woke": "busy"}


def test_entries_closer_than_a_second_form_one_burst():
    b = bursts([_timeout(0, 100, 5), _timeout(900, 950, 2, worker=1), _timeout(3000)])
    assert [len(x) for x in b] == [2, 1]


def test_a_burst_names_the_stalls_that_overlap_it_and_nearby_snapshots():
    timeouts = [_timeout(1000, 1300, 40)]
    stalls = [_stall(1350, 400, "journal"),   # 950..1350: holds the burst
              _stall(400, 20),                     # long over before the burst
              _stall(5000, 30)]                    # after it
    snaps = [{"time_ns": T + 2500 * MS, "hold_ns": 9 * MS, "journal_fsync_ns": MS, "write_ns": 200 * MS},
             {"time_ns": T + 60_000 * MS, "hold_ns": 9 * MS, "journal_fsync_ns": MS, "write_ns": 200 * MS}]
    cpu = [(T + 1000 * MS, 3.0, 20.0), (T + 90_000 * MS, 50.0, 50.0)]
    (row,) = explain(timeouts, stalls, snaps, cpu)
    assert row["timeouts"] == 40 and row["span_ms"] == 300
    assert len(row["stalls"]) == 1 and "journal 400.0 ms" in row["stalls"][0]
    assert len(row["snapshots"]) == 1 and "+1500 ms" in row["snapshots"][0]
    assert row["steal_pct_max"] == 3.0 and row["iowait_pct_max"] == 20.0
    out = io.StringIO()
    print_report([row], stall_count=3, total_timeouts=41, out=out)
    text = out.getvalue()
    assert "41 TIMEOUT decisions (40 in the logs read), in 1 burst(s)" in text
    assert "stall: w0 journal" in text
