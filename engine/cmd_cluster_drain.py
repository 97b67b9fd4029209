"""`risk-engine cluster drain NODE` and `cluster undrain NODE` (docs/CLUSTER.md, "Operator
commands"): the drain key in the lease bucket tells NODE's lease agent to hand every
partition over to the other nodes (engine.cluster.drain); the command waits, bounded, until
NODE holds none and prints what moved.

Why a key in the lease bucket and not NODE's admin plane: the admin socket is ipc:// in the
node's private run directory, reachable only on its machine, while a drain is a cluster
operation run wherever the NATS servers are reachable (like `cluster status`); the other
nodes must learn of it too (they count NODE out of the share, or its partitions would have no
room to go to); and the key is replicated and durable, so the drain outlives the command and a
restart of NODE (which stays drained until `cluster undrain`)."""
from __future__ import annotations

import json
import socket
import sys
import time

POLL_S = 0.25


def add_arguments(sub) -> None:
    for name, desc in (
            ("drain", "Hand every partition NODE holds over to the other nodes (before "
                      "maintenance): NODE releases its leases one at a time, each once another "
                      "node serves the last (its lease marked ready: take-over done); clients in "
                      "cluster mode follow NOT_OWNER. Waits until "
                      "NODE holds none and prints what moved. NODE stays drained (takes nothing) "
                      "until `cluster undrain NODE`. Exit 0: NODE holds nothing; 1: still holds "
                      "partitions at --timeout-s (the drain goes on); 2: bad NODE, no other node, "
                      "or the servers or the bucket cannot be used (nothing changed)."),
            ("undrain", "End NODE's drain: it takes partitions again by the usual balance. "
                        "Exit 2 when NODE is not drained or the servers cannot be used.")):
        s = sub.add_parser(name, help=desc.split(":")[0].split(" (")[0], description=desc)
        s.add_argument("node", metavar="NODE", help="the node's cluster.node name")
        s.add_argument("--servers", required=True, metavar="URL[,URL...]",
                       help="nats://HOST:PORT of one or more NATS servers of the cluster")
        add_credentials(s)
        s.add_argument("--bucket", default=None, help="the lease bucket (default: risk_engine_leases)")
        if name == "drain":
            s.add_argument("--timeout-s", type=float, default=120.0,
                           help="stop waiting after this long (default 120)")
            s.add_argument("--json", action="store_true", help="the result as one JSON object")
        s.set_defaults(_cluster_run=run)


def add_credentials(s) -> None:
    """--credentials of `cluster status`, `drain` and `undrain`."""
    s.add_argument("--credentials", default=None, metavar="FILE",
                   help="the NATS user's credentials: a 0600 JSON file {\"user\": ..., \"password\": ...}, "
                        "as cluster.credentials (docs/CLUSTER.md, Authentication)")


class Refused(Exception):
    """Bad input or a drain that cannot be done: exit 2, nothing written."""


async def _holders(store, n: int) -> dict[int, str | None]:
    import asyncio                           # here: as in _drain
    entries = await asyncio.gather(*(store.read(p) for p in range(n)))
    return {p: (e.value or {}).get("node") for p, e in enumerate(entries)}


async def _drain(args, servers: list[str], say) -> dict:
    import asyncio                           # here: `risk-engine --help` stays fast
    from engine.cluster.leases import BUCKET, LeaseStore, connect_once, drain_key   # here: nats-py
    node = args.node
    nc = await connect_once(servers, args.credentials)
    try:
        store = LeaseStore(nc.jetstream(timeout=5.0), args.bucket or BUCKET, timeout_s=5.0)
        n = await store.open(None, create=False)
        members, drained, unfit = await store.roster()
        before = await _holders(store, n)
        held = sorted(p for p, o in before.items() if o == node)
        if args.cluster_command == "undrain":
            if node not in drained:
                raise Refused(f"node={node}: not drained (drained: {', '.join(sorted(drained)) or 'none'})")
            await store.clear_drain(node)
            return {"node": node, "undrained": True}
        if node not in members and not held:
            raise Refused(f"node={node}: unknown: no heartbeat and no lease in bucket {store.bucket} "
                          f"(nodes: {', '.join(sorted(members)) or 'none'})")
        others = sorted(m for m in members if m != node and m not in drained | unfit)
        if not others:
            raise Refused(f"node={node}: no other undrained node whose journal works to take its "
                          f"partitions (nodes: {', '.join(sorted(members))}"
                          + (f"; journal unavailable: {', '.join(sorted(unfit))}" if unfit else "") + ")")
        value = json.dumps({"node": node, "by": f"cli@{socket.gethostname()}",
                            "time_ns": time.time_ns()}).encode()
        await store.set_drain(node, value)
        say(f"draining {node} (key {drain_key(node)} in {store.bucket}): {len(held)} partition(s) "
            f"to hand over to {', '.join(others)}")
        t0 = time.monotonic()
        moved, owners = [], dict(before)
        while True:
            now = await _holders(store, n)
            for p in sorted(now):
                if now[p] != owners[p] and owners[p] == node and now[p] is not None:
                    moved.append({"partition": p, "from": node, "to": now[p],
                                  "after_s": round(time.monotonic() - t0, 3)})
                    say(f"  partition {p}: {node} -> {now[p]} ({time.monotonic() - t0:.1f} s)")
                if now[p] is not None or owners[p] != node:
                    owners[p] = now[p]           # a free one stays NODE's until someone takes it
            left = sorted(p for p, o in owners.items() if o == node)
            if not left or time.monotonic() - t0 > args.timeout_s:
                return {"node": node, "moved": moved, "left": left,
                        "seconds": round(time.monotonic() - t0, 3)}
            await asyncio.sleep(POLL_S)
    finally:
        await nc.close()


def run(args) -> int:
    import asyncio                           # here: only this command needs an event loop
    import nats.errors                       # here: `risk-engine --help` stays fast
    from engine.cluster.leases import LeaseError   # here: imports nats-py
    from shm.runtime.config_cluster import _NODE
    servers = [s for s in args.servers.split(",") if s]
    cmd = f"risk-engine: cluster {args.cluster_command}"
    if not _NODE.fullmatch(args.node):
        print(f"{cmd}: node={args.node!r}: must be 1-32 letters, digits, '_' or '-'", file=sys.stderr)
        return 2
    quiet = getattr(args, "json", False)
    say = (lambda s: None) if quiet else (lambda s: print(s, flush=True))
    bound = getattr(args, "timeout_s", 0) + 30.0
    try:
        out = asyncio.run(asyncio.wait_for(_drain(args, servers, say), bound))
    except Refused as e:
        print(f"{cmd}: {e}; nothing changed", file=sys.stderr)
        return 2
    except (LeaseError, nats.errors.Error, asyncio.TimeoutError, OSError, ValueError) as e:   # ValueError: --credentials
        print(f"{cmd}: servers={','.join(servers)}: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    if args.cluster_command == "undrain":
        print(f"{args.node}: undrained; it takes partitions again by the usual balance")
        return 0
    if quiet:
        print(json.dumps(out))
    elif out["left"]:
        print(f"{args.node} still holds {len(out['left'])} partition(s) after {out['seconds']:.1f} s: "
              f"{out['left']}; the drain goes on (`risk-engine cluster undrain {args.node}` ends it)")
    else:
        print(f"{args.node} holds no partition: {len(out['moved'])} moved in {out['seconds']:.1f} s; "
              f"it stays drained until `risk-engine cluster undrain {args.node}`")
    return 1 if out["left"] else 0
