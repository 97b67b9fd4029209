"""The update latency of kernel enforcement (issue 23): from an admin ``list-add`` reply to the
ring-buffer timestamp of the first packet the kernel then drops from that source.

One repetition: ``list-add`` SOURCE (the reply says ``"enforced": true``), ``time.monotonic_ns()``
at once, one TCP SYN from SOURCE, the engine's sampled drop events read from ``/stats``
(``log.enforce_drops``) until that source's drop shows, then ``list-remove``. The program
stamps a drop with ``bpf_ktime_get_ns()`` (CLOCK_MONOTONIC, ``mono_ns`` in ``/stats``), the
clock of ``time.monotonic_ns()`` here, so the two compare exactly. The figure includes sending
the SYN after the reply (the engine updated the map before it replied): it bounds what a
client sees, reply to enforced.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from bench.netns import syn_packet
from engine.admin_client import request

WAIT_S = 5.0                    # a drop event shows within milliseconds; bounded anyway


@dataclass(frozen=True)
class UpdateSample:
    start_ns: int               # time.monotonic_ns() before the list-add request
    reply_ns: int               # ... at its reply
    sent_ns: int                # ... after the SYN was sent
    drop_ns: int                # the first drop of that source since start_ns (ring buffer)

    @property
    def latency_us(self) -> float:
        return (self.drop_ns - self.reply_ns) / 1e3


def _admin(bind: str, **req) -> dict:
    r = request(bind, req, 30_000)
    if not r.get("ok") or r.get("enforced") is not True:
        raise RuntimeError(f"admin {req['cmd']} name={req['name']!r}: reply {r}")
    return r


def _drops_since(net, eng, source: str, since_ns: int) -> list[int]:
    """CLOCK_MONOTONIC stamps of the sampled drops of ``source`` at or after ``since_ns``."""
    with net.inside(net.server_ns):              # /stats listens on the namespace's lo
        st = eng.stats() or {}
    return sorted(d["mono_ns"] for d in st.get("log", {}).get("enforce_drops", [])
                  if d.get("source") == source and d["mono_ns"] >= since_ns)


def measure(net, eng, source: str, reps: int, list_name: str = "blocked_ips") -> list[UpdateSample]:
    """``reps`` repetitions against the engine ``eng`` (metrics on) serving in
    ``net.server_ns`` and enforcing ``list_name``; ``source`` is an address of the client
    namespace that the list does not hold. Raises RuntimeError when a SYN sent after a
    list-add reply is not seen dropped within WAIT_S."""
    raw = net.raw_socket()
    pkt = syn_packet(source, net.server, eng.port)
    out = []
    try:
        for i in range(reps):
            start_ns = time.monotonic_ns()
            _admin(eng.admin_bind, cmd="list-add", name=list_name, values=[source])
            reply_ns = time.monotonic_ns()
            raw.sendto(pkt, (net.server, 0))
            sent_ns = time.monotonic_ns()
            deadline, seen = time.monotonic() + WAIT_S, []
            while not seen and time.monotonic() < deadline:
                seen = _drops_since(net, eng, source, start_ns)
                if not seen:
                    time.sleep(0.002)
            _admin(eng.admin_bind, cmd="list-remove", name=list_name, values=[source])
            if not seen:
                raise RuntimeError(f"repetition {i}: no drop event for source={source} within "
                                   f"{WAIT_S} s of a SYN sent after the list-add reply")
            out.append(UpdateSample(start_ns, reply_ns, sent_ns, seen[0]))
    finally:
        raw.close()
    return out


def summary(samples: list[UpdateSample]) -> dict:
    """min/p50/p99/max of reply -> first drop in us, and how many were under 1 ms."""
    lat = sorted(s.latency_us for s in samples)
    if not lat:
        return {"count": 0}

    def pct(p):                          # nearest rank
        return lat[min(len(lat) - 1, max(0, int(round(p / 100 * len(lat))) - 1))]
    return {"count": len(lat), "min_us": round(lat[0], 1), "p50_us": round(pct(50), 1),
            "p99_us": round(pct(99), 1), "max_us": round(lat[-1], 1),
            "under_1ms": sum(1 for x in lat if x < 1000.0)}
