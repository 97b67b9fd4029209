"""The lease agent's heartbeat and roster read (engine.cluster.members) run beside its
renewals, not in front of them: a roster read that takes two TTLs (a listing of the bucket and
a read per node, each up to its timeout on a loaded or failing server) must not stop the
renewals meanwhile. Before the fix the agent's loop awaited the roster, so no lease was
renewed for as long as it took: every partition unserved from its deadline on. The roster is
made slow here by a pause before the real read (the module's 3-server cluster)."""
from __future__ import annotations

import asyncio

import engine.cluster.agent as agent_mod
from engine.cluster.leases import LeaseStore
from engine.cluster.ownership import now_ns
from tests.cluster.test_unknown_writes import P, TTL_S, _run_agent

SLOW_S = 2 * TTL_S


def test_a_slow_roster_read_does_not_hold_up_the_renewals(nats3, bucket, monkeypatch):
    slow: list[list[int]] = []                 # [start, end] of each slow roster read

    class SlowRoster(LeaseStore):
        async def roster(self):
            if not slow or slow[-1][1]:
                slow.append([now_ns(), 0])
                await asyncio.sleep(SLOW_S)
                got = await super().roster()
                slow[-1][1] = now_ns()
                return got
            return await super().roster()
    monkeypatch.setattr(agent_mod, "LeaseStore", SlowRoster)

    def renewed_within(evs, lo, hi):
        return {int(q) for e in evs if e["ev"] == "renewed" and lo < e["t_ns"] < hi for q in e["leases"]}

    def done(evs, a):                           # every partition held, then a whole slow read after it
        held = [e["t_ns"] for e in evs if e["ev"] == "acquired"]
        return len(held) == P and any(s > max(held) and e for s, e in slow)
    events = _run_agent(nats3, bucket, done)
    held_at = max(e["t_ns"] for e in events if e["ev"] == "acquired")
    lo, hi = next((s, e) for s, e in slow if s > held_at and e)
    assert renewed_within(events, lo, hi) == set(range(P)), (lo, hi, events)
    assert not [e for e in events if e["ev"] == "lost"]
