"""`risk-engine bench`: the latency harness (``python -m bench.latency``) as a subcommand."""
HELP = "measure engine latency and throughput next to a raw pyzmq echo baseline"


def add_arguments(p):
    from bench.latency import add_arguments as _add
    _add(p)


def run(args) -> int:
    from bench.latency import run as _run
    return _run(args)
