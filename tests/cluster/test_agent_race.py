"""A lease agent whose take-over (``prepare``) fails while a renewal of that lease is in flight
(engine.cluster.agent on the module's 3-server cluster): the renewal's answer must not bring
the lease back. Before the fix the agent either crashed (KeyError: the renewal refused after
the release, then `_lose` of a lease no longer held; the whole agent stopped and the node
served nothing, seen with two engine nodes in tests/cluster/test_faults.py) or, had the
renewal won, extended the table of a partition whose take-over failed."""
from __future__ import annotations

import asyncio

import nats

from engine.cluster.agent import LeaseAgent
from engine.cluster.leases import LeaseStore
from engine.cluster.ownership import OwnershipTable
from shm.runtime.nats_auth import auth_options

P = 4


def test_a_renewal_in_flight_when_prepare_fails_does_not_revive_the_lease(nats3, bucket):
    events, ended = [], []

    async def body():
        nc = await nats.connect(nats3.urls, **auth_options(nats3.credentials), connect_timeout=2)
        try:
            renew_started, prepare_failed = asyncio.Event(), asyncio.Event()

            async def prepare(p, rev):
                await asyncio.wait_for(renew_started.wait(), 30)
                return False                 # the take-over failed: release the lease

            def on_end(p):
                ended.append(p)
                prepare_failed.set()

            agent = LeaseAgent(nats3.urls, "x", "tcp://127.0.0.1:1", P, 2.0, bucket=bucket, credentials=nats3.credentials,
                               on_event=events.append, table=OwnershipTable(P), prepare=prepare,
                               on_end=on_end)
            agent.store = LeaseStore(nc.jetstream(timeout=5.0), bucket, timeout_s=5.0)
            await agent._open()
            real = agent.store.renew

            async def renew(p, value, rev):  # the real renewal, sent once prepare has failed
                renew_started.set()
                await asyncio.wait_for(prepare_failed.wait(), 30)
                return await real(p, value, rev)
            agent.store.renew = renew
            await agent._take_one(0, 0)
            rev, stamp = agent.held[0]
            agent.held[0] = (rev, stamp - agent.renew_ns)      # due now
            await asyncio.wait_for(agent._renew_due(), 30)
            await asyncio.wait_for(asyncio.gather(*agent.pending.values()), 30)
            for _ in range(50):                                  # the release, bounded
                if any(e["ev"] == "prepare_failed" for e in events):
                    break
                await asyncio.sleep(0.05)
            return agent, (await agent.store.read(0))
        finally:
            await nc.close()

    agent, entry = asyncio.run(asyncio.wait_for(body(), 60))
    assert ended == [0] and any(e["ev"] == "prepare_failed" for e in events), events
    assert 0 not in agent.held and agent.table.owns(0) == 0
    assert not any(e["ev"] in ("renewed", "ready") for e in events), events
    assert entry.value is None                    # the release won: the partition is free
