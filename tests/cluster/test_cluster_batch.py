"""A cluster client's batch in flight (ingress/cluster_batch.py): every partition's request is
sent to its owner before any reply is read, replies are matched by request id, and each
request keeps Lazy Pirate. The nodes' ingress is stood in for by real ZeroMQ ROUTER sockets
served by a thread (the test's policy answers, holds or repeats replies); a real nats-server
holds the lease bucket the client's map reads, the test routes the partitions itself."""
from __future__ import annotations

import numpy as np
import pytest

from ingress.admission import shard_of
from ingress.client import RequestError
from ingress.cluster_client import ClusterClient
from shm.types import ErrorCode
from tests.cluster.agentproc import wait_for
from tests.cluster.conftest import LEASE_BUCKET_PARTITIONS as P
from tests.cluster.standins import StandIns
from tests.cluster.test_node import EVENT


def accounts_in(p: int, k: int) -> list[int]:
    ids = np.arange(1, 100_000, dtype=np.int64)
    return ids[shard_of(ids, P) == p][:k].tolist()


def client(lease_bucket, **kw) -> ClusterClient:
    c, bucket = lease_bucket
    return ClusterClient(c.urls, credentials=c.client_credentials, bucket=bucket, **kw)


@pytest.mark.parametrize("transport", ["binary", "json"])
def test_every_partitions_request_is_sent_before_any_reply_is_read(lease_bucket, transport):
    """Eight events over four partitions, two stand-in nodes holding two partitions each. The
    nodes answer nothing until all four requests are in, then answer them in the reverse of
    the order they came: the call returns each event's own decision, in the events' order.
    Sent one partition after the other (the client before ingress.cluster_batch), the first
    request waited for its reply, which the nodes held: the call ended ClientTimeout."""
    held = []

    def policy(nodes, node, envelope, req):
        held.append((node, envelope, req))
        if len(held) == P:
            for n, env, r in reversed(held):
                nodes.send(n, env, r.answer())

    order = [a for pair in zip(*[accounts_in(p, 2) for p in range(P)]) for a in pair]  # p0 p1 p2 p3 p0 ...
    with StandIns(2, policy) as nodes, client(lease_bucket, timeout_ms=20_000, retries=0,
                                              transport=transport) as cc:
        for p in range(P):
            cc._routes[p] = nodes.addrs[p // 2]
        got = cc.evaluate_batch([{**EVENT, "account_id": a} for a in order])
    assert [d.score for d in got] == [float(a) for a in order]
    assert sorted((n, r.partition) for n, r in nodes.received) == [(p // 2, p) for p in range(P)]
    assert len({r.rid for _, r in nodes.received}) == P and cc.ignored_replies == 0


def test_a_reply_to_a_request_no_longer_awaited_or_answered_twice_is_dropped(lease_bucket):
    """Call 1 sends partitions 0 and 1 to one node: partition 0's request is refused OVERLOADED
    at once, partition 1's held, so the call raises with partition 1's request in flight.
    Call 2 sends partitions 1 and 2 (new ids): the node first answers call 1's held request
    (score -1), repeats its refusal, answers partition 2's request twice (the second time with
    score -2), then partition 1's: the call returns its own decisions and drops three replies.
    Sent one after the other (before ingress.cluster_batch), call 1 never sent partition 1's
    request."""
    def policy(nodes, node, envelope, req):
        got = nodes.received
        if len(got) == 1:
            nodes.send(node, envelope, req.refuse())
        elif len(got) == 4:                        # call 2's two requests are in
            (_, first), (_, held), (_, p1), (_, p2) = got
            nodes.send(node, envelope, held.answer([-1.0]))
            nodes.send(node, envelope, first.refuse())
            nodes.send(node, envelope, p2.answer())
            nodes.send(node, envelope, p2.answer([-2.0] * len(p2.accounts)))
            nodes.send(node, envelope, p1.answer())

    with StandIns(1, policy) as nodes, client(lease_bucket, timeout_ms=20_000, retries=0) as cc:
        for p in range(P):
            cc._routes[p] = nodes.addrs[0]
        with pytest.raises(RequestError) as e:
            cc.evaluate_batch([{**EVENT, "account_id": a} for a in accounts_in(0, 1) + accounts_in(1, 1)])
        assert e.value.code == ErrorCode.OVERLOADED
        wait_for(lambda: len(nodes.received) == 2, 30, "call 1's second request reached the node")
        evs = accounts_in(1, 2)[1:] + accounts_in(2, 2)
        got = cc.evaluate_batch([{**EVENT, "account_id": a} for a in evs])
        assert [d.score for d in got] == [float(a) for a in evs]
        assert cc.ignored_replies == 3
    assert [r.partition for _, r in nodes.received] == [0, 1, 1, 2]
    assert nodes.received[2][1].rid > nodes.received[1][1].rid     # call 2 has ids of its own


def test_a_request_not_answered_is_resent_with_its_id_and_the_late_reply_goes_nowhere(lease_bucket):
    """Partitions 0 and 1 on node 0, 2 on node 1; node 0 holds the first attempt of partition
    0's request. After timeout_ms the client closes node 0's socket, opens another and sends
    partition 0's request again: the same id and records, the RETRY flag. Node 0 then answers
    the first attempt (score -1, through its old envelope) and the resend: the call returns
    the resend's decisions; nothing reaches the client through the old connection."""
    first = []

    def policy(nodes, node, envelope, req):
        if node == 0 and req.partition == 0 and not first:
            first.append(envelope)
            return
        if node == 0 and req.partition == 0:
            nodes.send(0, first[0], req.answer([-1.0] * len(req.accounts)))
        nodes.send(node, envelope, req.answer())

    evs = accounts_in(0, 2) + accounts_in(1, 1) + accounts_in(2, 1)
    with StandIns(2, policy) as nodes, client(lease_bucket, timeout_ms=500, retries=5) as cc:
        for p in range(P):
            cc._routes[p] = nodes.addrs[0 if p < 2 else 1]
        got = cc.evaluate_batch([{**EVENT, "account_id": a} for a in evs])
        assert [d.score for d in got] == [float(a) for a in evs]
        assert cc._conns[nodes.addrs[0]].reconnects >= 1 and cc.ignored_replies == 0
    p0 = [r for n, r in nodes.received if r.partition == 0]
    assert len(p0) >= 2 and len({(r.rid, r.records) for r in p0}) == 1
    assert [r.retry for r in p0] == [False] + [True] * (len(p0) - 1)
