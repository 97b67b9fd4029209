"""eBPF test gate: skip with the reason when eBPF cannot run here, FAIL when REQUIRE_EBPF=1."""
from __future__ import annotations

import os
import random
import socket
import time

import pytest

from bpf.availability import check_ebpf


def require_ebpf() -> None:
    """Skip (or fail under REQUIRE_EBPF=1) unless the sidecar can run on this machine."""
    missing = check_ebpf()
    if missing is None:
        return
    if os.environ.get("REQUIRE_EBPF") == "1":
        pytest.fail(f"REQUIRE_EBPF=1 but {missing.reason}", pytrace=False)
    pytest.skip(missing.reason)


def free_tcp_port(low: int = 20000, high: int = 32000, attempts: int = 200) -> int:
    """A port free now and BELOW the ephemeral range (32768+), so no client socket of another
    test on this machine can get it as its local port and be counted by the sidecar."""
    rng = random.Random(os.getpid() ^ int(time.time()))
    for _ in range(attempts):
        port = rng.randrange(low, high)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise RuntimeError(f"no free port in range={low}..{high} after attempts={attempts}")


@pytest.fixture(scope="module")
def sidecar():
    """One sidecar per module (a bcc load costs about 1 s and 130 MB), stopped at the end."""
    require_ebpf()
    from bpf.spawn import start_sidecar
    port = free_tcp_port()
    sc = start_sidecar(port, metrics="127.0.0.1:0")
    try:
        yield sc
    finally:
        rc = sc.stop()
    assert rc == 0, f"sidecar exit code {rc} on SIGTERM"
