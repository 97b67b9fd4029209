"""``python -m engine.cluster.agent_cli``: one lease agent (engine.cluster.agent) as a process,
printing its events as JSON lines on stdout and its NATS connection's state changes on stderr
(the tests kill -9 and SIGSTOP such processes)."""
from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys

from engine.cluster.agent import _RETRY, OPEN_TIMEOUT_S, LeaseAgent
from engine.cluster.jsopen import StoreUnavailable
from engine.cluster.leases import BUCKET, LeaseError


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m engine.cluster.agent_cli", description=(
        "Run one lease agent (no engine): take, renew and balance partition leases, printing "
        "each event as a JSON line (the NATS connection's state changes on stderr, a line each). "
        "SIGTERM/SIGINT release the leases and exit 0."))
    ap.add_argument("--servers", required=True, help="nats://HOST:PORT[,nats://...]")
    ap.add_argument("--node", required=True)
    ap.add_argument("--advertise", default="tcp://127.0.0.1:0")
    ap.add_argument("--partitions", type=int, default=64)
    ap.add_argument("--lease-ttl-s", type=float, default=2.0)
    ap.add_argument("--bucket", default=BUCKET)
    ap.add_argument("--credentials", default="", help="the NATS credentials file (cluster.credentials)")
    ap.add_argument("--replicas", type=int, default=None)
    ap.add_argument("--open-timeout-s", type=float, default=OPEN_TIMEOUT_S,
                    help="give up starting when the servers or the bucket cannot be used this long")
    a = ap.parse_args(argv)

    def out(ev):
        sys.stdout.write(json.dumps(ev, separators=(",", ":")) + "\n")
        sys.stdout.flush()

    agent = LeaseAgent(a.servers.split(","), a.node, a.advertise, a.partitions, a.lease_ttl_s,
                       bucket=a.bucket, replicas=a.replicas, on_event=out,
                       open_timeout_s=a.open_timeout_s, credentials=a.credentials)

    async def go():
        stop = asyncio.Event()
        for s in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(s, stop.set)
        await agent.run(stop)

    try:
        asyncio.run(go())
    except (LeaseError, StoreUnavailable, *_RETRY) as e:
        why = f"{type(e).__name__}: {e}" if str(e) else f"no NATS server answered within {a.open_timeout_s:g} s"
        print(f"risk-engine: cluster: servers={a.servers}: {why}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
