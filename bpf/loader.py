"""Compile and attach bpf/program.c, and read its maps into a plain ``Snapshot``.

The program is compiled per port (``-DFRONT_PORT``): the port filter runs in the kernel,
so events of other sockets cost one compare. Loading costs 0.4-1.2 s and about 130 MB
(LLVM); do it once per process.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

PROGRAM_PATH = Path(__file__).with_name("program.c")

# Indexes of the `counters` array; keep in step with the #defines in program.c.
C_BYTES_TX, C_BYTES_RX, C_RETRANS, C_SRTT_SUM_US, C_SRTT_COUNT, C_TABLE_FULL = range(6)
NCOUNTERS = 8
NSLOTS = 32

# Linux TCP states (include/net/tcp_states.h), 1-based; index = state value.
TCP_STATE_NAMES = ("UNKNOWN0", "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1",
                   "FIN_WAIT2", "TIME_WAIT", "CLOSE", "CLOSE_WAIT", "LAST_ACK", "LISTEN",
                   "CLOSING", "NEW_SYN_RECV", "BOUND_INACTIVE", "UNKNOWN14", "UNKNOWN15")


@dataclass
class Snapshot:
    """Totals since load. ``srtt_slots[k]`` counts srtt samples < 2**k us (k >= 1)."""
    bytes_tx: int = 0
    bytes_rx: int = 0
    retransmits: int = 0
    srtt_sum_us: int = 0
    srtt_count: int = 0
    table_full: int = 0
    srtt_slots: list[int] = field(default_factory=lambda: [0] * NSLOTS)
    transitions: dict[tuple[str, str], int] = field(default_factory=dict)
    connections: int = 0


def load(port: int, max_conns: int = 4096):
    """Compile, load and attach the program for local TCP port ``port``; returns bcc.BPF.

    Raises ValueError for a bad port/max_conns, and whatever bcc raises on failure.
    """
    if not 1 <= int(port) <= 65535:
        raise ValueError(f"port={port!r}: must be 1..65535")
    if not 1 <= int(max_conns) <= 1 << 20:
        raise ValueError(f"max_conns={max_conns!r}: must be 1..1048576")
    from bcc import BPF   # lazy: optional (Debian's python3-bpfcc), needed by load() only
    return BPF(src_file=str(PROGRAM_PATH).encode(),
               cflags=[f"-DFRONT_PORT={int(port)}", f"-DMAX_CONNS={int(max_conns)}", "-w"])


def _percpu_sums(table, n: int) -> list[int]:
    out = []
    for i in range(n):
        out.append(int(sum(v.value if hasattr(v, "value") else int(v)
                           for v in table[table.Key(i)])))
    return out


def read_snapshot(bpf) -> Snapshot:
    """Read every map once (about 300 map lookups); safe while the probes keep writing."""
    c = _percpu_sums(bpf["counters"], NCOUNTERS)
    snap = Snapshot(bytes_tx=c[C_BYTES_TX], bytes_rx=c[C_BYTES_RX], retransmits=c[C_RETRANS],
                    srtt_sum_us=c[C_SRTT_SUM_US], srtt_count=c[C_SRTT_COUNT],
                    table_full=c[C_TABLE_FULL])
    snap.srtt_slots = _percpu_sums(bpf["srtt_hist"], NSLOTS)
    trans = _percpu_sums(bpf["transitions"], 256)
    for idx, n in enumerate(trans):
        if n:
            snap.transitions[(TCP_STATE_NAMES[idx // 16], TCP_STATE_NAMES[idx % 16])] = n
    snap.connections = sum(1 for _ in bpf["conns"].keys())
    return snap
