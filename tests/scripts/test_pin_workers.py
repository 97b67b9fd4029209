"""scripts/pin_workers.sh (a wrapper around `risk-engine pin`) against a real engine, and
numactl-bound start-up."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from bench.engine_proc import REPO, EngineProcess

SCRIPT = REPO / "scripts" / "pin_workers.sh"
ENV = {k: v for k, v in os.environ.items() if k != "RISK_ENGINE"}     # this checkout's code


def pin(*args):
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, env=ENV, timeout=60)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    with EngineProcess(tmp_path_factory.mktemp("pin"), workers=2, metrics=False) as eng:
        yield eng


def affinity(pid: int) -> set[int]:
    return os.sched_getaffinity(pid)


def workers(eng) -> dict[str, int]:
    import psutil
    out = {}
    for p in psutil.Process(eng.proc.pid).children():
        title = " ".join(p.cmdline())
        if title.startswith("risk-engine: "):
            out[title[len("risk-engine: "):].strip()] = p.pid
    return out


def test_dry_run_changes_nothing(engine):
    before = {r: affinity(p) for r, p in workers(engine).items()}
    r = pin("--instance", engine.instance, "--dry-run", "1", "0")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("would pin worker") == 2
    assert {r: affinity(p) for r, p in workers(engine).items()} == before


def test_pins_workers_and_ingress(engine):
    allowed = sorted(os.sched_getaffinity(0))
    cpus = [str(allowed[-1]), str(allowed[0])]
    r = pin("--instance", engine.instance, "--ingress", str(allowed[0]), *cpus)
    assert r.returncode == 0, r.stderr
    w = workers(engine)
    assert affinity(w["worker 0"]) == {allowed[-1]}
    assert affinity(w["worker 1"]) == {allowed[0]}
    assert affinity(w["ingress"]) == {allowed[0]}
    for role in ("worker 0", "worker 1", "ingress", "supervisor"):
        assert role in r.stdout


def test_pid_file_mode(engine, tmp_path):
    pf = tmp_path / "sup.pid"
    pf.write_text(str(engine.proc.pid))
    r = pin("--pid-file", str(pf), "--dry-run", "0")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("would pin") == 2


def test_cpu_outside_allowed_set_is_refused(engine):
    r = pin("--instance", engine.instance, "4095")
    assert r.returncode == 2 and "cpu=4095 is not in the allowed set" in r.stderr
    r = pin("--instance", "nosuchinstance", "0")
    assert r.returncode == 2 and "no running engine" in r.stderr
    r = pin("--instance", engine.instance, "x")
    assert r.returncode == 2 and "not a CPU number" in r.stderr


@pytest.mark.skipif(shutil.which("numactl") is None, reason="numactl not installed (.ci/run installs it)")
def test_numactl_bound_engine_reports_its_node(tmp_path):
    eng = EngineProcess(tmp_path, workers=1, metrics=False,
                        prefix=("numactl", "--cpunodebind=0", "--membind=0"))
    with eng:
        out = subprocess.run([sys.executable, "-m", "engine.cli", "status", "--instance", eng.instance],
                             capture_output=True, text=True, timeout=60).stdout
        line = next(l for l in out.splitlines() if "worker 0" in l and "CPU" not in l)
        assert line.split()[-1] == "0"                      # NUMA node column
        rings = next(l for l in out.splitlines() if "worker 0 rings" in l)
        assert "node0:" in rings and "node1" not in rings   # ring pages on the bound node
