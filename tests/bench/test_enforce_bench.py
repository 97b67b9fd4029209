"""``python -m bench.enforce`` run tiny: one round of every window, a few update-latency
repetitions, and its JSON checked for sanity (every condition present, counts > 0, drops never
more than the SYNs sent, nothing left behind). Root, bcc, nft and gcc are needed: skipped with
the reason elsewhere, failing instead under REQUIRE_EBPF=1 (CI installs them).

Slow: two engine starts and three bcc compiles (about a minute here).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from bench.engine_proc import REPO

pytestmark = pytest.mark.slow


def _require() -> None:
    from bench.enforce import missing
    why = missing()
    if why is None:
        return
    if os.environ.get("REQUIRE_EBPF") == "1":
        pytest.fail(f"REQUIRE_EBPF=1 but {why}", pytrace=False)
    pytest.skip(why)


def _namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout


def _left_behind(pid: int) -> list[str]:
    """What a run of process ``pid`` could leave: its namespaces (bench/netns.py names them by
    pid; the XDP/TC programs and the nft table live on in them), its processes."""
    tag = pid % 100000
    names = [n for n in (f"re-srv-{tag}", f"re-cli-{tag}") if n in _namespaces().split()]
    kids = subprocess.run(["pgrep", "-s", str(pid)], capture_output=True, text=True).stdout.split()
    return names + [f"process {k}" for k in kids]


def _remove_left(pid: int) -> None:
    """When a run failed to clean up, the test does (so a failure leaves nothing either)."""
    tag = pid % 100000
    for ns in (f"re-srv-{tag}", f"re-cli-{tag}"):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
    subprocess.run(["pkill", "-KILL", "-s", str(pid)], capture_output=True, timeout=10)


def _run(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bench.enforce", *argv], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)      # its session: everything it starts


def test_a_tiny_run_reports_every_condition_and_leaves_nothing(tmp_path):
    _require()
    out = tmp_path / "enforce.json"
    p = _run(["--duration", "1", "--rounds", "1", "--warmup", "0.3", "--clients", "2",
              "--update-reps", "5", "--json", str(out)])
    try:
        stdout, stderr = p.communicate(timeout=900)
        print(stdout)
        assert p.returncode == 0, stderr[-4000:]
        assert _left_behind(p.pid) == []
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        _remove_left(p.pid)
    doc = json.loads(out.read_text())
    s = doc["summary"]
    assert set(s) == {"drop:xdp", "drop:tc", "drop:nft", "clients:quiet", "clients:xdp", "clients:none"}
    for w in doc["windows"]:
        if w["flood"]:                            # a drop is counted only for a SYN sent
            assert 0 <= w["dropped"] <= w["flood"]["sent"], w
    for cond in ("xdp", "tc", "nft"):
        r = s[f"drop:{cond}"]
        assert r["dropped"] > 0 and r["sent_per_s"] > 0 and r["kernel_ns_per_drop"] is not None, (cond, r)
    for cond in ("quiet", "xdp", "none"):
        r = s[f"clients:{cond}"]
        assert r["ok"] > 0 and 0 < r["p50_us"] <= r["p99_us"], (cond, r)
    assert s["clients:quiet"]["sent_per_s"] == 0 and s["clients:quiet"]["dropped"] == 0
    assert s["clients:xdp"]["dropped"] > 0
    assert s["clients:none"]["sent_per_s"] > 0 and s["clients:none"]["dropped"] == 0
    u = doc["update_latency"]
    assert u["count"] == 5 and 0 < u["min_us"] <= u["p50_us"] <= u["max_us"], u
    for line in ("the flood alone", "legitimate clients", "update latency, admin list-add reply"):
        assert line in stdout, stdout


def test_sigterm_mid_run_leaves_nothing(tmp_path):
    """The flood part interrupted (SIGTERM) while it floods: exit 128 + 15, and the flood, the
    engine, the programs (with the namespaces) and the nft table are gone."""
    _require()
    p = _run(["--duration", "30", "--rounds", "1", "--update-reps", "0"])
    try:
        seen = ""
        deadline = time.monotonic() + 900
        while "round 1/1" not in seen and time.monotonic() < deadline and p.poll() is None:
            seen += p.stderr.readline()
        assert "round 1/1" in seen, seen[-3000:]
        time.sleep(2)                         # inside the first window, flood running
        p.send_signal(signal.SIGTERM)
        stdout, stderr = p.communicate(timeout=120)
        assert p.returncode == 128 + signal.SIGTERM, seen + stderr
        assert _left_behind(p.pid) == []
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        _remove_left(p.pid)
