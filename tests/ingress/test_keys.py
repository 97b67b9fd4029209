"""`risk-engine keys` and the client's CURVE support against a real CURVE ROUTER."""
import asyncio
import os
import shutil

import pytest
import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message

from engine.cli import main
from ingress.aio import AsyncClient
from ingress.client import Client, ClientTimeout, CurveKeys
from tests.ingress.decision_server import DecisionServer
from tests.ingress.wire_helpers import SCHEMA, event, make_codec

pytestmark = pytest.mark.skipif(not zmq.has("curve"), reason="libzmq without CURVE")


def test_keys_writes_a_pair_and_refuses_to_overwrite(tmp_path, capsys):
    d = tmp_path / "keys"
    assert main(["keys", "--dir", str(d), "--name", "server"]) == 0
    pub, sec = zmq.auth.load_certificate(str(d / "server.key_secret"))
    assert len(pub) == 40 and len(sec) == 40
    assert zmq.auth.load_certificate(str(d / "server.key"))[1] is None
    assert os.stat(d / "server.key_secret").st_mode & 0o077 == 0
    assert main(["keys", "--dir", str(d), "--name", "server"]) == 1
    assert "exists" in capsys.readouterr().err
    assert main(["keys", "--dir", str(d), "--name", "server", "--force"]) == 0
    assert zmq.auth.load_certificate(str(d / "server.key_secret"))[0] != pub
    assert main(["keys", "--dir", str(d), "--name", "../evil"]) == 2


def test_curve_allowed_key_is_served_others_are_not(tmp_path):
    for name in ("server", "alice", "mallory"):
        assert main(["keys", "--dir", str(tmp_path / "gen"), "--name", name]) == 0
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    shutil.copy(tmp_path / "gen" / "alice.key", allowed)
    srv_pub, srv_sec = zmq.auth.load_certificate(str(tmp_path / "gen" / "server.key_secret"))
    server_pub_file = str(tmp_path / "gen" / "server.key")
    with DecisionServer(make_codec(), curve_secret=srv_sec, curve_public=srv_pub) as server:
        auth = ThreadAuthenticator(server.ctx)
        auth.start()
        try:
            auth.configure_curve(domain="*", location=str(allowed))
            alice = CurveKeys.from_files(str(tmp_path / "gen" / "alice.key_secret"), server_pub_file)
            with Client(server.endpoint, SCHEMA, curve=alice, timeout_ms=5000) as c:
                assert c.evaluate(event(y_f64=70.0)).action == "review"
            mallory = CurveKeys.from_files(str(tmp_path / "gen" / "mallory.key_secret"),
                                           server_pub_file)
            for keys in (mallory, None):     # unknown key, then plaintext
                with Client(server.endpoint, SCHEMA, curve=keys, timeout_ms=300, retries=0) as c:
                    with pytest.raises(ClientTimeout):
                        c.evaluate(event())
        finally:
            auth.stop()
    assert len(server.seen) == 1


def _wait_refused(sock: zmq.Socket, ctx: zmq.Context) -> None:
    """Until ``sock``'s handshake has been refused (monitor events, bounded); ``ctx``: a sync
    context on ``sock``'s own (the monitor is an inproc PAIR)."""
    refused = {zmq.EVENT_HANDSHAKE_FAILED_AUTH, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
               zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, zmq.EVENT_DISCONNECTED}
    addr = f"inproc://refused-{id(sock)}"
    sock.monitor(addr, zmq.EVENT_ALL)
    mon = ctx.socket(zmq.PAIR)
    mon.connect(addr)
    try:
        for _ in range(1000):
            assert mon.poll(10_000), "no handshake event in 10 s"
            if recv_monitor_message(mon)["event"] in refused:
                return
        raise AssertionError("no refused handshake in 1000 monitor events")
    finally:
        sock.disable_monitor()
        mon.close(linger=0)


@pytest.mark.parametrize("flavour", ["sync", "asyncio"])
@pytest.mark.parametrize("who", ["unknown key", "plaintext"])
def test_a_refused_handshake_before_the_send_times_out_not_hangs(tmp_path, flavour, who):
    """The server refuses the handshake before the client sends: the REQ socket has no pipe
    left, and the client must still give up within its timeout (ClientTimeout), not block in
    send forever."""
    for name in ("server", "mallory"):
        assert main(["keys", "--dir", str(tmp_path), "--name", name]) == 0
    (tmp_path / "allowed").mkdir()
    srv_pub, srv_sec = zmq.auth.load_certificate(str(tmp_path / "server.key_secret"))
    keys = (CurveKeys.from_files(str(tmp_path / "mallory.key_secret"), str(tmp_path / "server.key"))
            if who == "unknown key" else None)
    with DecisionServer(make_codec(), curve_secret=srv_sec, curve_public=srv_pub) as server:
        auth = ThreadAuthenticator(server.ctx)
        auth.start()
        try:
            auth.configure_curve(domain="*", location=str(tmp_path / "allowed"))
            if flavour == "sync":
                with Client(server.endpoint, SCHEMA, curve=keys, timeout_ms=300, retries=1) as c:
                    _wait_refused(c._socket(300), zmq.Context.instance())
                    with pytest.raises(ClientTimeout):
                        c.evaluate(event())
            else:
                asyncio.run(_async_refused(server.endpoint, keys))
        finally:
            auth.stop()
    assert server.seen == []


async def _async_refused(endpoint: str, keys: CurveKeys | None) -> None:
    c = AsyncClient(endpoint, SCHEMA, curve=keys, timeout_ms=300, retries=1)
    try:
        _wait_refused(c._socket(300), zmq.Context.shadow(c._ctx.underlying))
        with pytest.raises(ClientTimeout):
            await c.evaluate(event())
    finally:
        c.close()


def test_curve_keys_from_public_file_is_refused(tmp_path):
    assert main(["keys", "--dir", str(tmp_path), "--name", "c"]) == 0
    with pytest.raises(ValueError, match="no secret"):
        CurveKeys.from_files(str(tmp_path / "c.key"), str(tmp_path / "c.key"))
