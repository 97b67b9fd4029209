"""Issue 25, "a first request in one line" and the ipv4 address type, against one real engine
(the bundled config): dotted addresses in JSON events, lists and explain; the rules request
that names a binary reply's rule indexes; `risk-engine eval`."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import zmq

from bench.engine_proc import REPO, EngineProcess
from engine.admin import request as admin_request
from ingress.client import Client, RequestError
from shm.runtime.config import load_config
from shm.types import ErrorCode
from tests.ingress.test_protocol_doc import unmatched

SCHEMA = load_config(None).schema
BLOCKED = "203.0.113.7"                    # in rules/examples/blocked_ips.txt


def event(**over) -> dict:
    ev = {"account_id": 42, "card_id": 7, "device_id": 9, "amount": 25.0, "currency": "EUR",
          "country": "FR", "ip": "10.0.0.1", "mcc": 5411, "channel": 1,
          "ts_ms": int(time.time() * 1000), "instrument_id": 0, "side": 0, "qty": 0,
          "price": 0.0, "ref_price": 0.0, "is_test": False}
    ev.update(over)
    return ev


@pytest.fixture(scope="module")
def eng(tmp_path_factory):
    with EngineProcess(tmp_path_factory.mktemp("first"), workers=1, metrics=False,
                       overrides={"ingress": {"default_deadline_ms": 10_000}}) as e:
        yield e


def json_request(eng, obj: dict) -> dict:
    """One raw JSON frame over a REQ socket, as a client in any language sends it."""
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.REQ)
    s.linger = 0
    try:
        s.connect(eng.endpoint)
        s.send(json.dumps(obj).encode())
        assert s.poll(60_000), "no reply within 60 s"
        return json.loads(s.recv())
    finally:
        s.close()


def test_json_event_with_a_dotted_ip_is_decided_by_the_list(eng):
    """The issue's refusal (BAD_FIELD: expected integer, got string) is gone: a dotted ip is
    decided, `ip in blocked_ips` matches it; a sloppy address is BAD_FIELD with the reason."""
    r = json_request(eng, {"request_id": 1, "event": event(ip=BLOCKED)})
    assert "blocked_ip" in r["decisions"][0]["rules"], r
    r = json_request(eng, {"request_id": 2, "event": event(ip="10.0.0.1")})
    assert "blocked_ip" not in r["decisions"][0]["rules"], r
    for bad, why in (("010.0.0.1", "leading zero"), ("256.0.0.1", "out of range 0..255"),
                     (" 10.0.0.1", "whitespace"), ("10.0.1", "four decimal octets")):
        r = json_request(eng, {"request_id": 3, "event": event(ip=bad)})
        assert r["error"]["code"] == "BAD_FIELD" and why in r["error"]["message"], (bad, r)
        assert r["error"]["message"].startswith("events[0].ip: "), r
    r = json_request(eng, {"request_id": 4, "event": event(ip=2**32)})
    assert r["error"]["code"] == "OUT_OF_RANGE", r
    # a JSON integer is still the address's u32 (clients written before the type existed)
    r = json_request(eng, {"request_id": 5, "event": event(ip=0xCB007107)})     # 203.0.113.7
    assert "blocked_ip" in r["decisions"][0]["rules"], r


def test_lists_take_and_show_dotted_addresses(eng):
    rep = admin_request(eng.admin_bind, {"cmd": "list-show", "name": "blocked_ips"}, 30_000)
    assert rep["ok"] and BLOCKED in rep["values"] and all(isinstance(v, str) for v in rep["values"]), rep
    rep = admin_request(eng.admin_bind, {"cmd": "list-add", "name": "blocked_ips",
                                         "values": ["10.0.0.99"]}, 30_000)
    assert rep["ok"], rep
    rep = admin_request(eng.admin_bind, {"cmd": "list-show", "name": "blocked_ips"}, 30_000)
    assert "10.0.0.99" in rep["values"], rep
    r = json_request(eng, {"request_id": 10, "event": event(ip="10.0.0.99", account_id=77)})
    assert "blocked_ip" in r["decisions"][0]["rules"], r
    rep = admin_request(eng.admin_bind, {"cmd": "list-add", "name": "blocked_ips",
                                         "values": ["10.0.0.099"]}, 30_000)
    assert not rep["ok"] and rep["error"]["code"] == "BAD_LIST" and "leading zero" in rep["error"]["message"]


def test_explain_shows_the_dotted_ip(eng):
    with Client(eng.endpoint, SCHEMA, timeout_ms=60_000, retries=0, client_id=515) as c:
        c.evaluate(event(ip="192.0.2.55", account_id=515))
    rep = admin_request(eng.admin_bind, {"cmd": "explain", "request": "515:1"}, 600_000)
    assert rep["ok"], rep
    assert rep["request"]["events"][0]["event"]["ip"] == "192.0.2.55", rep


def test_rules_request_names_the_indexes_of_a_binary_reply(eng):
    """A binary reply carries indexes; the rules request maps them to ids (once per
    generation, cached) and resolve() gives the names the JSON transport gives."""
    ev = event(ip=0xCB007107, account_id=88)    # an integer: this test needs no ipv4 parsing
    with Client(eng.endpoint, SCHEMA, timeout_ms=60_000, retries=0) as c:
        d = c.evaluate(ev)
        assert d.ruleset is None and all(isinstance(i, int) for i in d.rules) and d.generation
        ids = c.rule_ids(d.generation)
        assert c.rule_ids(d.generation) is ids                   # cached per generation
        named = c.resolve(d)
        with pytest.raises(RequestError) as e:
            c.rule_ids(d.generation + 1000)
        assert e.value.code == ErrorCode.UNKNOWN_GENERATION
        assert unmatched("UNKNOWN_GENERATION", [e.value.message]) == ([], []), e.value.message
    with Client(eng.endpoint, SCHEMA, timeout_ms=60_000, retries=0, transport="json") as c:
        j = c.evaluate(ev)
    assert "blocked_ip" in named.rules and named.ruleset == j.ruleset
    assert set(named.rules) == set(j.rules) and set(named.shadow_rules) == set(j.shadow_rules)
    assert [ids.rule_ids[i] for i in d.rules] == sorted(j.rules + j.shadow_rules, key=ids.rule_ids.index)


    async def aio():                               # the asyncio client resolves the same way
        from ingress.aio import AsyncClient
        async with AsyncClient(eng.endpoint, SCHEMA, timeout_ms=60_000, retries=0) as ac:
            return await ac.resolve(await ac.evaluate(event(ip=BLOCKED, account_id=89)))
    import asyncio
    a = asyncio.run(aio())
    assert "blocked_ip" in a.rules and a.ruleset == j.ruleset
    r = json_request(eng, {"request_id": 9, "rules": d.generation})
    assert r["generation"] == d.generation and r["rule_ids"] == list(ids.rule_ids), r
    r = json_request(eng, {"request_id": 9, "rules": d.generation, "event": ev})
    assert r["error"]["code"] == "BAD_JSON", r


def _eval(eng, *args, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine.cli", "eval", "--endpoint", eng.endpoint,
                           "--timeout-ms", "60000", *args], cwd=REPO, input=stdin,
                          capture_output=True, text=True, timeout=300)


def test_eval_prints_the_decision_with_rule_names(eng):
    r = _eval(eng, "account_id=5", f"ip={BLOCKED}", "amount=12.5", "country=FR")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("block") and "blocked_ip" in r.stdout, r.stdout
    assert "zero for the fields not given" in r.stderr and "card_id" in r.stderr
    r = _eval(eng, "--json", stdin=json.dumps(event(ip=BLOCKED, account_id=6)))
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["action"] == "block" and "blocked_ip" in d["rules"] and d["ruleset"], d
    r = _eval(eng, "ip=010.0.0.1")
    assert r.returncode == 1 and "BAD_FIELD" in r.stderr and "leading zero" in r.stderr, r.stderr
    r = _eval(eng, "nope=1")
    assert r.returncode == 2 and "nope: not a field" in r.stderr, r.stderr


def test_readme_first_request_examples_run_as_shown(eng, capsys):
    """The README's `risk-engine eval` line and its Python client print what the README says
    (fresh accounts, so this module's other requests do not move their features)."""
    import contextlib
    import io
    import re
    readme = (REPO / "README.md").read_text()
    cmd, shown = re.search(r"\n\$ \.venv/bin/risk-engine eval (.*)\n(.*)\n```", readme).groups()
    cmd = cmd.replace("account_id=42", "account_id=990001").replace("$(date +%s000)", f"{int(time.time())}000")
    r = _eval(eng, *cmd.split())
    assert r.returncode == 0 and r.stdout.strip() == shown, (r.stdout, r.stderr)
    code = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    assert len(code.strip().splitlines()) <= 10 + 2, "the README promises a 10-line client"
    want = re.search(r"print\(.*\)\s+# (.*)\n", code).group(1)
    code = code.replace('"account_id": 42', '"account_id": 990002').replace(
        "tcp://127.0.0.1:5555", eng.endpoint)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    assert out.getvalue().strip() == want
