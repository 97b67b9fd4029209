"""The C load generator (bench/loadgen.c via bench/cload.py) on short runs against real ZeroMQ
servers: the echo baseline process and the in-test error server whose counts are the oracle.
Each run is about a second; no assertion depends on how fast anything is."""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pytest

from bench import cload
from bench.echo import EchoServer
from bench.engine_proc import free_port
from shm.runtime.securedir import UnsafePathError
from tests.bench.error_server import ErrorServer

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None,
                                reason="gcc not installed: the C load generator cannot be built")


@pytest.fixture(scope="module")
def exe(tmp_path_factory):
    return cload.build(tmp_path_factory.mktemp("cload") / "cache")


@pytest.fixture(scope="module")
def payloads(tmp_path_factory):
    d = tmp_path_factory.mktemp("payloads")
    for batch in (1, 2):
        cload.write_payloads(d / f"b{batch}", None, batch, size=16)
    return d


def test_against_the_echo_counts_add_up_and_the_json_is_sane(exe, payloads):
    echo = EchoServer(f"tcp://127.0.0.1:{free_port()}")
    try:
        r = cload.run_c(exe, cload.Load(echo.bind, "echo", clients=4, batch=2, duration_s=1.0,
                                        warmup_s=0.2), payloads / "b2", client_id_base=1000)
    finally:
        handled = echo.stop()
    assert r["generator"] == "c" and r["clients"] == 4
    assert r["sent"] > 0
    assert r["sent"] == r["ok"] + r["error_count"]
    assert r["errors"] == {} and r["decision_errors"] == {}
    assert r["recorded"] == r["sent"]              # every measured reply timed
    assert r["events_ok"] == 2 * r["ok"]
    assert 0 < r["p50_us"] <= r["p99_us"] <= r["p999_us"] <= r["max_us"]
    assert r["requests_per_s"] == pytest.approx(r["ok"] / r["window_s"], rel=1e-3)
    assert r["window_s"] == pytest.approx(1.0, abs=0.01)
    assert handled >= r["sent"]                    # warm-up requests come on top


def test_two_processes_share_the_clients_and_merge_into_one_document(exe, payloads):
    echo = EchoServer(f"tcp://127.0.0.1:{free_port()}")
    try:
        r = cload.run_c(exe, cload.Load(echo.bind, "echo", clients=5, batch=1, duration_s=1.0,
                                        warmup_s=0.2, processes=2), payloads / "b1", 1000)
    finally:
        echo.stop()
    assert r["processes"] == 2 and r["clients"] == 5
    assert r["sent"] == r["ok"] + r["error_count"] > 0 and r["errors"] == {}
    assert sum(c for _, c in r["hist"]) == r["recorded"] == r["sent"]
    assert 0 < r["p50_us"] <= r["p99_us"] <= r["p999_us"] <= r["max_us"]


def test_python_reads_the_histogram_as_the_c_side_does(exe, payloads):
    """merge() recomputes percentiles from the buckets: on one process's buckets it must give
    the figures that process printed."""
    echo = EchoServer(f"tcp://127.0.0.1:{free_port()}")
    try:
        r = cload.run_c(exe, cload.Load(echo.bind, "echo", clients=3, batch=1, duration_s=0.5,
                                        warmup_s=0.0), payloads / "b1", 1000)
    finally:
        echo.stop()
    hist, max_ns = dict(r["hist"]), round(r["max_us"] * 1e3)
    for key, p in (("p50_us", 50.0), ("p99_us", 99.0), ("p999_us", 99.9)):
        assert cload.percentile_ns(hist, p, max_ns, r["hist_sub_bits"]) / 1e3 == pytest.approx(r[key], abs=1e-3)
    two = cload.merge([r, r])      # the same run twice: the buckets' sums, their percentiles
    doubled = {b: 2 * c for b, c in hist.items()}    # (rank round(p% x 2n) may be the next value)
    assert two["sent"] == 2 * r["sent"]
    for key, p in (("p50_us", 50.0), ("p99_us", 99.0)):
        want = cload.percentile_ns(doubled, p, max_ns, r["hist_sub_bits"]) / 1e3
        assert two[key] == pytest.approx(want, abs=1e-3)


def test_every_kind_of_error_the_server_made_is_counted_by_name(exe, payloads):
    srv = ErrorServer()
    try:
        # every answer must arrive within the client's timeout to be counted as the server
        # counted it: 1 s leaves a loaded machine room (the silences still end as NO_REPLY)
        r = cload.run_c(exe, cload.Load(srv.addr, "engine", clients=3, batch=2, duration_s=2.0,
                                        warmup_s=0.0, timeout_ms=1000, drain_s=1.5),
                        payloads / "b2", client_id_base=5)
    finally:
        srv.close()
    c = srv.counts
    assert c["received"] == r["sent"] > 7
    assert r["sent"] == r["ok"] + r["error_count"]
    assert r["ok"] == c["ok"]
    assert r["errors"] == {"OVERLOADED": c["overloaded"], "BAD_REPLY": c["garbage"],
                           "NO_REPLY": c["dropped"]}
    assert min(r["errors"].values()) > 0
    assert r["decision_errors"] == {"TIMEOUT": c["timeout_decisions"]} != {"TIMEOUT": 0}
    # events/s counts decisions the rules made: the TIMEOUT defaults are not among them
    assert r["events_ok"] == 2 * r["ok"] - c["timeout_decisions"]


def test_histogram_percentiles_match_exact_ones_within_its_resolution(exe):
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.integers(1, 2048, 500),             # exact below 2048 ns
                             rng.lognormal(12, 1.5, 20_000).astype(np.int64) + 1,
                             [60_000_000_000]])                         # one 60 s outlier
    out = subprocess.run([str(exe), "--percentiles-of-stdin"], input=" ".join(map(str, values)),
                         capture_output=True, text=True, check=True, timeout=60).stdout
    got = json.loads(out)
    s = np.sort(values)
    assert got["count"] == len(s) and got["max"] == s[-1]
    for key, p in (("p50", 50.0), ("p99", 99.0), ("p999", 99.9)):
        exact = int(s[max(1, int(p / 100 * len(s) + 0.5)) - 1])     # HdrHistogram's rank
        assert exact <= got[key] <= exact * (1 + 1 / 1024) + 1, (key, exact, got[key])


def test_a_corrupt_payload_file_is_refused_with_a_reason(exe, tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"RLGP\x01\x00\x00\x00\x02\x00\x00\x00\x05\x00\x00\x00\x01\x00\x00\x00abc")
    r = subprocess.run([str(exe), "--target", "tcp://127.0.0.1:1", "--payloads", str(bad)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "truncated payload" in r.stderr and r.stdout == ""


def test_a_cache_directory_others_can_write_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    with pytest.raises(UnsafePathError):
        cload.build(shared)
    assert os.listdir(shared) == []                 # nothing built where others could swap it
