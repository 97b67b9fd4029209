"""The cluster's NATS connections are authenticated and authorized (docs/CLUSTER.md,
"Authentication"): cluster.credentials is checked completely at config time; the servers
NatsCluster starts refuse a connection without the password or with a wrong one, and their
read-only ``client`` user reads the partition map but can write nothing: not a lease, not the
halt key, not a journal record, not a rule file, not a stream; nor can it read the engine's
JetStream replies (journal records, control values) on _INBOX.>."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.request

import nats
import nats.errors
import pytest
from nats.js import api

from engine.cluster import replog
from engine.cluster.control import BUCKET as CONTROL
from engine.cluster.ruleset import BUCKET as RULES
from ingress.partmap import BUCKET as LEASES, INBOX_PREFIX, PartitionMap, encode, lease_key
from shm.runtime.config_types import ConfigError
from shm.runtime.nats_auth import MAX_BYTES, auth_options, read_credentials
from tests.cluster.agentproc import REPO, wait_for
from tests.cluster.test_config_cluster import _cfg, write_creds

PASSWORD = "s3cret-" + "x" * 20
LOCAL = "cluster: {servers: ['nats://127.0.0.1:4222'], node: n1, credentials: %s}\n"


def refused(tmp_path, path) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        _cfg(tmp_path, LOCAL % json.dumps(str(path)))
    errs = getattr(e.value, "errors", (e.value,))
    assert [x.key for x in errs] == ["cluster.credentials"], [str(x) for x in errs]
    assert PASSWORD not in str(e.value)                  # the secret never reaches a message
    return errs[0]


def test_a_valid_file_is_read_and_its_path_kept_absolute(tmp_path):
    write_creds(tmp_path / "n.json", {"user": "engine", "password": PASSWORD})
    cfg = _cfg(tmp_path, LOCAL % "n.json")
    assert cfg.cluster.credentials == str(tmp_path / "n.json")
    assert auth_options(cfg.cluster.credentials) == {"user": "engine", "password": PASSWORD}
    assert PASSWORD not in repr(read_credentials(cfg.cluster.credentials))


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o606])
def test_group_or_other_bits_are_refused_naming_the_mode(tmp_path, mode):
    p = write_creds(tmp_path / "n.json", {"user": "engine", "password": PASSWORD}, mode)
    e = refused(tmp_path, p)
    assert f"has mode {mode:04o}: group/other bits must be clear" in str(e), e


def test_a_symlink_a_missing_file_a_directory_and_another_owner_are_refused(tmp_path):
    real = write_creds(tmp_path / "real.json", {"user": "engine", "password": PASSWORD})
    (tmp_path / "link.json").symlink_to(real)
    assert "is a symlink" in str(refused(tmp_path, tmp_path / "link.json"))
    assert "cannot open: No such file or directory" in str(refused(tmp_path, tmp_path / "none.json"))
    (tmp_path / "d").mkdir(mode=0o700)
    assert "is not a regular file" in str(refused(tmp_path, tmp_path / "d"))
    os.chown(real, 65534, 65534)                       # nobody: the tests run as root
    assert "is owned by uid 65534, not the engine's user" in str(refused(tmp_path, real))


@pytest.mark.parametrize("content, why", [
    (b"x" * (MAX_BYTES + 1), f"over the limit of {MAX_BYTES}"),
    (b"user=engine\npassword=" + PASSWORD.encode(), "it is not UTF-8 JSON"),
    (b"\xff\xfe{}", "it is not UTF-8 JSON"),
    (json.dumps(["engine", PASSWORD]).encode(), "and nothing else, got list"),
    (json.dumps({"user": "engine"}).encode(), "and nothing else, got ['user']"),
    (json.dumps({"user": "engine", "password": PASSWORD, "token": "t"}).encode(), "got ['password', 'token', 'user']"),
    (json.dumps({"user": "a b", "password": PASSWORD}).encode(), "user must be 1-64 letters"),
    (json.dumps({"user": "engine", "password": "short"}).encode(), "password must be 16-512 printable"),
    (json.dumps({"user": "engine", "password": PASSWORD + " x"}).encode(), "password must be 16-512 printable"),
    (json.dumps({"user": "engine", "password": 12345678901234567}).encode(), "password must be 16-512"),
])
def test_an_oversized_or_malformed_file_is_refused(tmp_path, content, why):
    p = tmp_path / "n.json"
    p.write_bytes(content)
    p.chmod(0o600)
    assert why in str(refused(tmp_path, p))


def test_required_unless_every_server_is_on_loopback(tmp_path):
    assert _cfg(tmp_path, "cluster: {servers: ['nats://127.0.0.1:1', 'nats://[::1]:2', "
                          "'nats://localhost:3'], node: n1}\n").cluster.credentials == ""
    with pytest.raises(ConfigError, match=r"cluster.credentials: is required: nats://nats.example:1 "
                                          r"is not a loopback address"):
        _cfg(tmp_path, "cluster: {servers: ['nats://127.0.0.1:1', 'nats://nats.example:1'], node: n1}\n")
    with pytest.raises(ConfigError, match=r"cluster.credentials: must be the path"):
        _cfg(tmp_path, LOCAL % "''")


def test_config_check_names_the_key_and_the_mode(tmp_path):
    write_creds(tmp_path / "n.json", {"user": "engine", "password": PASSWORD}, 0o644)
    p = tmp_path / "c.yaml"
    p.write_text(LOCAL % "n.json")
    out = subprocess.run([sys.executable, "-m", "engine.cli", "config", "--check", "--config", str(p)],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out
    assert f"cluster.credentials: {tmp_path / 'n.json'} has mode 0644: group/other bits must be clear" \
        in out.stderr, out.stderr
    assert PASSWORD not in out.stdout + out.stderr


# --- the servers NatsCluster starts -----------------------------------------------------------

async def _connect(urls, **kw):
    errors = []

    async def seen(e):
        errors.append(e)
    nc = await nats.connect(urls, connect_timeout=2, allow_reconnect=False, max_reconnect_attempts=1,
                            error_cb=seen, **kw)
    return nc, errors


def test_no_password_or_a_wrong_one_is_refused_by_every_server(nats3):
    async def go():
        for url in nats3.urls:
            for kw in ({}, {"user": "engine", "password": "wrong-password-1234"},
                       {"user": "client", "password": auth_options(nats3.credentials)["password"]}):
                with pytest.raises(nats.errors.Error, match="Authorization Violation"):
                    await _connect([url], **kw)
            nc, _ = await _connect([url], **auth_options(nats3.credentials))
            await nc.close()
    asyncio.run(asyncio.wait_for(go(), 120))
    for path in (nats3.credentials, nats3.client_credentials):
        assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.stat(nats3.run_dir).st_mode & 0o777 == 0o700


def test_the_client_user_reads_the_partition_map_and_writes_nothing(nats3):
    lease = encode("n0", "tcp://127.0.0.1:7001", True)

    async def setup():
        nc, _ = await _connect(nats3.urls, **auth_options(nats3.credentials))
        js = nc.jetstream(timeout=5.0)
        kvs = {b: await js.create_key_value(api.KeyValueConfig(bucket=b, history=1, replicas=3))
               for b in (LEASES, CONTROL)}
        await js.add_stream(name=replog.STREAM, subjects=[f"{replog.PREFIX}.*"], num_replicas=3)
        await js.create_object_store(RULES, api.ObjectStoreConfig(replicas=3))
        for key, value in ((lease_key(0), lease), ("meta", b'{"partitions": 4}')):
            await wait_put(kvs[LEASES], key, value)
        await wait_put(kvs[CONTROL], "halt", b'{"on": false}')
        await nc.close()
    asyncio.run(asyncio.wait_for(setup(), 120))

    m = PartitionMap(nats3.urls, credentials=nats3.client_credentials, timeout_s=20).start()
    try:
        assert m.partitions == 4 and m.owner(0) == "tcp://127.0.0.1:7001"
    finally:
        m.close()

    async def attempts():
        nc, errors = await _connect(nats3.urls, **auth_options(nats3.client_credentials),
                                    inbox_prefix=INBOX_PREFIX)
        await nc.subscribe("_INBOX.>")               # where the engine's JetStream replies go
        js = nc.jetstream(timeout=2.0)
        kv = await js.key_value(LEASES)
        writes = (kv.put(lease_key(0), encode("evil", "tcp://127.0.0.1:6666", True)),
                  js.publish(f"$KV.{CONTROL}.halt", b'{"on": true}'),
                  js.publish(f"{replog.PREFIX}.0", b"forged record"),
                  js.add_stream(name="EVIL", subjects=["evil.>"]),
                  js.delete_key_value(LEASES))
        for w in writes:
            with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
                await w
        with pytest.raises(nats.errors.Error):       # not even the rule files' store's info
            await js.object_store(RULES)
        await nc.publish(f"$KV.{LEASES}.{lease_key(1)}", b"forged")   # no reply asked: dropped
        await nc.publish(f"$O.{RULES}.M.x", b"forged rule file")
        await nc.flush()
        for _ in range(100):                         # the server's -ERR lines reach error_cb (bounded)
            if all(any(w in str(e) for e in errors) for w in want):
                break
            await asyncio.sleep(0.1)
        await nc.close()
        return [str(e) for e in errors]
    want = [f'permissions violation for publish to "{s.lower()}"' for s in (
        f"$KV.{LEASES}.{lease_key(0)}", f"$KV.{CONTROL}.halt", f"{replog.PREFIX}.0", "$JS.API.STREAM.CREATE.EVIL",
        f"$KV.{LEASES}.{lease_key(1)}", f"$O.{RULES}.M.x")] + [
        'permissions violation for subscription to "_inbox.>"']
    errors = asyncio.run(asyncio.wait_for(attempts(), 120))
    assert all(any(w in e for e in errors) for w in want), errors

    async def unchanged():
        nc, _ = await _connect(nats3.urls, **auth_options(nats3.credentials))
        js = nc.jetstream(timeout=5.0)
        leases, control = await js.key_value(LEASES), await js.key_value(CONTROL)
        try:
            return ((await leases.get(lease_key(0))).value, (await control.get("halt")).value,
                    (await js.stream_info(replog.STREAM)).state.messages,
                    sorted(await leases.keys()), [s.config.name for s in await js.streams_info()])
        finally:
            await nc.close()
    got = asyncio.run(asyncio.wait_for(unchanged(), 60))
    assert got[:4] == (lease, b'{"on": false}', 0, sorted([lease_key(0), "meta"])), got
    assert "EVIL" not in got[4], got


async def wait_put(kv, key: str, value: bytes) -> None:
    """A put into a just-created R3 bucket (its stream elects a leader first), bounded."""
    for _ in range(100):
        try:
            await kv.put(key, value)
            return
        except (nats.errors.Error, asyncio.TimeoutError):
            await asyncio.sleep(0.2)
    raise AssertionError(f"{kv._name}: {key} not written")


def test_a_server_without_the_route_password_is_not_let_into_the_cluster(nats3, tmp_path):
    """An outsider's nats-server routing to a cluster port is refused: it cannot join the
    JetStream cluster and replicate (or vote on) the control plane."""
    from engine.cluster.natsserver import find_nats_server, loopback_port
    s = nats3.servers[0]
    log = tmp_path / "outsider.log"
    proc = subprocess.Popen([find_nats_server(), "-n", "outsider", "-a", "127.0.0.1", "-p", str(loopback_port()),
                             "-cluster", f"nats://127.0.0.1:{loopback_port()}", "-cluster_name",
                             nats3.cluster_name, "-routes", f"nats-route://127.0.0.1:{s.cluster_port}",
                             "-l", str(log)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: log.exists() and "Route Error 'Authorization Violation'" in log.read_text(errors="replace"),
                 60, "the outsider's route refused")
        with urllib.request.urlopen(f"http://127.0.0.1:{s.http_port}/routez", timeout=10) as r:
            routes = json.load(r)["routes"] or []
        assert routes and "outsider" not in {x.get("remote_name") for x in routes}, routes
    finally:
        proc.terminate()
        proc.wait(10)
