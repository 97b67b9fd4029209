"""`risk-engine bench`: the latency harness (``python -m bench.latency``) as a subcommand."""

from bench.latency import add_arguments as _add, run as _run

HELP = "measure engine latency and throughput next to a raw pyzmq echo baseline"


def add_arguments(p):
    _add(p)


def run(args) -> int:
    return _run(args)
