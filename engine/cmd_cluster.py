"""`risk-engine cluster status`: partition -> owner, lease revision, lease age and the
replication lag its owner reports (engine.cluster.lag), read from the cluster's lease bucket in
NATS JetStream (engine/cluster/, docs/CLUSTER.md)."""
from __future__ import annotations

import json
import sys
from datetime import datetime, timezone

from engine import cmd_cluster_drain, cmd_cluster_up

HELP = ("the cluster: partition owners, lease ages and replication lag (status), hand a node's partitions "
        "over (drain, undrain), a local cluster to try (up)")
TIMEOUT_S = 15.0
STALE_LAG_S = 15.0           # an owner rewrites its lag figure every 10 s at least (engine.cluster.lag)


def add_arguments(p):
    sub = p.add_subparsers(dest="cluster_command", metavar="SUBCOMMAND", required=True)
    s = sub.add_parser("status", help="partition -> owner, lease revision, lease age, replication lag",
                       description="Read every partition's lease from the lease bucket, and the "
                                   "replication lag its owner last reported. Exit 0 "
                                   "when every partition has a holder, 1 when some are free, "
                                   "2 when the servers or the bucket cannot be read.")
    s.add_argument("--servers", required=True, metavar="URL[,URL...]",
                   help="nats://HOST:PORT of one or more NATS servers of the cluster")
    cmd_cluster_drain.add_credentials(s)
    s.add_argument("--bucket", default=None, help="the lease bucket (default: risk_engine_leases)")
    s.add_argument("--control-bucket", default=None,
                   help="the control bucket (default: risk_engine_control)")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(_cluster_run=_status)
    cmd_cluster_drain.add_arguments(sub)
    cmd_cluster_up.add_arguments(sub)


def _age_s(t) -> float | None:
    return None if t is None else max(0.0, (datetime.now(timezone.utc) - t).total_seconds())


async def _control(nc, bucket: str | None) -> dict | None:
    """The control plane's last change revision and each node's applied revision (None: no
    node has opened the control bucket)."""
    import nats.js.errors as jserr           # here: `risk-engine --help` stays fast (nats-py)
    from engine.cluster.control import BUCKET, read_applied   # here: imports nats-py too
    try:
        return await read_applied(nc.jetstream(timeout=5.0), bucket or BUCKET)
    except jserr.BucketNotFoundError:
        return None


async def _read(servers: list[str], bucket: str | None, control_bucket: str | None = None,
                credentials: str | None = None):
    from engine.cluster.leases import BUCKET, LeaseStore, connect_once   # here: imports nats-py
    from engine.cluster.lag import decode as decode_lag, lag_key
    from shm.runtime.config_cluster import _NODE   # here: numpy; the parser is built without it (pin_workers.sh)
    nc = await connect_once(servers, credentials)
    try:
        store = LeaseStore(nc.jetstream(timeout=5.0), bucket or BUCKET, timeout_s=5.0)
        n = await store.open(None, create=False)
        rows, lags = [], {}
        for p in range(n):
            e = await store.read(p)
            v = e.value or {}
            owner = v.get("node")
            if owner is not None and owner not in lags and _NODE.fullmatch(owner):   # its lag.NODE
                le = await store.get(lag_key(owner))
                lags[owner] = (decode_lag(le.value), _age_s(le.time) if le.value is not None else None)
            lag, as_of = lags.get(owner, ({}, None))
            rows.append({"partition": p, "owner": owner, "advertise": v.get("advertise"),
                         "ready": v.get("ready"),
                         "revision": e.revision if e.value is not None else None,
                         "lease_age_s": _age_s(e.time) if e.value is not None else None,
                         "lag": {**lag[p], "as_of_s": as_of} if p in lag else None})
        _, drained, unfit = await store.roster()
        return {"bucket": store.bucket, "partitions": n, "leases": rows, "drained": sorted(drained),
                "journal_unavailable": sorted(unfit),
                "control": await _control(nc, control_bucket)}
    finally:
        await nc.close()


def _lag(lag: dict | None) -> str:
    if lag is None:
        return "-"
    n = f"{'>=' if lag['capped'] else ''}{lag['records']}"
    stale = lag["as_of_s"] is not None and lag["as_of_s"] > STALE_LAG_S
    return f"{n} / {lag['age_s']:.1f}s" + ("*" if stale else "")


