"""engine/exporter.py: the series alerts and the dashboard need, from a real engine.

risk_build_info{version} names what runs (the dashboard's instance list comes from it);
risk_ebpf_requested with risk_ebpf_enabled tells a dead or never-started eBPF sidecar apart
from an engine that never asked for one (deploy/prometheus/alerts.yml RiskEngineEbpfSidecarDown).
"""
from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

from bench.engine_proc import EngineProcess, free_port
from engine.cli import version
from tests.bpf.scrape import engine_exposition, scrape


@pytest.mark.timeout(900)          # the session's one scraped engine starts here when run alone
def test_build_info_names_the_package_version():
    exp = engine_exposition()
    assert exp.types["risk_build_info"] == "gauge"
    assert exp.samples.get1("risk_build_info") == 1.0
    assert exp.labels["risk_build_info"] == {"version": {version()}}
    assert version().split()[0].count(".") == 2, version()     # 0.1.0, from setup.py's metadata


@pytest.mark.timeout(900)
def test_an_engine_without_ebpf_does_not_ask_for_the_sidecar():
    exp = engine_exposition()
    assert exp.types["risk_ebpf_requested"] == "gauge"
    assert exp.samples.get1("risk_ebpf_requested") == 0.0
    assert exp.samples.get1("risk_ebpf_enabled") == 0.0


def _sidecar_pids(engine_pid: int) -> list[int]:
    out = []
    for c in psutil.Process(engine_pid).children(recursive=True):
        try:
            cmd = " ".join(c.cmdline())          # its title replaces the cmdline once set
            if "bpf.sidecar" in cmd or cmd.startswith("risk-engine: sidecar"):
                out.append(c.pid)
        except psutil.Error:
            continue
    return out


@pytest.mark.slow                  # its own engine, and the sidecar's BPF compile when it can run
@pytest.mark.timeout(900)
def test_a_dead_sidecar_shows_as_requested_but_not_enabled(tmp_path):
    """serve --ebpf: where eBPF runs, the sidecar is killed and the engine's gauges turn to
    requested 1, enabled 0 within a bounded wait; where it cannot run, they read so from the
    start and the engine says why. Either way the engine keeps serving."""
    ebpf_bind = f"127.0.0.1:{free_port()}"
    with EngineProcess(tmp_path, workers=1, extra_args=("--ebpf",),
                       overrides={"metrics": {"ebpf_bind": ebpf_bind}}) as eng:
        s = scrape(eng.metrics_url)
        assert s.get1("risk_ebpf_requested") == 1.0
        if s.get1("risk_ebpf_enabled") == 1.0:
            pids = _sidecar_pids(eng.pid)
            assert len(pids) == 1, pids
            os.kill(pids[0], signal.SIGKILL)
            deadline = time.monotonic() + 60
            while scrape(eng.metrics_url).get1("risk_ebpf_enabled") != 0.0:
                assert time.monotonic() < deadline, "risk_ebpf_enabled still 1 after the kill"
                time.sleep(0.1)
        else:
            assert "serving without eBPF telemetry" in eng.output(), eng.output()
        s = scrape(eng.metrics_url)
        assert (s.get1("risk_ebpf_requested"), s.get1("risk_ebpf_enabled")) == (1.0, 0.0)
        assert s.get1("risk_build_info") == 1.0
