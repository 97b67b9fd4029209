"""Lease agents as processes contending for partitions on a 3-server JetStream cluster:
at most one serves a partition at any instant (their printed serving intervals, all on the
machine's CLOCK_BOOTTIME, never overlap), a kill -9'd owner's partitions are taken within the
protocol's bound, and an owner stopped past its TTL stops serving and learns it lost them.
A watching contender takes a lease no earlier than a TTL after its holder's last renewal."""
from __future__ import annotations

import asyncio
import signal
import time

import pytest

from engine.cluster.agent import LeaseAgent
from engine.cluster.members import MEMBER_GONE_TTLS
from engine.cluster.agentthread import AgentThread
from engine.cluster.leases import encode
from engine.cluster.ownership import now_ns
from tests.cluster.agentproc import assert_one_owner_at_a_time, wait_for
from tests.cluster.test_leases import run

TTL_S = 2.0
P = 12
TICK_S = TTL_S / 8
# the protocol's bound from a holder's death to a contender's take: the holder's last renewal
# was at most a renewal period (TTL/4, plus a late tick) before it, the contender saw it
# through its watch within milliseconds and takes a TTL after that sight
TAKEOVER_BOUND_S = TTL_S + 2 * TICK_S
SLACK_S = 3.0                   # two loaded cores, three agents, three servers


def takeover_timeline(survivors, gone, killed_ns) -> str:
    """What the survivors did about the killed owner's partitions, in seconds after the kill:
    a failure's explanation (takes with their first sight and send, adoptions, NATS errors)."""
    lines = []
    for a in survivors:
        for e in a.events():
            t = (e["t_ns"] - killed_ns) / 1e9
            if e["ev"] in ("acquired", "adopted", "released") and e["p"] in gone and t > -TTL_S:
                lines.append(f"{t:6.2f} {a.node} {e['ev']} p{e['p']} rev {e['rev']} after {e.get('prev_rev')}"
                             f" seen {(e.get('seen_ns', killed_ns) - killed_ns) / 1e9:.2f}"
                             f" sent {(e.get('cas_ns', killed_ns) - killed_ns) / 1e9:.2f}")
            elif e["ev"] in ("nats_error", "lost") and t > -TTL_S:
                lines.append(f"{t:6.2f} {a.node} {e['ev']} {e.get('error', e.get('p'))}")
    return "\n".join(sorted(lines))


def everything_owned(procs, n=P):
    owned = [a.owned() for a in procs]
    return sum(len(o) for o in owned) == n and all(owned) and owned


def test_contending_agents_never_serve_a_partition_at_the_same_time(agents):
    procs = [agents("a0", P, TTL_S), agents("a1", P, TTL_S), agents("a2", P, TTL_S)]
    # balancing moves partitions between them: the first takes all, then hands some over
    wait_for(lambda: everything_owned(procs), 40, "every partition owned, each agent some")
    time.sleep(TTL_S)
    for a in procs:
        a.stop()
    evs = {a.node: a.events() for a in procs}
    assert all(any(e["ev"] == "stopped" for e in ev) for ev in evs.values()), \
        {a.node: a.text()[-2000:] for a in procs}
    by_p = assert_one_owner_at_a_time(evs)
    assert set(by_p) == set(range(P))
    assert any(len({t[2] for t in ts}) > 1 for ts in by_p.values()), "no partition changed hands"


