"""The operator's commands tell the truth (issue 25): `reload` waits for the outcome and exits
non-zero on a refusal, and the reloaded rules come back after a restart; `status` follows
reloads and standby changes, and `pin` / scripts/pin_workers.sh work from any shell;
`stats` prints a summary, and no command prints a traceback into a closed pipe.

One engine for the module (reloads change its generation; the restart test is last and
restarts it)."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
import yaml

from bench.engine_proc import REPO, EngineProcess
from engine.admin import request
from shm.runtime.config import load_config
from shm.runtime.rundir import run_dir_for
from tests.engine.test_reload import decide, wait_label

SCHEMA = load_config().schema


def ruleset(path, version, when="amount >= 0", action="review"):
    path.write_text(yaml.safe_dump({"ruleset": "live", "version": version,
                                    "rules": [{"id": "r1", "when": when, "action": action, "score": 5}]}))
    return str(path)


def cli(*args, timeout_s=400):
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], capture_output=True, text=True,
                          timeout=timeout_s, cwd=REPO)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("commands")
    (tmp / "rules").mkdir()
    v1 = ruleset(tmp / "rules" / "v1.yaml", 1)
    eng = EngineProcess(tmp, workers=1, overrides={"rules": {"files": [v1]},
                                                    "ingress": {"default_deadline_ms": 10_000}})
    with eng:
        yield eng


def status_file(eng) -> dict:
    out = cli("status", "--instance", eng.instance, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)[0]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def test_stats_prints_a_summary_and_raw_json(engine):
    decide(engine, SCHEMA, 20)
    out = cli("stats", "--instance", engine.instance, "--interval-s", "0.2", "--timeout-ms", "120000")
    assert out.returncode == 0, out.stderr
    assert "p99.9" in out.stdout and "request (json)" in out.stdout and "kernel (per event)" in out.stdout
    assert re.search(r"top rules by hits: r1 \d+", out.stdout), out.stdout
    assert "errors by code: none" in out.stdout
    assert "_bucket" not in out.stdout                       # no bucket dump by default
    raw = cli("stats", "--instance", engine.instance, "--json", "--timeout-ms", "120000")
    assert raw.returncode == 0, raw.stderr
    assert any(r["sample"].endswith("_bucket") for r in json.loads(raw.stdout)["risk_eval_duration_seconds"])


@pytest.mark.parametrize("args", [("stats", "--timeout-ms", "120000"),
                                  ("stats", "--json", "--timeout-ms", "120000"), ("status",)])
def test_a_closed_stdout_exits_quietly(engine, args):
    """`risk-engine stats | head`: the reader is gone before the command writes. The pipe's
    read end is closed before the child starts writing, so every run sees EPIPE."""
    r, w = os.pipe()
    os.close(r)
    try:
        p = subprocess.run([sys.executable, "-m", "engine.cli", *args, "--instance", engine.instance],
                           stdout=w, stderr=subprocess.PIPE, text=True, timeout=120, cwd=REPO)
    finally:
        os.close(w)
    assert "Traceback" not in p.stderr and "BrokenPipe" not in p.stderr, p.stderr
    assert p.returncode == 141


def test_reload_waits_and_exits_non_zero_on_refusal(engine, tmp_path):
    rules_dir = engine.tmp / "rules"
    missing = cli("reload", "--instance", engine.instance, "--rules", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 1, (missing.stdout, missing.stderr)
    assert "FILE_NOT_FOUND" in missing.stderr and "nope.yaml" in missing.stderr
    bad = ruleset(rules_dir / "bad.yaml", 3, when="amount.__class__ > 0")
    r = cli("reload", "--instance", engine.instance, "--rules", bad)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "RULESET_REFUSED" in r.stderr and re.search(r"bad\.yaml:\d+:\d+", r.stderr), r.stderr
    assert all(d.ruleset == "live@1" for d in decide(engine, SCHEMA))
    v2 = ruleset(rules_dir / "v2.yaml", 2, action="block")
    r = cli("reload", "--instance", engine.instance, "--rules", v2)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert re.search(r"generation \d+ serves live@2 from .*v2\.yaml", r.stdout), r.stdout
    assert "replaced the whole set" in r.stdout and "v1.yaml" in r.stdout
    assert "a restart serves it again" in r.stdout
    assert all(d.ruleset == "live@2" and d.action == "block" for d in decide(engine, SCHEMA))
    help_text = cli("reload", "--help").stdout
    assert "replaces the WHOLE rule set" in " ".join(help_text.split())


def test_reload_returns_once_the_worker_serves_the_new_generation(engine):
    """The worker is stopped (SIGSTOP) until a second after the new generation is published:
    `risk-engine reload` must not return before the worker serves it, so a request sent as
    soon as it returns is decided by the new rules, not by the old ones still loaded."""
    v6 = ruleset(engine.tmp / "rules" / "v6.yaml", 6, action="block")
    st = status_file(engine)
    worker = next(p["pid"] for p in st["processes"] if p["role"] == "worker 0")
    published = run_dir_for(engine.instance) / f"gen-{st['generation'] + 1}.json"

    def resume_after_publication():
        t_end = time.monotonic() + 300
        while not published.exists() and time.monotonic() < t_end:
            time.sleep(0.05)
        time.sleep(1.0)
        os.kill(worker, signal.SIGCONT)

    os.kill(worker, signal.SIGSTOP)
    resume = threading.Thread(target=resume_after_publication, daemon=True)
    resume.start()
    try:
        r = cli("reload", "--instance", engine.instance, "--rules", v6)
        ds = decide(engine, SCHEMA)
    finally:
        resume.join(310)
        os.kill(worker, signal.SIGCONT)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert [(d.ruleset, d.action) for d in ds] == [("live@6", "block")] * len(ds)


def test_status_follows_reloads_and_the_standby(engine):
    """After a reload the generation is the serving one and no listed pid is dead (a reload
    retires the standby; a new one starts 2 s later and is listed once it runs)."""
    admin = request(engine.admin_bind, {"cmd": "status"}, 60_000)
    old_standby = next((p["pid"] for p in admin["processes"] if p["role"] == "standby"), None)
    v4 = ruleset(engine.tmp / "rules" / "v4.yaml", 4)
    r = request(engine.admin_bind, {"cmd": "reload", "files": [v4]}, 400_000)
    assert r["ok"], r
    t_end = time.monotonic() + 120
    while time.monotonic() < t_end:
        st = status_file(engine)
        standby = next((p["pid"] for p in st["processes"] if p["role"] == "standby"), None)
        if st["generation"] == r["generation"] and standby not in (None, old_standby):
            break
        time.sleep(0.5)
    assert st["generation"] == r["generation"] and st["ruleset"] == "live@4", st
    assert standby not in (None, old_standby), st
    assert all(alive(p["pid"]) for p in st["processes"]), st
    human = cli("status", "--instance", engine.instance).stdout
    assert f"generation {r['generation']} (live@4)" in human, human


def test_pin_script_works_from_any_shell(engine):
    """Without the venv on PATH, from another directory, with a login-less environment."""
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/")}
    for k in ("RISK_ENGINE_RUN_ROOT", "XDG_RUNTIME_DIR"):
        if k in os.environ:
            env[k] = os.environ[k]
    script = str(REPO / "scripts" / "pin_workers.sh")
    p = subprocess.run([script, "--instance", engine.instance, "--dry-run", "1"], capture_output=True,
                       text=True, env=env, cwd="/", timeout=120)
    assert p.returncode == 0, p.stderr
    assert re.search(r"would pin worker 0 \(pid \d+\) to cpu 1", p.stdout), p.stdout
    h = subprocess.run([script, "--help"], capture_output=True, text=True, env=env, cwd="/", timeout=120)
    assert h.returncode == 0 and "usage: risk-engine pin" in h.stdout and "set -euo" not in h.stdout


def test_reloaded_rules_survive_a_restart(engine, tmp_path):
    """A reload from a directory outside the configured one (the CLI is not confined), then
    restarts: the reloaded ruleset serves again; once its file is edited (not reloaded) and
    then removed, the recorded copy serves, and the log says so."""
    elsewhere = tmp_path / "candidate"
    elsewhere.mkdir()
    v5 = ruleset(elsewhere / "v5.yaml", 5, action="block")
    r = cli("reload", "--instance", engine.instance, "--rules", v5)
    assert r.returncode == 0, (r.stdout, r.stderr)
    engine.stop()
    engine.start()
    assert wait_label(engine, SCHEMA, "live@5", timeout_s=60)
    ruleset(elsewhere / "v5.yaml", 6, action="allow")          # edited, never reloaded
    engine.stop()
    engine.start()
    d = decide(engine, SCHEMA)
    assert all(x.ruleset == "live@5" and x.action == "block" for x in d), d
    assert "changed since it was reloaded; serving its recorded copy" in engine.output()
    os.unlink(v5)
    engine.stop()
    engine.start()
    assert all(x.ruleset == "live@5" for x in decide(engine, SCHEMA))
    assert "vanished since it was reloaded" in engine.output()
    rec = engine.state_dir / "journal" / "rules"
    assert oct(rec.stat().st_mode & 0o777) == "0o700"
    assert oct((rec / "active.json").stat().st_mode & 0o777) == "0o600"
