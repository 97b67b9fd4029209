"""Client against a real ROUTER decision server: decisions, errors, Lazy Pirate, DEALER shapes."""
import numpy as np
import pytest
import zmq

from shm.schema import Schema
from shm.types import ErrorCode
from ingress import wire
from ingress.client import Client, ClientTimeout, Decision, RequestError
from tests.ingress.decision_server import DecisionServer
from tests.ingress.wire_helpers import SCHEMA, event, make_codec, records


@pytest.fixture
def server():
    with DecisionServer(make_codec()) as s:
        yield s


@pytest.mark.parametrize("transport", ["binary", "json"])
def test_evaluate_single_and_batch(server, transport):
    with Client(server.endpoint, SCHEMA, transport=transport, timeout_ms=5000) as c:
        d = c.evaluate(event(0, y_f64=90.0, flag=True))
        assert d.action == "block" and d.score == 90.0 and d.error is None and d.flags == ()
        if transport == "json":
            assert (d.rules, d.shadow_rules, d.ruleset) == (("big",), ("flagged",), "test@1")
        else:
            assert (d.rules, d.generation) == ((0, 1), 1)
        ds = c.evaluate_batch([event(i, y_f64=float(s), flag=False)
                               for i, s in enumerate([10, 60, 85])])
        assert [x.action for x in ds] == ["allow", "review", "block"]
        assert [x.score for x in ds] == [10.0, 60.0, 85.0]
    ids = [s[1] for s in server.seen]
    assert ids == [1, 2] and len({s[0] for s in server.seen}) == 1


def test_evaluate_batch_of_records(server):
    recs = records(5)
    with Client(server.endpoint, SCHEMA, timeout_ms=5000) as c:
        ds = c.evaluate_batch(recs)
    assert [d.score for d in ds] == recs["y_f64"].tolist()
    assert all(isinstance(d, Decision) for d in ds)


def test_lazy_pirate_reconnects_and_keeps_ids():
    with DecisionServer(make_codec(), drop=2) as server:
        with Client(server.endpoint, SCHEMA, timeout_ms=150, retries=3, client_id=77) as c:
            d = c.evaluate(event(0, y_f64=55.0))
            assert d.action == "review"
            assert c.reconnects == 2
            d2 = c.evaluate(event(0, y_f64=1.0))
            assert d2.action == "allow"
    retry = int(wire.HeaderFlag.RETRY)
    assert server.seen == [(77, 1, 0), (77, 1, retry), (77, 1, retry), (77, 2, 0)]


def test_timeout_after_all_retries():
    with DecisionServer(make_codec(), drop=10) as server:
        with Client(server.endpoint, SCHEMA, timeout_ms=80, retries=2, client_id=5) as c:
            with pytest.raises(ClientTimeout) as ei:
                c.evaluate(event())
            assert ei.value.request_id == 1 and c.reconnects == 3
    assert [s[:2] for s in server.seen] == [(5, 1)] * 3


def test_engine_error_reply_raises_with_code(server):
    other = Schema.build({"id": "u64", "y_f64": "f64", "flag": "bool", "x": "u8"}, "id")
    with Client(server.endpoint, other, timeout_ms=5000) as c:
        with pytest.raises(RequestError) as ei:
            c.evaluate({"id": 1, "y_f64": 1.0, "flag": False, "x": 3})
        assert ei.value.code == ErrorCode.SCHEMA_MISMATCH and ei.value.request_id == 1
    with Client(server.endpoint, other, transport="json", timeout_ms=5000) as c:
        with pytest.raises(RequestError) as ei:
            c.evaluate({"id": 1, "y_f64": 1.0, "flag": False, "x": 3})
        assert ei.value.code in (ErrorCode.UNKNOWN_FIELD, ErrorCode.MISSING_FIELD)


def test_local_validation_raises_before_sending(server):
    with Client(server.endpoint, SCHEMA, timeout_ms=5000) as c:
        with pytest.raises(RequestError) as ei:
            c.evaluate(event(a_u8=300))
        assert ei.value.code == ErrorCode.OUT_OF_RANGE and ei.value.request_id is None
    assert server.seen == []


@pytest.mark.parametrize("delimiter", [True, False])
def test_dealer_clients_are_served(server, delimiter):
    ctx = zmq.Context.instance()
    d = ctx.socket(zmq.DEALER)
    d.linger = 0
    d.connect(server.endpoint)
    try:
        frame = wire.pack_request(SCHEMA.hash, records(2), 3, 9)
        d.send_multipart(([b""] if delimiter else []) + [frame])
        assert d.poll(5000)
        reply = d.recv_multipart()
        assert (reply[0] == b"") == delimiter and len(reply) == (2 if delimiter else 1)
        rid, err, dec, _ = wire.unpack_reply(reply[-1])
        assert (rid, err, len(dec)) == (9, 0, 2)
        d.send_multipart([b"", frame, b"extra"])
        assert d.poll(5000)
        rid, err, _, msg = wire.unpack_reply(d.recv_multipart()[-1])
        assert err == ErrorCode.BAD_FRAME and "frames" in msg
    finally:
        d.close()


def test_ipc_endpoint(tmp_path):
    with DecisionServer(make_codec(), endpoint=f"ipc://{tmp_path}/re.sock") as server:
        with Client(server.endpoint, SCHEMA, timeout_ms=5000) as c:
            assert c.evaluate(event(y_f64=np.float64(99.0).item())).action == "block"
