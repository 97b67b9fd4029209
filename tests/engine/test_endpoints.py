"""Bind addresses are judged by what libzmq / http.server will actually bind (issue 19,
defect 3): the `source;destination` bypass, wildcards, interface names, names that resolve
elsewhere."""
from __future__ import annotations

import socket

import pytest

from shm.runtime.config import ConfigError, parse_config
from shm.runtime.endpoints import EndpointError, parse_host_port, parse_zmq_bind

BASE = {"schema": {"shard_key": "a", "fields": {"a": "u64"}}}
CURVE = {"enabled": True, "server_secret_file": "s.key_secret", "authorized_keys_dir": "keys"}


def admin(bind, curve=False):
    return parse_config({**BASE, "admin": {"bind": bind, **({"curve": CURVE} if curve else {})}})


@pytest.mark.parametrize("bind", [
    "tcp://127.0.0.1:1;0.0.0.0:5699",          # the attack: libzmq binds 0.0.0.0:5699
    "tcp://127.0.0.1;0.0.0.0:5699",
    "tcp://lo:1;127.0.0.1:5699",               # refused even when both halves are local
])
def test_source_syntax_is_refused_even_with_curve(bind):
    for curve in (False, True):
        with pytest.raises(ConfigError) as e:
            admin(bind, curve)
        assert e.value.key == "admin.bind" and "source;" in str(e.value)
    with pytest.raises(ConfigError) as e:
        parse_config({**BASE, "ingress": {"bind": bind}})
    assert e.value.key == "ingress.bind"


@pytest.mark.parametrize("bind", ["tcp://localhost:5699", "tcp://[::1]:5699", "tcp://127.0.0.1:5699",
                                  "tcp://127.1:*", "tcp://[::ffff:127.0.0.1]:5699", "ipc:///tmp/x.sock",
                                  "inproc://admin"])
def test_loopback_and_local_transports_are_allowed(bind):
    assert admin(bind).admin.bind == bind


@pytest.mark.parametrize("bind,why", [
    ("tcp://*:5699", "binds every interface"), ("tcp://0.0.0.0:5699", "binds every interface"),
    ("tcp://0:5699", "binds every interface"), ("tcp://[::]:5699", "binds every interface"),
    ("tcp://lo:5699", "names a network interface"),
    *[(f"tcp://{name}:5699", "names a network interface") for _, name in socket.if_nameindex()[:3]],
])
def test_wildcards_and_interfaces_need_curve(bind, why):
    with pytest.raises(ConfigError) as e:
        admin(bind)
    assert e.value.key == "admin.bind" and why in str(e.value)
    assert admin(bind, curve=True).admin.bind == bind


def test_names_are_judged_by_what_they_resolve_to():
    elsewhere = {"evil.example": ["10.1.2.3"], "mixed.example": ["127.0.0.1", "192.0.2.7"],
                 "local.example": ["127.0.0.1", "::1"]}.__getitem__
    assert not parse_zmq_bind("tcp://evil.example:1", resolver=elsewhere).local_only
    assert not parse_zmq_bind("tcp://mixed.example:1", resolver=elsewhere).local_only
    assert parse_zmq_bind("tcp://local.example:1", resolver=elsewhere).local_only
    with pytest.raises(ConfigError, match="does not resolve"):
        admin("tcp://no-such-host.invalid:5699")


@pytest.mark.parametrize("bind", ["tcp://127.0.0.1", "tcp://127.0.0.1:65536", "tcp://127.0.0.1:x",
                                  "tcp://:5", "tcp://::1:5", "tcp://[::1:5", "tcp://[nope]:5",
                                  "udp://127.0.0.1:5", "127.0.0.1:5", "tcp://", "tcp://127.0.0.1:5\n"])
def test_malformed_endpoints(bind):
    with pytest.raises(EndpointError):
        parse_zmq_bind(bind)


def test_metrics_host_port():
    assert parse_host_port("127.0.0.1:9108").port == 9108
    assert parse_host_port("[::1]:9108").addresses == ("::1",)
    for bad in ("9108", "*:9108", "127.0.0.1:1;0.0.0.0:9108", "http://127.0.0.1:9108", "::1:9108"):
        with pytest.raises(EndpointError):
            parse_host_port(bad)
    with pytest.raises(ConfigError) as e:
        parse_config({**BASE, "metrics": {"bind": "127.0.0.1:1;0.0.0.0:9108"}})
    assert e.value.key == "metrics.bind"
