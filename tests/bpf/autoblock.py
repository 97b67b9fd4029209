"""The engine tests' helpers in tests/bpf: an admin request, a metric read in the server
namespace, a handshake served or dropped; and for rules that block a source, the rules every
engine there loads (one Numba compile of them), a client bound to one source address in the
client namespace, and the two checks both engine modules run: a block until its ttl, and an operator's lift
(test_enforce_engine.py on its IPv4 engine; test_autoblock_engine.py on a dual-stack one,
with ``ingress.compiled_loop`` on and off). Outcomes allowed: the decision is replied; from
then on that source completes no TCP handshake with the front door while another source is
served, until the ttl passes or the block is lifted; afterwards it is served again. Waits are
bounded and generous (a dropped SYN is never answered).
"""
from __future__ import annotations

import time
from pathlib import Path

import zmq

from bench.events import random_records
from engine.admin_client import request
from engine.admin_log import read as read_admin_log
from ingress.client import Client

ALLOWED_TIMEOUT_S, BLOCKED_TIMEOUT_S = 5.0, 1.0
BLOCKING_ACCOUNT, LONG_BLOCKING_ACCOUNT = 4242424242, 4343434343
AUTOBLOCK_RULES = f"""ruleset: autoblock
version: 1
rules:
  - id: block_the_sender
    when: "account_id == {BLOCKING_ACCOUNT}"
    action: block
    block_source: {{ttl: 2s}}
  - id: block_the_sender_long
    when: "account_id == {LONG_BLOCKING_ACCOUNT}"
    action: block
    block_source: {{ttl: 10m}}
"""
# (client source, server address) attribute names of the VethPair, per family
FAMILIES = {"ipv4": ("other", "server"), "ipv6": ("other6", "server6")}


def admin(eng, **req):
    return request(eng.admin_bind, req, 30_000)


def metric(net, eng, name, **labels) -> float | None:
    with net.inside(net.server_ns):                  # /metrics listens on the namespace's lo
        st = eng.stats()
    rows = [r for r in st.get(name, []) if all(r.get(k) == v for k, v in labels.items())]
    return rows[0]["value"] if rows else None


def served(net, eng, source) -> bool:
    return net.connect_from(source, eng.port, ALLOWED_TIMEOUT_S)


def dropped(net, eng, source) -> bool:
    return not net.connect_from(source, eng.port, BLOCKED_TIMEOUT_S)


class Sender:
    """A client bound to one source address in the client namespace."""

    def __init__(self, net, eng, family):
        src, dst = (getattr(net, a) for a in FAMILIES[family])
        self.source = src
        wrap = (lambda a: f"[{a}]") if family == "ipv6" else (lambda a: a)
        with net.inside(net.client_ns):       # libzmq's I/O thread, made by the first socket,
            self.ctx = zmq.Context()          # lives in the client namespace
            self.ctx.socket(zmq.REQ).close()
        self.client = Client(f"tcp://{wrap(src)}:0;{wrap(dst)}:{eng.port}", eng.config_path,
                             context=self.ctx, timeout_ms=5000, retries=0)
        self.recs = random_records(self.client.codec.schema, 3, seed=7)
        self.recs["account_id"] = [1, BLOCKING_ACCOUNT, LONG_BLOCKING_ACCOUNT]

    def send(self, i: int):
        return self.client.evaluate_batch(self.recs[i:i + 1])[0]

    def close(self):
        self.client.close()
        self.ctx.term()


def blocks_until_ttl(net, engine, family: str) -> None:
    """The request fires block_source (ttl 2 s): its reply still arrives, and from then on
    that source gets no TCP handshake (drop counter with the auto-blocked reason);
    list-show auto-blocked shows it with its expiry; after the ttl it is gone and the source
    is served again. Another source of that family is served throughout."""
    s = Sender(net, engine, family)
    try:
        drops = metric(net, engine, "risk_enforce_dropped_packets", reason="auto-blocked")
        blocks = metric(net, engine, "risk_enforce_auto_blocks", outcome="blocked")
        s.send(0)                                         # served; fires no block rule
        assert admin(engine, cmd="list-show", name="auto-blocked")["count"] == 0
        assert s.send(1).action == "block"                # the decision is replied
        shown = admin(engine, cmd="list-show", name="auto-blocked")
        assert shown["values"] == [s.source], shown
        assert 0 < shown["expires"][0]["expires_in_s"] <= 2.0, shown
        assert dropped(net, engine, s.source)
        assert served(net, engine, net.allowed6 if family == "ipv6" else net.allowed)
        assert metric(net, engine, "risk_enforce_dropped_packets", reason="auto-blocked") > drops
        assert metric(net, engine, "risk_enforce_auto_blocks", outcome="blocked") == blocks + 1
        left_s = admin(engine, cmd="list-show", name="auto-blocked")["expires"][0]["expires_in_s"]
        time.sleep(left_s + 0.1)
        assert served(net, engine, s.source)
        assert admin(engine, cmd="list-show", name="auto-blocked") == {
            "ok": True, "name": "auto-blocked", "count": 0, "enforced": True, "values": [], "expires": []}
        assert s.send(0).error is None                    # answered again (ClientTimeout otherwise)
        assert metric(net, engine, "risk_enforce_auto_blocks", outcome="blocked") == blocks + 1
        assert metric(net, engine, "risk_enforce_auto_blocks", outcome="no_peer") == 0
    finally:
        s.close()


def lift_before_ttl(net, engine, family: str) -> None:
    """A 10-minute block, then ``autoblock-remove``: a request naming a bad address among
    good ones is refused whole (BAD_ADDRESS, the block stays, nothing logged); the good one
    lifts it, is logged in admin.log, and the next SYN from that source is served."""
    s = Sender(net, engine, family)
    log = Path(engine.raw["journal"]["dir"]) / "admin.log"
    try:
        assert s.send(2).action == "block"
        assert admin(engine, cmd="list-show", name="auto-blocked")["values"] == [s.source]
        assert dropped(net, engine, s.source)
        records = len(read_admin_log(str(log))[0])          # a missing file: an empty log

        for bad in (["10.0.0.300"], [s.source, "fe80::1%eth0"], [s.source, 7], []):
            r = admin(engine, cmd="autoblock-remove", values=bad)
            assert not r["ok"] and r["error"]["code"] == ("BAD_ARGUMENT" if not bad else "BAD_ADDRESS"), r
        r = admin(engine, cmd="autoblock-remove", values=[s.source, "fe80::1%eth0"])
        assert r["error"]["message"].startswith("values[1]: 'fe80::1%eth0' is not an IPv4 or IPv6 address"), r
        assert admin(engine, cmd="list-show", name="auto-blocked")["values"] == [s.source]
        assert len(read_admin_log(str(log))[0]) == records

        other = net.allowed6 if family == "ipv4" else net.allowed   # blocked by nothing
        r = admin(engine, cmd="autoblock-remove", values=[s.source, other])
        assert r == {"ok": True, "name": "auto-blocked", "lifted": [s.source], "not_blocked": [other],
                     "count": 0, "enforced": True}, r
        assert served(net, engine, s.source)                   # the map entry went before the reply
        assert s.send(0).error is None
        last = read_admin_log(str(log))[0][-1]
        assert last["cmd"] == "autoblock-remove" and last["values"] == [s.source, other], last
        assert admin(engine, cmd="list-show", name="auto-blocked")["count"] == 0
    finally:
        s.close()
