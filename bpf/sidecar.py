"""The eBPF sidecar process: load the program, serve the maps as Prometheus metrics.

    python -m bpf.sidecar --port 5555 [--metrics 127.0.0.1:9109] [--max-conns 4096]

Contract with a parent (see bpf/spawn.py): on success exactly one line
``ready port=P metrics=HOST:PORT`` is written to stdout; on failure one line
``risk-engine sidecar: <reason>`` goes to stderr and the exit code is a
``bpf.availability.Exit`` value. SIGTERM/SIGINT stop it with exit 0.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import signal
import sys
import threading

from bpf.availability import Exit, check_ebpf

DEFAULT_METRICS = "127.0.0.1:9109"
PROC_TITLE = "risk-engine: sidecar"
_PR_SET_PDEATHSIG = 1


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, required=True,
                   help="local TCP port of the front door to watch (filtered in the kernel)")
    p.add_argument("--metrics", default=DEFAULT_METRICS,
                   help=f"HOST:PORT of this sidecar's Prometheus endpoint (default {DEFAULT_METRICS})")
    p.add_argument("--max-conns", type=int, default=4096,
                   help="bound of the per-connection BPF map (default 4096)")
    p.add_argument("--parent-pid", type=int, default=0,
                   help="exit when this process dies (set by bpf.spawn)")


def parse_hostport(text: str) -> tuple[str, int]:
    """'HOST:PORT' -> (host, port); raises ValueError naming the value."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"metrics={text!r}: must be HOST:PORT")
    return host.strip("[]"), int(port)


def _fail(code: Exit, reason: str) -> int:
    print(f"risk-engine sidecar: {reason}", file=sys.stderr, flush=True)
    return int(code)


def _die_with_parent(parent_pid: int) -> bool:
    """Ask the kernel for SIGTERM when the parent dies; False if it is already gone."""
    if not parent_pid:
        return True
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    return os.getppid() == parent_pid


def run(args) -> int:
    """Run until SIGTERM/SIGINT; returns an Exit code (see bpf.availability)."""
    try:
        host, mport = parse_hostport(args.metrics)
        if not 1 <= args.port <= 65535:
            raise ValueError(f"port={args.port}: must be 1..65535")
    except ValueError as e:
        return _fail(Exit.USAGE, str(e))
    if not _die_with_parent(args.parent_pid):
        return _fail(Exit.OK, f"parent_pid={args.parent_pid} already gone")
    missing = check_ebpf()
    if missing is not None:
        return _fail(missing.code, missing.reason)
    try:
        # lazy, as the imports below: every risk-engine start imports this module (its arguments)
        import setproctitle
        setproctitle.setproctitle(PROC_TITLE)
    except ImportError:
        pass
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    from bpf import loader           # lazy: see setproctitle above
    try:
        bpf = loader.load(args.port, args.max_conns)
    except Exception as e:   # bcc raises bare Exception on compile/attach errors
        return _fail(Exit.LOAD_FAILED, f"load failed port={args.port}: "
                     f"{str(e).splitlines()[0] if str(e) else type(e).__name__}")
    # lazy: prometheus_client loads ~110 modules (see setproctitle above)
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client import ProcessCollector
    from bpf.collector import SocketCollector
    registry = CollectorRegistry()
    registry.register(SocketCollector(lambda: loader.read_snapshot(bpf), args.port))
    ProcessCollector(registry=registry)
    try:
        server, _thread = start_http_server(mport, addr=host, registry=registry)
    except OSError as e:
        return _fail(Exit.METRICS_BIND, f"cannot bind metrics={args.metrics}: {e.strerror}")
    print(f"ready port={args.port} metrics={host}:{server.server_port}", flush=True)
    stop.wait()            # sleeps; scrapes run on the HTTP server thread
    server.shutdown()
    bpf.cleanup()
    return int(Exit.OK)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bpf.sidecar", description=__doc__.splitlines()[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