def run(args) -> int:
    return args._cluster_run(args)


def _status(args) -> int:
    import asyncio                           # here: only this command needs an event loop
    import nats.errors
    from engine.cluster.leases import LeaseError
    servers = [s for s in args.servers.split(",") if s]
    try:
        st = asyncio.run(asyncio.wait_for(_read(servers, args.bucket, args.control_bucket,
                                                      args.credentials), TIMEOUT_S))
    except (LeaseError, nats.errors.Error, asyncio.TimeoutError, OSError, ValueError) as e:   # ValueError: --credentials
        print(f"risk-engine: cluster status: servers={','.join(servers)}: {type(e).__name__}: {e}",
              file=sys.stderr)
        return 2
    free = [r["partition"] for r in st["leases"] if r["owner"] is None]
    if args.json:
        print(json.dumps(st, indent=1))
        return 1 if free else 0
    counts: dict[str, int] = {}
    for r in st["leases"]:
        if r["owner"] is not None:
            counts[r["owner"]] = counts.get(r["owner"], 0) + 1
    owners = ", ".join(f"{o} ({n})" for o, n in sorted(counts.items())) or "none"
    print(f"bucket {st['bucket']}: {st['partitions']} partitions, {len(free)} free, owners: {owners}")
    if st["drained"]:
        print(f"drained (cluster undrain NODE to end): {', '.join(st['drained'])}")
    if st["journal_unavailable"]:
        print(f"journal unavailable (handing over, taking nothing): {', '.join(st['journal_unavailable'])}")
    ctl = st["control"]
    if ctl is not None:
        behind = sorted(n for n, d in ctl["nodes"].items() if d.get("revision", 0) < ctl["revision"])
        print(f"control {ctl['bucket']}: last change at revision {ctl['revision']}; "
              f"{len(ctl['nodes']) - len(behind)} of {len(ctl['nodes'])} node(s) applied it"
              + (f" (behind: {', '.join(behind)})" if behind else ""))
        for n, d in sorted(ctl["nodes"].items()):
            print(f"  {n:<16} applied revision {d.get('revision')}, last change applied "
                  f"{d.get('lag_ms', 0):.1f} ms after it was written, {d.get('errors', 0)} error(s)")
        _ruleset(ctl)
    print("lease age: since the lease's last write, by the NATS server's clock against this machine's")
    print("ready: the owner serves it (no: still taking it over; ?: an older node, no flag)")
    print("lag: records the owner journaled but has not published yet / the oldest one's age, as the "
          "owner last reported it (-: no report; *: the report is over 15 s old)")
    print(f"  {'PARTITION':>9}  {'OWNER':<16} {'REVISION':>9} {'AGE':>8} {'LAG':>16} {'READY':>5}  ADVERTISE")
    for r in st["leases"]:
        if r["owner"] is None:
            print(f"  {r['partition']:>9}  {'-':<16} {'-':>9} {'-':>8} {'-':>16} {'-':>5}  (free)")
        else:
            ready = {True: "yes", False: "no"}.get(r["ready"], "?")
            print(f"  {r['partition']:>9}  {r['owner']:<16} {r['revision']:>9} "
                  f"{r['lease_age_s']:>7.1f}s {_lag(r['lag']):>16} {ready:>5}  {r['advertise']}")
    return 1 if free else 0


def _ruleset(ctl) -> None:
    """The cluster's ruleset (engine.cluster.ruleset) and which nodes serve it."""
    rv = ctl.get("ruleset")
    if rv is None:
        return
    v = rv["value"] if isinstance(rv.get("value"), dict) else {}
    h = v.get("hash") if isinstance(v.get("hash"), str) else None
    recs = {n: d.get("ruleset") if isinstance(d.get("ruleset"), dict) else {} for n, d in ctl["nodes"].items()}
    serving = sorted(n for n, r in recs.items() if h is not None and r.get("hash") == h)
    print(f"ruleset {str(v.get('label'))[:200]} (hash {str(h)[:16]}) at revision {rv['revision']}: "
          f"{len(serving)} of {len(recs)} node(s) serve it")
    for n, r in sorted(recs.items()):
        if n not in serving:
            print(f"  {n:<16} NOT APPLIED: serves {r.get('label')} (hash {str(r.get('hash'))[:16]}); "
                  f"{str(r.get('failure') or 'not yet')[:300]}")
