"""`risk-engine cluster up --nodes 3`: three NATS servers and three engine nodes on loopback;
a decision made through it by a cluster-mode client; Ctrl-C (SIGINT) stops everything: exit
0, no process it started alive, no /dev/shm segment or run directory of its instances, its
temporary directory removed. Three engines start: slow."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import psutil
import pytest

from bench.engine_proc import shm_entries
from ingress.cluster_client import ClusterClient
from shm.runtime.rundir import run_dir_for
from tests.cluster.agentproc import REPO, wait_for
from tests.cluster.test_node import EVENT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]


def test_cluster_up_serves_a_decision_and_ctrl_c_leaves_nothing(tmp_path):
    log = tmp_path / "up.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "cluster", "up", "--nodes", "3"],
                                cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: "Ctrl-C stops everything" in log.read_text() or proc.poll() is not None,
                 1200, "cluster up ready", step_s=0.5)
        text = log.read_text()
        assert proc.poll() is None, text
        servers = re.search(r"NATS servers \(JetStream, R3\): (\S+)", text)[1].split(",")
        client_creds = re.search(r"read-only client (\S+)", text)[1]
        instances = re.findall(r"admin --instance (\w+) cluster", text)
        root = re.search(r"state \(journals, logs\) in (\S+),", text)[1]
        assert len(servers) == 3 and len(instances) == 3 and os.path.isdir(root)
        started = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
        assert len(started) >= 6                      # 3 nats-servers, 3 engines (and their workers)
        with ClusterClient(servers, timeout_ms=5000, retries=3, deadline_ms=5000,
                           credentials=client_creds) as cc:   # ack: sync
            wait_for(lambda: all(cc.owner(p) for p in range(cc.partitions)), 60, "every partition owned")
            d = cc.evaluate({**EVENT, "account_id": 4242})
            assert d.error is None and d.action in ("allow", "review", "block"), d
        proc.send_signal(signal.SIGINT)
        assert proc.wait(180) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(60)
    text = log.read_text()
    assert "stopped: node0 (exit 0), node1 (exit 0), node2 (exit 0)" in text, text
    deadline = time.monotonic() + 10
    while any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in started) \
            and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p for p in started if psutil.pid_exists(p)
                and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    for inst in instances:
        assert shm_entries(inst) == [] and not run_dir_for(inst).exists()
    assert not os.path.exists(root)