@pytest.mark.slow
def test_a_killed_owners_partitions_are_taken_within_the_lease_bound(agents):
    procs = [agents(f"k{i}", P, TTL_S) for i in range(3)]
    share = -(-P // 3)
    # balanced (no agent over its share, from their logs: a status line can be a TTL old), so
    # the victim is not releasing one a tick when it dies
    held = wait_for(lambda: (h := [a.held() for a in procs]) and sum(map(len, h)) == P
                    and all(0 < len(x) <= share for x in h) and h, 40, "every partition held, balanced")
    victim = max(range(3), key=lambda i: len(held[i]))
    time.sleep(TICK_S)
    killed_ns = now_ns()
    procs[victim].signal(signal.SIGKILL)
    procs[victim].proc.wait(10)
    # what it held when it died, from its whole log. With its last status instead (up to a TTL
    # old) a partition it had released since, taken by a survivor before the kill, was waited
    # for until the balancing moved it again: likely CI's failure on 2026-12-07 (5 partitions
    # of a share of 4, the last "taken" 6.1 s after the kill; the agents' logs were not kept)
    gone = procs[victim].held()
    survivors = [a for i, a in enumerate(procs) if i != victim]

    def taken():
        got = {}
        for a in survivors:
            for e in a.events():
                if e["ev"] == "acquired" and e["p"] in gone and e["t_ns"] > killed_ns:
                    got.setdefault(e["p"], e["t_ns"])
        return got if set(got) == gone else None
    got = wait_for(taken, TAKEOVER_BOUND_S + SLACK_S + 5, f"partitions {sorted(gone)} taken over")
    worst_s = (max(got.values()) - killed_ns) / 1e9
    print(f"kill -9 of {procs[victim].node}: its {len(gone)} partitions taken in at most {worst_s:.2f} s "
          f"(lease_ttl_s={TTL_S}, bound {TAKEOVER_BOUND_S} s)")
    assert worst_s <= TAKEOVER_BOUND_S + SLACK_S, takeover_timeline(survivors, gone, killed_ns)
    time.sleep(TICK_S * 2)
    for a in survivors:
        a.stop()
    assert_one_owner_at_a_time({a.node: a.events() for a in procs})


@pytest.mark.slow
def test_an_owner_stopped_past_its_ttl_stops_serving_and_learns_it_lost(agents):
    procs = [agents(f"s{i}", P, TTL_S) for i in range(3)]
    wait_for(lambda: everything_owned(procs), 40, "every partition owned, each agent some")
    time.sleep(TTL_S)
    frozen = procs[0]
    held = frozen.owned()
    frozen.signal(signal.SIGSTOP)
    stopped_ns = now_ns()
    time.sleep(3 * TTL_S)                       # others take its partitions meanwhile
    taken_at = {e["p"]: e["rev"] for a in procs[1:] for e in a.events()
                if e["ev"] == "acquired" and e["t_ns"] > stopped_ns and e["p"] in held}
    others = set(taken_at)
    resumed_ns = now_ns()
    frozen.signal(signal.SIGCONT)

    def learned():
        lost = {e["p"] for e in frozen.events() if e["ev"] == "lost" and e["t_ns"] > resumed_ns}
        return lost if others <= lost else None
    lost = wait_for(learned, 10, f"{frozen.node} reports losing {sorted(others)}")
    refused = {e["p"]: e["reason"] for e in frozen.events() if e["ev"] == "lost" and e["p"] in others}
    # a renewal attempt after the resume is refused; the deadline may also have been judged first
    assert set(refused.values()) <= {"refused", "expired"}, refused
    assert others, "no partition was taken while the owner was stopped (machine too loaded?)"
    # every partition it held is lost or, if nobody took it, still its own under a newer revision
    assert held <= lost | frozen.owned(), (held, lost, frozen.owned())
    wait_for(lambda: frozen.last_status(after_ns=resumed_ns), 10, "a status after the resume")
    for a in procs:
        a.stop()
    # after the resume it may win a partition back, but only by a new take, never on its old token
    for st in (e for e in frozen.events() if e["ev"] == "status" and e["t_ns"] > resumed_ns):
        for p, rev in st["owned"].items():
            assert int(p) not in others or rev > taken_at[int(p)], (p, rev, taken_at)
    assert_one_owner_at_a_time({a.node: a.events() for a in procs})


def test_a_watching_contender_takes_no_earlier_than_a_ttl_after_the_holders_last_write(nats3, bucket):
    """The contender's rule end to end, on the machine's one CLOCK_BOOTTIME: the test holds
    partition 0, stamping the clock before each write and renewing every TTL/4 for 2 TTLs,
    then stops; an agent watching the bucket takes it. The take must be sent at least a TTL
    after the stamp of the revision it took over, so after that holder's deadline (stamp +
    TTL - TTL/4): every delay (scheduling, delivery) only makes the take later, so this
    cannot pass by luck. How much later it came is printed."""
    stamps, events = {}, []
    holder = encode("holder", "tcp://127.0.0.1:1")

    async def hold(store):
        await store.open(1, replicas=3)
        stamps[0] = now_ns()
        rev = await store.take(0, holder, 0)
        stamps[rev] = stamps.pop(0)
        agent = AgentThread(LeaseAgent(nats3.urls, "w", "tcp://127.0.0.1:2", 1, TTL_S, bucket=bucket,
                                       on_event=events.append, credentials=nats3.credentials)).start()
        try:
            for _ in range(8):
                await asyncio.sleep(TTL_S / 4)
                stamp = now_ns()
                rev = await store.renew(0, holder, rev)
                if rev is None:          # taken (this test thread was late): the rule still holds
                    break
                stamps[rev] = stamp
            for _ in range(200):         # bounded: the agent takes the lease it stopped renewing
                if any(e["ev"] == "acquired" for e in events):
                    break
                await asyncio.sleep(0.05)
        finally:
            agent.stop()
    run(nats3, bucket, hold)
    took = [e for e in events if e["ev"] == "acquired"]
    assert took, events
    t = took[0]
    assert t["prev_rev"] in stamps, (t, stamps)
    late_s = (t["cas_ns"] - stamps[t["prev_rev"]]) / 1e9
    print(f"take sent {late_s:.3f} s after the holder's last stamp (lease_ttl_s={TTL_S:g}); "
          f"first seen {(t['seen_ns'] - stamps[t['prev_rev']]) / 1e6:.1f} ms after it")
    assert late_s >= TTL_S, t
    assert t["seen_ns"] >= stamps[t["prev_rev"]], t      # sight after the write after the stamp


@pytest.mark.slow
def test_a_node_whose_leases_lapsed_gets_no_partition_released_to_it_until_it_returns(agents):
    """A node cut off (stopped: neither renewals nor heartbeats): the other takes its
    partitions and keeps every one. Before, the share still counted the lapsed node until its
    heartbeat was MEMBER_GONE_TTLS old, so the survivor released partitions down to half,
    for nobody to take: unserved until the node was counted gone (seen in
    tests/cluster/test_faults_node.py: every partition held 15.5 s after the cut, TTL 4 s).
    Back, it gets its share again by balancing."""
    a, b = procs = [agents("c0", P, TTL_S), agents("c1", P, TTL_S)]
    wait_for(lambda: everything_owned(procs), 40, "every partition owned, each agent some")
    time.sleep(TTL_S)                           # past the balancing: a stable assignment
    a.signal(signal.SIGSTOP)
    stopped_ns = now_ns()
    try:
        wait_for(lambda: len(b.owned()) == P, TAKEOVER_BOUND_S + SLACK_S + 5, "b holds every partition")
        time.sleep(MEMBER_GONE_TTLS * TTL_S)   # the window in which b released before
        released = [e["p"] for e in b.events() if e["ev"] == "released" and e["t_ns"] > stopped_ns]
        assert released == [] and len(b.owned()) == P, released
    finally:
        a.signal(signal.SIGCONT)
    wait_for(lambda: everything_owned(procs), 40, "a back: both hold partitions")
    for x in procs:
        x.stop()
    assert_one_owner_at_a_time({x.node: x.events() for x in procs})
