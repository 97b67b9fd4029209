"""CURVE on the real front door and admin plane: an allowed key is served, an unknown key
and a plaintext client are refused (never answered)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from engine.admin import request as admin_request
from shm.runtime.config import load_config
from ingress.client import Client, ClientTimeout, CurveKeys
from bench.engine_proc import EngineProcess
from bench.events import random_events


def keys(d, name):
    subprocess.run([sys.executable, "-m", "engine.cli", "keys", "--dir", str(d), "--name", name],
                   check=True, capture_output=True)
    return d / f"{name}.key", d / f"{name}.key_secret"


@pytest.fixture(scope="module")
def curve_engine(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("curve")
    allowed, other, server = tmp / "allowed", tmp / "other", tmp / "server"
    allowed.mkdir(), other.mkdir(), server.mkdir()
    s_pub, s_sec = keys(server, "server")
    keys(allowed, "alice")
    keys(other, "mallory")
    curve = {"enabled": True, "server_secret_file": str(s_sec), "authorized_keys_dir": str(allowed)}
    with EngineProcess(tmp, workers=1, overrides={"ingress": {"curve": curve, "default_deadline_ms": 10_000},
                                                  "admin": {"curve": curve}}) as eng:
        yield eng, s_pub, allowed / "alice.key_secret", other / "mallory.key_secret"


def test_allowed_key_is_served(curve_engine):
    eng, s_pub, alice, _ = curve_engine
    schema = load_config().schema
    with Client(eng.endpoint, schema, timeout_ms=10_000, retries=0,
                curve=CurveKeys.from_files(str(alice), str(s_pub))) as c:
        d = c.evaluate_batch(random_events(np.random.default_rng(1), schema, 3))
    assert len(d) == 3 and all(x.action in ("allow", "review", "block") for x in d)


@pytest.mark.parametrize("who", ["unknown_key", "plaintext"])
def test_unknown_key_and_plaintext_are_refused(curve_engine, who):
    eng, s_pub, _, mallory = curve_engine
    schema = load_config().schema
    curve = CurveKeys.from_files(str(mallory), str(s_pub)) if who == "unknown_key" else None
    with Client(eng.endpoint, schema, timeout_ms=1500, retries=0, curve=curve) as c:
        with pytest.raises(ClientTimeout):
            c.evaluate_batch(random_events(np.random.default_rng(2), schema, 1))


def test_admin_plane_needs_an_allowed_key(curve_engine):
    import zmq.auth
    eng, s_pub, alice, mallory = curve_engine
    bind = eng.admin_bind
    server_pub = zmq.auth.load_certificate(str(s_pub))[0]
    pub, sec = zmq.auth.load_certificate(str(alice))
    assert admin_request(bind, {"cmd": "status"}, 10_000, (pub, sec, server_pub))["ok"]
    pub, sec = zmq.auth.load_certificate(str(mallory))
    with pytest.raises(TimeoutError):
        admin_request(bind, {"cmd": "status"}, 1500, (pub, sec, server_pub))
    with pytest.raises(TimeoutError):
        admin_request(bind, {"cmd": "status"}, 1500)
