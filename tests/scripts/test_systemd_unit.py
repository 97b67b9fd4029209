"""scripts/systemd/risk-engine.service: runs as its own user with private run, state and
cache directories, tells systemd when it serves (Type=notify), is a unit systemd accepts,
and is the one docs/DEPLOY.md shows."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from bench.engine_proc import REPO

UNIT = REPO / "scripts" / "systemd" / "risk-engine.service"


def settings() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            k, v = line.split("=", 1)
            out.setdefault(k.strip(), []).append(v.strip())
    return out


def test_runs_as_a_dedicated_user_with_private_directories():
    s = settings()
    assert s["User"] == ["risk-engine"] and "root" not in s.get("Group", [])
    for kind in ("Runtime", "State", "Cache"):
        assert s[f"{kind}Directory"] == ["risk-engine"] and s[f"{kind}DirectoryMode"] == ["0700"]
    assert s["PrivateTmp"] == ["true"] and s["NoNewPrivileges"] == ["true"]
    assert s["ProtectSystem"] == ["strict"] and s["UMask"] == ["0077"]
    assert s["CapabilityBoundingSet"] == s["AmbientCapabilities"] == ["CAP_SYS_NICE"]
    assert "PrivateDevices" not in s and "MemoryDenyWriteExecute" not in s   # /dev/shm, Numba


def test_systemd_waits_for_serving_and_watches_the_loop():
    """Type=notify: READY=1 comes after "serving" (engine.sdnotify, tested against a real
    socket in tests/engine/test_startup.py); the watchdog and a start timeout that a cold
    kernel cache fits in."""
    s = settings()
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]
    assert int(s["WatchdogSec"][0]) >= 10 and int(s["TimeoutStartSec"][0]) >= 300
    assert "/tmp" not in " ".join(v for k, vs in s.items() for v in vs if k != "PrivateTmp")


def test_deploy_doc_shows_the_shipped_unit():
    assert UNIT.read_text() in (REPO / "docs" / "DEPLOY.md").read_text()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_accepts_it(tmp_path):
    text = UNIT.read_text()
    start = next(l for l in text.splitlines() if l.startswith("ExecStart="))
    unit = tmp_path / "risk-engine.service"        # the binaries are not installed here
    unit.write_text(text.replace(start, "ExecStart=/bin/true"))
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "risk-engine.service" not in r.stderr, r.stderr
