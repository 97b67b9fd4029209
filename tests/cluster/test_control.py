"""The control bucket's client (engine/cluster/control.py) on the module's three NATS servers:
a joining client gets every current value then INITIAL, later writes follow in revision
order, a compare-and-set on a stale revision is refused, and `cluster status` reads each
node's applied revision. (Engines applying it: tests/cluster/test_node.py.)"""
from __future__ import annotations

import asyncio
import queue

import nats
import pytest

from engine.cluster.control import INITIAL, ControlClient, ControlUnavailable, list_key, read_applied, state_key
from shm.runtime.nats_auth import auth_options


def drain_until_initial(c: ControlClient, timeout_s: float = 20.0) -> list:
    got = []
    while True:
        e = c.entries.get(timeout=timeout_s)
        if e is INITIAL:
            return got
        got.append(e)


def test_a_joining_client_reads_the_current_values_and_a_stale_cas_is_refused(nats3, bucket):
    a = ControlClient(nats3.urls, "a", 3, 20.0, bucket=bucket, credentials=nats3.credentials).start()
    try:
        assert drain_until_initial(a) == []
        r1 = a.write("halt", b'{"on":true}')
        r2 = a.write(list_key("blocked_ips"), b'{"name":"blocked_ips","values":[1]}', 0)
        assert r2 > r1 >= 1
        assert a.write(list_key("blocked_ips"), b'{"values":[2]}', 0) is None      # stale: refused
        assert a.get(list_key("blocked_ips")) == (r2, b'{"name":"blocked_ips","values":[1]}')
        live = [a.entries.get(timeout=10).revision for _ in range(2)]
        assert live == [r1, r2]                     # the watcher, in revision order
        b = ControlClient(nats3.urls, "b", 3, 20.0, bucket=bucket, credentials=nats3.credentials).start()
        try:
            joined = {e.key: e.revision for e in drain_until_initial(b)}
            assert joined == {"halt": r1, "list.blocked_ips": r2}
        finally:
            b.close()
        a.record_applied({"node": "a", "revision": r2, "lag_ms": 1.0})

        async def applied():
            nc = await nats.connect(nats3.urls, **auth_options(nats3.credentials))
            try:
                return await read_applied(nc.jetstream(), bucket)
            finally:
                await nc.close()
        for _ in range(50):
            st = asyncio.run(applied())
            if "a" in st["nodes"]:
                break
        assert st["revision"] == r2 and st["nodes"]["a"]["revision"] == r2
    finally:
        a.close()
    assert "a" not in asyncio.run(applied())["nodes"]     # a stopped client's record is deleted


def test_keys_of_names_and_state_keys_are_valid_kv_tokens():
    assert list_key("blocked_ips") == "list.blocked_ips"
    assert list_key("a.b c") == "list.x" + "a.b c".encode().hex()
    assert state_key("account_state", -5) == "state.account_state.i-5"
    assert state_key("s", "AB.") == "state.s.s" + b"AB.".hex()


def test_a_client_whose_servers_never_answer_gives_up_in_bounded_time():
    c = ControlClient(["nats://127.0.0.1:1"], "x", 1, 1.0)
    with pytest.raises((asyncio.TimeoutError, ControlUnavailable)):
        c.start()
    c.close()
    with pytest.raises(queue.Empty):
        c.entries.get_nowait()


def test_a_list_value_is_checked_for_its_list_type():
    # a cidr6 value is 136 bits: a u64-only check refused every cidr6 list change a node read
    # from the bucket, and a hostile writer's prefix with host bits set must not be applied
    from engine.cluster.control_apply import list_set
    from shm.ipv6 import cidr6_key
    k = cidr6_key("2001:db8::/32")
    assert list_set({"values": [k, k]}, "cidr6").tolist() == [k]
    assert list_set({"values": [3, 1, 3]}, "u32").tolist() == [1, 3]
    for vtype, bad in (("cidr6", [k | 1]), ("cidr6", [129 << 128]), ("cidr6", [-1]), ("u32", [k]),
                       ("u64", [2**64]), ("u64", [True]), ("u64", "1")):
        with pytest.raises(ValueError):
            list_set({"values": bad}, vtype)
