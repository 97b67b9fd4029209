"""The sidecar against real kernel traffic (root + bcc; see conftest for skip/fail rules).

Outcomes allowed: exact ZMTP byte counts are expected but 10% slack is accepted (issue 5);
srtt samples and state transitions must be seen for every connection; retransmits must be
> 0 when every 4th data segment of the engine side is dropped inside a private network namespace.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from tests.bpf import traffic
from tests.bpf.scrape import scrape

CONNECTIONS = 3
MESSAGES = 200


def _wait_for(url: str, pred, timeout_s: float = 5.0):
    """Scrape every 50 ms until pred(samples) holds or timeout; returns the last scrape."""
    deadline = time.monotonic() + timeout_s
    s = scrape(url)
    while not pred(s) and time.monotonic() < deadline:
        time.sleep(0.05)
        s = scrape(url)
    return s


def test_sidecar_process_and_static_metrics(sidecar):
    with open(f"/proc/{sidecar.pid}/cmdline", "rb") as f:
        title = f.read().split(b"\0")[0]
    assert title.startswith(b"risk-engine: sidecar")
    s = scrape(sidecar.url)
    assert s.get1("risk_ebpf_enabled") == 1.0
    assert s.get1("risk_tcp_conn_table_full_total", port=str(sidecar.port)) == 0.0


def test_loopback_zeromq_traffic(sidecar):
    port = str(sidecar.port)
    before = scrape(sidecar.url)
    r = traffic.run(sidecar.port, CONNECTIONS, MESSAGES)
    # the engine (ROUTER) side closes after the peers: wait until every conn reached CLOSE
    after = _wait_for(sidecar.url, lambda s: s.get1("risk_tcp_connections", port=port) == 0
                      and s.delta(before, "risk_tcp_state_transitions_total", to="CLOSE",
                                  port=port) >= CONNECTIONS + 1)

    srtt_n = after.delta(before, "risk_tcp_srtt_seconds_count", port=port)
    assert srtt_n > 0
    assert after.delta(before, "risk_tcp_srtt_seconds_bucket", le="+Inf", port=port) == srtt_n
    assert after.delta(before, "risk_tcp_srtt_seconds_sum", port=port) > 0

    rx = after.delta(before, "risk_tcp_bytes_total", direction="rx", port=port)
    tx = after.delta(before, "risk_tcp_bytes_total", direction="tx", port=port)
    print(f"bytes rx={rx:.0f} expected={r.client_to_server_bytes} "
          f"tx={tx:.0f} expected={r.server_to_client_bytes} srtt_samples={srtt_n:.0f}")
    assert abs(rx - r.client_to_server_bytes) <= 0.10 * r.client_to_server_bytes
    assert abs(tx - r.server_to_client_bytes) <= 0.10 * r.server_to_client_bytes

    def trans(frm, to):
        return after.delta(before, "risk_tcp_state_transitions_total", port=port,
                           **{"from": frm, "to": to})
    # one opening pair per connection on the engine side, and one listener
    assert trans("LISTEN", "SYN_RECV") == CONNECTIONS
    assert trans("SYN_RECV", "ESTABLISHED") == CONNECTIONS
    assert trans("CLOSE", "LISTEN") == 1 and trans("LISTEN", "CLOSE") == 1
    # every connection reached CLOSE exactly once (whichever side closed first)
    closed = after.delta(before, "risk_tcp_state_transitions_total", to="CLOSE", port=port)
    assert closed - trans("LISTEN", "CLOSE") == CONNECTIONS
    assert after.get1("risk_tcp_connections", port=port) == 0


def test_retransmits_under_loss_in_private_netns(sidecar):
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("iptables"):
        msg = "needs root, unshare (util-linux) and iptables"
        if os.environ.get("REQUIRE_EBPF") == "1":
            pytest.fail(f"REQUIRE_EBPF=1 but {msg}", pytrace=False)
        pytest.skip(msg)
    port = str(sidecar.port)
    before = scrape(sidecar.url)
    cmd = ["unshare", "-n", sys.executable, "-m", "tests.bpf.traffic", "--port", port,
           "--connections", "1", "--messages", "20", "--drop-every", "4", "--timeout-s", "40"]
    cwd = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr[-2000:]
    result = json.loads(p.stdout.strip().splitlines()[-1])
    after = scrape(sidecar.url)
    retrans = after.delta(before, "risk_tcp_retransmits_total", port=port)
    print(f"retransmits={retrans:.0f} elapsed_s={result['elapsed_s']:.2f}")
    assert retrans > 0
