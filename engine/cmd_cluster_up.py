"""`risk-engine cluster up --nodes 3`: a local cluster to try, on loopback only: three
nats-servers clustered with JetStream (R3 buckets; engine.cluster.natsserver) and N engine
nodes (`risk-engine serve` with a `cluster:` section), each with its own instance, ports and
state under one private temporary directory. The servers require a password: the engine
user's credentials file (the nodes', and for `cluster status`/`drain`) and a read-only client
user's (for ClusterClient) are written 0600 there and printed (docs/CLUSTER.md, Authentication). Prints the endpoints and waits; Ctrl-C (or
SIGTERM) stops every engine (SIGTERM, then SIGKILL of its process group after a grace
period), every server, and removes what they left: /dev/shm segments, run directories, the
temporary directory (journals included: this is for trying, not for keeping)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

READY_LINE = "risk-engine: serving"
STOP_GRACE_S = 30.0


def add_arguments(sub) -> None:
    s = sub.add_parser("up", help="a local cluster to try: 3 NATS servers and N engines on loopback",
                       description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    s.add_argument("--nodes", type=int, default=3, help="engine nodes, 1..8 (default 3)")
    s.add_argument("--partitions", type=int, default=8, help="cluster.partitions (default 8)")
    s.add_argument("--workers", type=int, default=1, help="workers per engine, a divisor of --partitions (default 1)")
    s.add_argument("--lease-ttl-s", type=float, default=2.0, help="cluster.lease_ttl_s (default 2)")
    s.add_argument("--ready-timeout-s", type=float, default=900.0,
                   help="give up when an engine is not serving by then (a cold start compiles "
                        "the rules: minutes on a loaded machine; default 900)")
    s.set_defaults(_cluster_run=run)


class Node:
    def __init__(self, i: int, root, servers, credentials: str, args):
        import yaml                                       # here: `--help` stays fast
        from engine.cluster.natsserver import loopback_port   # here: as above
        from shm.runtime.config import portable_raw       # here: as above (numpy, the schema)
        from shm.runtime.config_cluster import shard_keyed   # here: as above
        self.name, self.instance = f"node{i}", "up" + uuid.uuid4().hex[:10]
        self.port, self.metrics_port = loopback_port(), loopback_port()
        d = root / self.name
        d.mkdir(mode=0o700)
        raw = portable_raw(None)
        raw["instance"] = self.instance
        raw["ingress"] = {**(raw.get("ingress") or {}), "bind": self.endpoint}
        raw["metrics"] = {**(raw.get("metrics") or {}), "enabled": True,
                          "bind": f"127.0.0.1:{self.metrics_port}"}
        raw["workers"] = {**(raw.get("workers") or {}), "count": args.workers, "standby": False}
        raw["journal"] = {**(raw.get("journal") or {}), "dir": str(d / "journal")}
        raw["snapshot"] = {**(raw.get("snapshot") or {}), "dir": str(d / "snapshots")}
        raw["cluster"] = {"servers": list(servers), "partitions": args.partitions, "node": self.name,
                          "lease_ttl_s": args.lease_ttl_s, "credentials": credentials}
        # a cluster takes only features keyed by the shard key (docs/CLUSTER.md)
        raw["features"], self.rekeyed = shard_keyed(raw.get("features") or {}, raw["schema"]["shard_key"])
        self.config = d / "config.yaml"
        fd = os.open(self.config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(raw, f, sort_keys=False)
        self.log_path = d / "serve.log"
        self.proc = None

    @property
    def endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def launch(self) -> None:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "serve", "--config",
                                          str(self.config)], stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         env=dict(os.environ, PYTHONUNBUFFERED="1"))

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def serving(self) -> bool:
        return any(ln.startswith(READY_LINE) for ln in self.log().splitlines())

    def stop(self) -> int | None:
        """SIGTERM (a clean stop releases the leases), SIGKILL of the group after the grace."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)   # whatever of its group is left
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            pass
        from shm.runtime.rundir import remove_dead_run_dir   # here: `--help` stays fast
        from shm.segment import reclaim_stale               # here: as above (numpy)
        reclaim_stale(self.instance)
        remove_dead_run_dir(self.instance)
        return self.proc.returncode


