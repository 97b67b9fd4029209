"""The engine serving on an IPv6 front door and enforcing a cidr6 list in the kernel (issue
23; root + bcc, see conftest).

The engine binds tcp://[ULA]:port on a veth inside a namespace made here (bench/netns.py)
with ``enforce.interface: auto``; clients in the other namespace use three IPv6 sources in
three /64s, one of them in the listed /64. Outcomes allowed: a listed source never completes
a TCP handshake, an unlisted one is served (a real request and its decision) within a
generous timeout; an admin reply to a list change is sent only once the kernel's trie holds it.
"""
from __future__ import annotations

import numpy as np
import pytest
import yaml
import zmq

from bench.engine_proc import EngineProcess
from bench.events import random_events
from ingress.client import Client
from shm.runtime.config import load_config
from tests.bpf.autoblock import admin as _admin, dropped as _dropped, metric as _metric, served as _served
from tests.bpf.conftest import require_ebpf
from bench.netns import VethPair

pytestmark = pytest.mark.slow    # one more engine start and bcc compile: make test-slow


@pytest.fixture(scope="module")
def net():
    require_ebpf()
    with VethPair() as n:
        yield n


def _engine(net, tmp, mode):
    nets6 = tmp / "nets6.txt"
    nets6.write_text(f"# the blocked client's /64\n{net.prefix6}\n")
    eng = EngineProcess(tmp, workers=1, metrics=True, prefix=tuple(net.exec_prefix(net.server_ns)),
                        overrides={"workers": {"standby": False},
                                   "lists": {"nets6": {"type": "cidr6", "file": str(nets6), "capacity": 16}},
                                   "enforce": {"mode": mode, "interface": "auto", "lists": ["nets6"]}})
    eng.raw["ingress"]["bind"] = f"tcp://[{net.server6}]:{eng.port}"     # the veth's IPv6 address
    eng.config_path.write_text(yaml.safe_dump(eng.raw, sort_keys=False))
    return eng


@pytest.fixture(scope="module")
def engine(net, tmp_path_factory):
    eng = _engine(net, tmp_path_factory.mktemp("enforce6"), "xdp")
    with eng:
        yield eng
    assert not net.xdp_shown(), "SIGTERM left the XDP program attached"


def _evaluate_from(net, eng, source):
    """One real request over IPv6 from ``source`` (the endpoint's 'source;' part). The
    context is made inside the client namespace: libzmq's I/O thread, which opens the TCP
    connection, starts with the first socket and inherits the namespace of its creator."""
    schema = load_config().schema
    ctx = zmq.Context()
    try:
        with net.inside(net.client_ns):
            c = Client(f"tcp://[{source}]:0;[{net.server6}]:{eng.port}", schema, context=ctx,
                       timeout_ms=20_000, retries=0)
            try:
                return c.evaluate_batch(random_events(np.random.default_rng(5), schema, 1))[0]
            finally:
                c.close()
    finally:
        ctx.term()


def test_tc_mode_on_an_ipv6_front_door(net, tmp_path):
    """First in the module: one enforcing engine per interface, and the XDP engine below
    stays up until the module ends."""
    with _engine(net, tmp_path, "tc") as eng:
        assert f"risk-engine: enforce: tc on {net.server_if}, TCP ports {eng.port}" in eng.output()
        d = _evaluate_from(net, eng, net.allowed6)
        assert d.error is None and d.action, d
        before = _metric(net, eng, "risk_enforce_dropped_packets", reason="nets6")
        assert _dropped(net, eng, net.blocked6)
        assert _metric(net, eng, "risk_enforce_dropped_packets", reason="nets6") > before
    from bpf import hooks
    with net.inside(net.server_ns):
        assert hooks.tc_prog_id(net.server_if) == 0


def test_an_ipv6_front_door_serves_and_drops_the_listed_prefix(net, engine):
    # auto found the veth from its IPv6 address
    assert f"risk-engine: enforce: xdp on {net.server_if}, TCP ports {engine.port}" in engine.output()
    d = _evaluate_from(net, engine, net.allowed6)
    assert d.error is None and d.action, d
    before = _metric(net, engine, "risk_enforce_dropped_packets", reason="nets6")
    assert _dropped(net, engine, net.blocked6)
    assert _metric(net, engine, "risk_enforce_dropped_packets", reason="nets6") > before
    assert _metric(net, engine, "risk_enforce_map_entries", list="nets6") == 1.0
    with net.inside(net.server_ns):
        drops = engine.stats()["log"]["enforce_drops"]
    assert {"source": net.blocked6, "port": engine.port, "list": "nets6"}.items() <= drops[-1].items(), drops


def test_cidr6_list_add_remove_replace_reach_the_kernel_before_the_reply(net, engine):
    r = _admin(engine, cmd="list-add", name="nets6", values=[net.other6])     # a bare address: /128
    assert r["ok"] and r["enforced"] is True and r["count"] == 2, r
    assert _admin(engine, cmd="list-show", name="nets6")["values"] == [net.prefix6, f"{net.other6}/128"]
    assert _metric(net, engine, "risk_enforce_map_entries", list="nets6") == 2.0
    assert _dropped(net, engine, net.other6)
    r = _admin(engine, cmd="list-remove", name="nets6", values=[f"{net.other6}/128"])
    assert r["ok"] and r["enforced"] is True and r["count"] == 1, r
    assert _served(net, engine, net.other6)

    other64 = net.other6.rsplit("::", 1)[0] + "::/64"
    r = _admin(engine, cmd="list-replace", name="nets6", values=[other64])
    assert r["ok"] and r["enforced"] is True, r
    assert _served(net, engine, net.blocked6) and _dropped(net, engine, net.other6)
    assert _admin(engine, cmd="list-replace", name="nets6", values=[net.prefix6])["enforced"]
    assert _dropped(net, engine, net.blocked6) and _served(net, engine, net.other6)


def test_a_bad_cidr6_value_is_refused_and_nothing_changes(net, engine):
    r = _admin(engine, cmd="list-add", name="nets6", values=[net.prefix6, "fd00::1/64"])
    assert not r["ok"] and r["error"]["code"] == "BAD_LIST", r
    msg = r["error"]["message"]
    assert msg.startswith("values[1]: ") and "'fd00::1/64' has host bits set (the block is fd00::/64)" in msg, r
    assert _admin(engine, cmd="list-show", name="nets6")["values"] == [net.prefix6]

