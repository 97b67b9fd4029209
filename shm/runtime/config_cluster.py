"""The ``cluster:`` section (docs/CLUSTER.md): which NATS servers hold the leases, how many
partitions the shard-key space has, this node's name and the address clients reach it at,
the replication ack mode, the lease TTL and the credentials of the NATS connections
(shm.runtime.nats_auth: the file is read and checked here too). Checked completely here, every error reported
with its key path (shm.runtime.config_check); whether the servers answer is known only when
the node connects. No section: a single engine (Config.cluster is None)."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Mapping
from urllib.parse import urlsplit

from shm.runtime.config_check import report, unknown_key
from shm.runtime.config_types import ClusterConfig, ConfigError
from shm.runtime.nats_auth import KEY as CREDENTIALS, is_loopback, read_credentials

KEYS = {"servers", "partitions", "node", "advertise", "ack", "lease_ttl_s", "credentials"}
ACK_MODES = ("sync", "async")
MAX_SERVERS = 16
MAX_PARTITIONS = 4096
LEASE_TTL_RANGE_S = (0.5, 300.0)
_NODE = re.compile(r"[A-Za-z0-9_-]{1,32}")      # part of a KV key (node.NAME): no dots


def _port_of(u, path: str, value: str) -> int | None:
    try:
        port = u.port
    except ValueError:
        port = None
    if port is None or not 1 <= port <= 65535:
        report(ConfigError(path, f"needs a port 1..65535, got {value!r}"))
        return None
    return port


def _servers(sec: Mapping) -> tuple[str, ...]:
    v = sec.get("servers")
    if v is None:
        report(ConfigError("cluster.servers", "is required: the nats:// URL of every NATS server"))
        return ()
    if not isinstance(v, list) or not v or len(v) > MAX_SERVERS or not all(isinstance(s, str) for s in v):
        report(ConfigError("cluster.servers", f"must be a list of 1..{MAX_SERVERS} nats:// URLs, got {v!r}"))
        return ()
    out = []
    for i, s in enumerate(v):
        path = f"cluster.servers[{i}]"
        u = urlsplit(s)
        if u.scheme not in ("nats", "tls") or not u.hostname:
            report(ConfigError(path, f"must be nats://HOST:PORT or tls://HOST:PORT, got {s!r}"))
        elif u.username is not None or u.password is not None:
            report(ConfigError(path, "holds credentials; a config file is no place for them"))
        elif u.path not in ("", "/") or u.query or u.fragment:
            report(ConfigError(path, f"must be nats://HOST:PORT with nothing after the port, got {s!r}"))
        elif _port_of(u, path, s) is not None:
            if s in out:
                report(ConfigError(path, f"{s!r} is named twice"))
            out.append(s)
    return tuple(out)


def _partitions(sec: Mapping) -> int:
    v = sec.get("partitions", ClusterConfig.partitions)
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_PARTITIONS:
        report(ConfigError("cluster.partitions", f"must be an integer in [1, {MAX_PARTITIONS}], got {v!r}"))
        return ClusterConfig.partitions
    return v


def _node(sec: Mapping) -> str:
    v = sec.get("node")
    if v is None:
        report(ConfigError("cluster.node", "is required: this node's name, unique in the cluster"))
        return ""
    if not isinstance(v, str) or not _NODE.fullmatch(v):
        report(ConfigError("cluster.node", f"must be 1-32 letters, digits, '_' or '-', got {v!r}"))
        return ""
    return v


def _advertise(sec: Mapping, ingress_bind: str) -> str:
    """The tcp:// endpoint clients are redirected to; default: ingress.bind when that names
    one host and a fixed port (a wildcard or an ephemeral port cannot be dialled)."""
    v = sec.get("advertise")
    path = "cluster.advertise"
    if v is None:
        u = urlsplit(ingress_bind)
        if u.scheme == "tcp" and u.hostname not in (None, "*", "0.0.0.0", "::") and ";" not in ingress_bind:
            try:
                if u.port:
                    return ingress_bind
            except ValueError:
                pass                 # check_binds reports ingress.bind
        report(ConfigError(path, f"is required when ingress.bind ({ingress_bind!r}) is not one "
                                 "host and a fixed TCP port: the tcp://HOST:PORT clients reach"))
        return ""
    if not isinstance(v, str):
        report(ConfigError(path, f"must be tcp://HOST:PORT, got {v!r}"))
        return ""
    u = urlsplit(v)
    if u.scheme != "tcp" or not u.hostname or u.hostname == "*" or u.username is not None \
            or u.path or u.query or u.fragment or any(c.isspace() for c in v):
        report(ConfigError(path, f"must be tcp://HOST:PORT (a host clients can dial), got {v!r}"))
        return ""
    return v if _port_of(u, path, v) is not None else ""


def _ack(sec: Mapping) -> str:
    v = sec.get("ack", ClusterConfig.ack)
    if v not in ACK_MODES:
        report(ConfigError("cluster.ack", f"must be one of {', '.join(ACK_MODES)}, got {v!r}"))
        return ClusterConfig.ack
    return v


def _lease_ttl(sec: Mapping) -> float:
    v = sec.get("lease_ttl_s", ClusterConfig.lease_ttl_s)
    lo, hi = LEASE_TTL_RANGE_S
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        report(ConfigError("cluster.lease_ttl_s", f"must be a number of seconds in [{lo:g}, {hi:g}], got {v!r}"))
        return ClusterConfig.lease_ttl_s
    return float(v)


def _credentials(sec: Mapping, servers: tuple[str, ...], base: Path) -> str:
    """The credentials file's absolute path ("" none), read and checked now. Required when a
    server is not on loopback: the connection then crosses a network other machines share."""
    v = sec.get("credentials")
    if v is None:
        remote = [s for s in servers if not is_loopback(urlsplit(s).hostname or "")]
        if remote:
            report(ConfigError(CREDENTIALS, f"is required: {remote[0]} is not a loopback address; "
                                            "the path of a 0600 JSON file {\"user\": ..., \"password\": ...} "
                                            "(docs/CLUSTER.md, Authentication)"))
        return ""
    if not isinstance(v, str) or not v or "\0" in v:
        report(ConfigError(CREDENTIALS, f"must be the path of a credentials file, got {v!r}"))
        return ""
    path = v if os.path.isabs(v) else os.path.normpath(base / v)
    try:
        read_credentials(path)
    except ConfigError as e:
        report(e)
        return ""
    return path


def parse_cluster(raw: Mapping, ingress_bind: str, base: Path = Path(".")) -> ClusterConfig | None:
    """``raw``: the whole config mapping; ``base``: the config file's directory (a relative
    credentials path is relative to it). None when it has no cluster: section."""
    sec = raw.get("cluster") if raw else None
    if sec is None:
        return None
    if not isinstance(sec, Mapping):
        report(ConfigError("cluster", f"must be a mapping, got {type(sec).__name__}"))
        return None
    for k in sec:
        if k not in KEYS:
            report(unknown_key(f"cluster.{k}", k, KEYS))
    servers = _servers(sec)
    return ClusterConfig(servers=servers, partitions=_partitions(sec), node=_node(sec),
                         advertise=_advertise(sec, ingress_bind), ack=_ack(sec),
                         lease_ttl_s=_lease_ttl(sec), credentials=_credentials(sec, servers, base))


def check_cluster_features(features: Mapping, shard_key: str) -> None:
    """In cluster mode every feature is keyed by the shard key alone (docs/CLUSTER.md, "Features
    keyed by another field"): a feature keyed by another field (card_id while sharding by
    account_id) gets its events from every partition, so no one owner could update it
    atomically; a pair with the shard key is partition-local but refused too, because a
    take-over finds a partition's rows by their key and a pair's slot holds only a hash.
    Each one is reported with its key path; malformed entries are left to the feature parser."""
    for name, spec in (features or {}).items():
        key = spec.get("key") if isinstance(spec, Mapping) else None
        if key is None or key == shard_key or key == [shard_key]:
            continue
        report(ConfigError(f"features.{name}.key", f"feature {name!r} is keyed by {key!r}, not the "
                           f"shard key {shard_key!r}: with cluster: a feature is updated only by the "
                           f"owner of its events' partition, so it must be keyed by {shard_key!r} "
                           f"alone (or run without cluster:)"))


def shard_keyed(features: Mapping, shard_key: str) -> tuple[dict, list[str]]:
    """``features`` (raw config) with every feature check_cluster_features refuses re-keyed by
    ``shard_key`` alone, and the names of those re-keyed: what `cluster up` runs the bundled
    configuration with (a card's or device's history becomes the account's)."""
    out, moved = {}, []
    for name, spec in (features or {}).items():
        key = spec.get("key") if isinstance(spec, Mapping) else None
        if key is not None and key != shard_key and key != [shard_key]:
            spec, moved = {**spec, "key": shard_key}, moved + [f"{name} ({key})"]
        out[name] = spec
    return out, moved


def cluster_to_raw(c: ClusterConfig | None) -> dict | None:
    if c is None:
        return None
    return {"servers": list(c.servers), "partitions": c.partitions, "node": c.node,
            "advertise": c.advertise, "ack": c.ack, "lease_ttl_s": c.lease_ttl_s,
            **({"credentials": c.credentials} if c.credentials else {})}
