"""`risk-engine sidecar`: the eBPF socket-telemetry process (see bpf/sidecar.py, docs/EBPF.md)."""
HELP = "export TCP srtt, retransmits, states and bytes of the front-door port via eBPF (root)"


def add_arguments(p):
    from bpf.sidecar import add_arguments as _add
    _add(p)


def run(args) -> int:
    from bpf.sidecar import run as _run
    return _run(args)
