"""The cluster: section checked completely with the rest of the config: every error at once
with its key path and value; what is required; advertise's default from ingress.bind; a
checked section survives the supervisor's hand-off round trip; no section: no cluster."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from shm.runtime.config import config_to_raw, load_config, parse_config, portable_raw
from shm.runtime.config_check import ConfigErrors
from shm.runtime.config_cluster import shard_keyed
from shm.runtime.config_types import ClusterConfig, ConfigError


def write_creds(path, doc=None, mode=0o600):
    """A credentials file (shm.runtime.nats_auth), ``doc`` as JSON (default: a valid one)."""
    path.write_text(json.dumps(doc or {"user": "engine", "password": "p" * 24}))
    path.chmod(mode)
    return path


def shard_keyed_features() -> dict:
    """The bundled features, each keyed by the shard key (account_id) alone: what a cluster
    accepts (the bundled card_id, device_id and pair-keyed ones are refused there)."""
    return shard_keyed(portable_raw()["features"], "account_id")[0]


def _cfg(tmp_path, text, features=True):
    p = tmp_path / "c.yaml"
    p.write_text(text + (f"features: {json.dumps(shard_keyed_features())}\n" if features else ""))
    return load_config(p)


def test_no_section_is_a_single_engine():
    assert load_config().cluster is None


def test_a_minimal_section_gets_the_defaults_and_round_trips(tmp_path):
    cfg = _cfg(tmp_path, "cluster: {servers: ['nats://127.0.0.1:4222'], node: n1}\n")
    assert cfg.cluster == ClusterConfig(servers=("nats://127.0.0.1:4222",), partitions=64, node="n1",
                                        advertise="tcp://127.0.0.1:5555", ack="sync", lease_ttl_s=2.0)
    assert parse_config(config_to_raw(cfg), cfg.path) == cfg


def test_every_cluster_error_in_one_pass(tmp_path):
    with pytest.raises(ConfigErrors) as e:
        _cfg(tmp_path, "cluster:\n"
                       "  servers: ['http://h:1', 'nats://u:pw@h:4222', 'nats://h', 'nats://h:99999',\n"
                       "            'nats://h:4222/x', 'nats://h:4222', 'nats://h:4222']\n"
                       "  partitions: 0\n  node: 'a.b'\n  advertise: 'tcp://*:5555'\n"
                       "  ack: maybe\n  lease_ttl_s: 0.1\n  leases_ttl_s: 2\n")
    got = [str(x) for x in e.value.errors]
    assert got == [
        "cluster.leases_ttl_s: unknown key; did you mean 'lease_ttl_s'? (allowed: ack, advertise, "
        "credentials, lease_ttl_s, node, partitions, servers)",
        "cluster.servers[0]: must be nats://HOST:PORT or tls://HOST:PORT, got 'http://h:1'",
        "cluster.servers[1]: holds credentials; a config file is no place for them",
        "cluster.servers[2]: needs a port 1..65535, got 'nats://h'",
        "cluster.servers[3]: needs a port 1..65535, got 'nats://h:99999'",
        "cluster.servers[4]: must be nats://HOST:PORT with nothing after the port, got 'nats://h:4222/x'",
        "cluster.servers[6]: 'nats://h:4222' is named twice",
        "cluster.partitions: must be an integer in [1, 4096], got 0",
        "cluster.node: must be 1-32 letters, digits, '_' or '-', got 'a.b'",
        "cluster.advertise: must be tcp://HOST:PORT (a host clients can dial), got 'tcp://*:5555'",
        "cluster.ack: must be one of sync, async, got 'maybe'",
        "cluster.lease_ttl_s: must be a number of seconds in [0.5, 300], got 0.1",
        "cluster.credentials: is required: nats://h:4222 is not a loopback address; the path of a "
        '0600 JSON file {"user": ..., "password": ...} (docs/CLUSTER.md, Authentication)',
    ]


@pytest.mark.parametrize("section, key, why", [
    ("{node: n1}", "cluster.servers", "is required"),
    ("{servers: []}", "cluster.servers", "must be a list of 1..16"),
    ("{servers: 'nats://h:1', node: n1}", "cluster.servers", "must be a list"),
    ("{servers: ['nats://h:1']}", "cluster.node", "is required"),
    ("{servers: ['nats://h:1'], node: n1, partitions: true}", "cluster.partitions", "must be an integer"),
    ("{servers: ['nats://h:1'], node: n1, lease_ttl_s: '2'}", "cluster.lease_ttl_s", "must be a number"),
    ("{servers: ['nats://h:1'], node: n1, ack: true}", "cluster.ack", "must be one of sync, async"),
    ("{servers: ['nats://h:1'], node: n1, advertise: 5555}", "cluster.advertise", "must be tcp://"),
    ("{servers: ['nats://h:1'], node: n1, advertise: 'tcp://h'}", "cluster.advertise", "needs a port"),
    ("[1, 2]", "cluster", "must be a mapping"),
])
def test_each_error_names_its_key(tmp_path, section, key, why):
    with pytest.raises(ConfigError) as e:
        _cfg(tmp_path, f"cluster: {section}\n")
    errs = getattr(e.value, "errors", (e.value,))
    assert any(x.key == key and why in str(x) for x in errs), [str(x) for x in errs]


def test_advertise_is_required_when_ingress_binds_every_interface(tmp_path):
    with pytest.raises(ConfigError, match=r"cluster.advertise: is required when ingress.bind "
                                          r"\('tcp://0.0.0.0:5555'\) is not one host"):
        _cfg(tmp_path, "ingress: {bind: 'tcp://0.0.0.0:5555'}\n"
                       "cluster: {servers: ['nats://10.0.0.1:4222'], node: n1}\n")
    creds = write_creds(tmp_path / "nats.json")
    cfg = _cfg(tmp_path, "ingress: {bind: 'tcp://0.0.0.0:5555'}\n"
                         "cluster: {servers: ['nats://10.0.0.1:4222', 'tls://[::1]:4222'], node: n-1_a,\n"
                         "          advertise: 'tcp://risk-1.example:5555', partitions: 256,\n"
                         "          ack: async, lease_ttl_s: 5, credentials: nats.json}\n")
    assert cfg.cluster == ClusterConfig(("nats://10.0.0.1:4222", "tls://[::1]:4222"), 256, "n-1_a",
                                        "tcp://risk-1.example:5555", "async", 5.0, str(creds))
    assert parse_config(config_to_raw(cfg), cfg.path) == cfg


CLUSTER = "cluster: {servers: ['nats://127.0.0.1:4222'], node: n1}\n"
REFUSED = {"features.amount_sum_1h.key": "'card_id'", "features.first_seen_s.key": "'device_id'",
           "features.orders_1s.key": "['account_id', 'instrument_id']"}


def test_features_keyed_by_another_field_than_the_shard_key_are_refused_in_cluster_mode(tmp_path):
    with pytest.raises(ConfigErrors) as e:
        _cfg(tmp_path, CLUSTER, features=False)         # the bundled features: three other keys
    got = {x.key: str(x) for x in e.value.errors}
    assert set(got) == set(REFUSED), got
    for key, by in REFUSED.items():
        name = key.split(".")[1]
        assert f"feature '{name}' is keyed by {by}, not the shard key 'account_id'" in got[key]
    assert load_config().features == portable_raw()["features"]     # the same, single engine: fine
    assert _cfg(tmp_path, CLUSTER).cluster is not None     # each keyed by account_id: accepted


def test_config_check_reports_a_feature_keyed_by_another_field_in_cluster_mode(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(CLUSTER + "features: {by_card: {kind: count, key: card_id, window: 60s}}\n")
    out = subprocess.run([sys.executable, "-m", "engine.cli", "config", "--check", "--config", str(p)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out
    assert "features.by_card.key: feature 'by_card' is keyed by 'card_id', not the shard key " \
           "'account_id'" in out.stderr, out.stderr


def test_shard_keyed_rekeys_exactly_the_refused_features():
    """What `cluster up` runs the bundled configuration with: the card-, device- and
    pair-keyed features re-keyed by account_id and named, the others untouched."""
    raw = portable_raw()["features"]
    out, moved = shard_keyed(raw, "account_id")
    assert moved == [f"{n} ({raw[n]['key']})" for n in raw if raw[n]["key"] not in ("account_id", ["account_id"])]
    assert moved and all(out[n]["key"] == "account_id" for n in out)
    assert {n: {k: v for k, v in spec.items() if k != "key"} for n, spec in out.items()} == \
        {n: {k: v for k, v in spec.items() if k != "key"} for n, spec in raw.items()}
