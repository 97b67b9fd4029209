"""`risk-engine sidecar`: the eBPF socket-telemetry process (see bpf/sidecar.py, docs/EBPF.md)."""

from bpf.sidecar import add_arguments as _add, run as _run

HELP = "export TCP srtt, retransmits, states and bytes of the front-door port via eBPF (root)"


def add_arguments(p):
    _add(p)


def run(args) -> int:
    return _run(args)