def _wait_serving(nodes, timeout_s: float, stopping) -> str | None:
    """None when every node serves; else why not."""
    deadline = time.monotonic() + timeout_s
    while not stopping():
        for n in nodes:
            if n.proc.poll() is not None:
                return f"{n.name} exited with {n.proc.returncode}:\n{n.log()[-3000:]}"
        if all(n.serving() for n in nodes):
            return None
        if time.monotonic() > deadline:
            return f"not every node serving within {timeout_s:g} s"
        time.sleep(0.2)
    return "interrupted"


def run(args) -> int:
    from engine.cluster.natsserver import NatsCluster, NatsServerError   # here: `--help` stays fast
    if not 1 <= args.nodes <= 8 or not 1 <= args.partitions <= 4096 or args.workers < 1:
        print(f"risk-engine: cluster up: --nodes={args.nodes} --partitions={args.partitions} "
              f"--workers={args.workers}: need 1..8, 1..4096 and >= 1", file=sys.stderr)
        return 2
    if args.partitions % args.workers:       # checked here, before any server or node starts
        print(f"risk-engine: cluster up: --workers={args.workers} does not divide "
              f"--partitions={args.partitions}: a node's worker count must divide the partition "
              f"count (docs/CLUSTER.md, \"Partitions\")", file=sys.stderr)
        return 2
    stop = []
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, lambda *_: stop.append(1))
    root = Path(tempfile.mkdtemp(prefix="risk-engine-up-"))     # 0700
    nats, nodes, rc = None, [], 0
    try:
        try:
            nats = NatsCluster(3, run_dir=root / "nats").start()
        except NatsServerError as e:
            print(f"risk-engine: cluster up: {e}", file=sys.stderr)
            return 2
        servers = ",".join(nats.urls)
        creds = str(nats.credentials)
        print(f"NATS servers (JetStream, R3): {servers}\n"
              f"NATS credentials: engine {creds}  read-only client {nats.client_credentials}", flush=True)
        nodes = [Node(i, root, nats.urls, creds, args) for i in range(args.nodes)]
        if nodes[0].rekeyed:
            print(f"features keyed by the shard key instead, as a cluster needs (docs/CLUSTER.md): "
                  f"{', '.join(nodes[0].rekeyed)}", flush=True)
        nodes[0].launch()        # alone first: a cold cache compiles the rules once, not N times
        why = _wait_serving(nodes[:1], args.ready_timeout_s, lambda: bool(stop))
        if why is None:
            for n in nodes[1:]:
                n.launch()
            why = _wait_serving(nodes, args.ready_timeout_s, lambda: bool(stop))
        if why is not None:
            print(f"risk-engine: cluster up: {why}", file=sys.stderr)
            return 1 if why != "interrupted" else 0
        for n in nodes:
            print(f"{n.name}: ingress {n.endpoint}  metrics http://127.0.0.1:{n.metrics_port}/metrics  "
                  f"admin: risk-engine admin --instance {n.instance} cluster", flush=True)
        print(f"try: risk-engine cluster status --servers {servers} --credentials {creds}\n"
              f"     risk-engine eval --endpoint {nodes[0].endpoint} account_id=42 amount=250   "
              f"(NOT_OWNER names the owner when {nodes[0].name} does not hold its partition; "
              f"ingress.cluster_client.ClusterClient(servers, credentials=CLIENT_FILE) routes "
              f"by itself)\n"
              f"     risk-engine cluster drain node0 --servers {servers} --credentials {creds}\n"
              f"state (journals, logs) in {root}, removed on stop. Ctrl-C stops everything.", flush=True)
        while not stop:
            gone = [n for n in nodes if n.proc.poll() is not None]
            if gone:
                print(f"risk-engine: cluster up: {gone[0].name} exited with {gone[0].proc.returncode}; "
                      f"stopping everything:\n{gone[0].log()[-3000:]}", file=sys.stderr)
                rc = 1
                break
            time.sleep(0.2)
        return rc
    finally:
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_IGN)          # a second Ctrl-C must not cut the clean-up
        codes = [(n.name, n.stop()) for n in nodes]
        if nats is not None:
            nats.close()
        shutil.rmtree(root, ignore_errors=True)
        if nodes:
            print("stopped: " + ", ".join(f"{name} (exit {c})" for name, c in codes)
                  + ", 3 NATS servers; state removed", flush=True)
