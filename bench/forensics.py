"""Why did a decision miss its deadline? Line up the engine's TIMEOUT log with its worker
stall log, its snapshot log and the machine's CPU steal (bench.soak prints this).

``LogCollector(stats_fn)`` polls the engine's ``/stats`` every ``period_s`` on a thread and
keeps every event-log entry it sees (the engine retains only the newest 64 of each kind), plus
the CPU steal and iowait share of every period from /proc/stat. ``explain(...)`` groups the
timeouts into bursts and names, for each, what the engine logged around it.
"""
from __future__ import annotations

import sys
import threading
import time

WINDOW_BEFORE_NS = 250_000_000    # a stall this long before a timeout can have caused it
SNAPSHOT_WINDOW_NS = 2_000_000_000


def cpu_times() -> tuple[int, int, int]:
    """(total, steal, iowait) jiffies of all CPUs from /proc/stat."""
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    return sum(vals), vals[7] if len(vals) > 7 else 0, vals[4]


class LogCollector:
    def __init__(self, stats_fn, period_s: float = 1.0):
        self.stats_fn, self.period_s = stats_fn, period_s
        self.seen: dict[str, dict] = {"stalls": {}, "timeouts": {}, "snapshots": {}}
        self.cpu: list[tuple[int, float, float]] = []      # (wall ns, steal %, iowait %)
        self.polls_failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="log-collector")

    def start(self) -> "LogCollector":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._poll()                   # the last entries

    def _run(self) -> None:
        last = cpu_times()
        while not self._stop.wait(self.period_s):
            now = cpu_times()
            dt = max(1, now[0] - last[0])
            self.cpu.append((time.time_ns(), 100 * (now[1] - last[1]) / dt, 100 * (now[2] - last[2]) / dt))
            last = now
            self._poll()

    def _poll(self) -> None:
        try:
            logs = (self.stats_fn() or {}).get("log")
        except Exception:
            logs = None
        if not logs:
            self.polls_failed += 1
            return
        for kind, rows in logs.items():
            for e in rows:
                self.seen[kind][(e["time_ns"], e.get("worker"))] = e

    def entries(self, kind: str) -> list[dict]:
        return sorted(self.seen[kind].values(), key=lambda e: e["time_ns"])


def bursts(timeouts: list[dict], gap_ns: int = 1_000_000_000) -> list[list[dict]]:
    """Timeout log entries (each already one burst of one worker) closer than ``gap_ns``
    to the previous one form one burst."""
    out: list[list[dict]] = []
    for e in timeouts:
        if out and e["time_ns"] - max(x["last_time_ns"] for x in out[-1]) < gap_ns:
            out[-1].append(e)
        else:
            out.append([e])
    return out


def explain(timeouts: list[dict], stalls: list[dict], snapshots: list[dict],
            cpu: list[tuple[int, float, float]]) -> list[dict]:
    """One row per burst of timeouts: when, how many, the worker stalls whose span (end
    time minus duration .. end time) overlaps the burst widened by WINDOW_BEFORE_NS before
    it (a request times out 50 ms after the stall that holds it began), snapshots within
    SNAPSHOT_WINDOW_NS, and the highest CPU steal and iowait sampled around it."""
    rows = []
    for b in bursts(timeouts):
        t0, t1 = b[0]["time_ns"], max(e["last_time_ns"] for e in b)
        near = [s for s in stalls
                if s["time_ns"] >= t0 - WINDOW_BEFORE_NS and s["time_ns"] - s["ns"] <= t1]
        snaps = [s for s in snapshots if t0 - SNAPSHOT_WINDOW_NS <= s["time_ns"] <= t1 + SNAPSHOT_WINDOW_NS]
        around = [c for c in cpu if t0 - 2_000_000_000 <= c[0] <= t1 + 2_000_000_000]
        rows.append({
            "time_ns": t0, "span_ms": (t1 - t0) / 1e6, "timeouts": sum(e["timeouts"] for e in b),
            "max_age_ms": max(e["max_age_ns"] for e in b) / 1e6,
            "request_ring_occupancy_max": max(e["request_ring_occupancy_max"] for e in b),
            "stalls": [f"w{s['worker']} {s['phase']} {s['ns'] / 1e6:.1f} ms, ended "
                       f"{(s['time_ns'] - t0) / 1e6:+.0f} ms from the first timeout (woke: {s['woke']})"
                       for s in near],
            "snapshots": [f"hold {s['hold_ns'] / 1e6:.1f} ms (pause {s.get('pause_wait_ns', 0) / 1e6:.1f} "
                          f"+ copy {s.get('copy_ns', 0) / 1e6:.1f} ms; preempted "
                          f"{s.get('hold_preempted', '?')}, waited {s.get('hold_waits', '?')} times), "
                          f"journal fsync "
                          f"{s['journal_fsync_ns'] / 1e6:.1f} ms, write {s['write_ns'] / 1e6:.1f} ms, "
                          f"ended {(s['time_ns'] - t0) / 1e6:+.0f} ms from the first timeout" for s in snaps],
            "steal_pct_max": max((c[1] for c in around), default=None),
            "iowait_pct_max": max((c[2] for c in around), default=None),
        })
    return rows


def print_report(rows: list[dict], stall_count: int, total_timeouts: int, out=None) -> None:
    out = out or sys.stdout
    logged = sum(r["timeouts"] for r in rows)
    print(f"  timeout forensics: {total_timeouts} TIMEOUT decisions ({logged} in the logs read), "
          f"in {len(rows)} burst(s); {stall_count} worker stalls logged", file=out)
    for r in rows:
        t = time.strftime("%H:%M:%S", time.gmtime(r["time_ns"] / 1e9))
        steal = "-" if r["steal_pct_max"] is None else f"{r['steal_pct_max']:.0f}%"
        iow = "-" if r["iowait_pct_max"] is None else f"{r['iowait_pct_max']:.0f}%"
        print(f"    {t}Z {r['timeouts']:5d} timeouts over {r['span_ms']:.0f} ms, oldest "
              f"{r['max_age_ms']:.1f} ms, ring "
              f"occupancy <= {r['request_ring_occupancy_max']}; steal <= {steal}, iowait <= {iow}",
              file=out)
        for s in r["stalls"][:8]:
            print(f"        stall: {s}", file=out)
        for s in r["snapshots"]:
            print(f"        snapshot: {s}", file=out)
        if not r["stalls"] and not r["snapshots"]:
            print("        no worker stall or snapshot logged nearby", file=out)
