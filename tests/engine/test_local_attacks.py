"""Local attacks on a real engine (issue 19, defects 1 and 2): another user (`nobody`) plants
code in the run directory or state in the journal directory; the admin log is tampered with
or torn. Every outcome is decided by what the engine wrote or refused, never by timing.

The attacker runs as uid 65534 in a child process, so these tests need root."""
from __future__ import annotations

import os
import pickle
import signal
import stat
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import pytest

from engine.admin import request
from bench.engine_proc import EngineProcess

NOBODY = 65534
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")


def as_nobody(code: str, **args) -> None:
    """Run ``code`` (Python, with ``args`` as globals) in a forked child as uid/gid 65534
    (forked, not exec'd: nobody may not be allowed to run this interpreter)."""
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            exec(code, dict(args))
            status = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(status)
    _, st = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(st) == 0, "the attacker's step failed (see stderr)"


@pytest.fixture
def shared_base():
    """A directory every user may create entries in, sticky like /var/tmp and /tmp."""
    d = Path(tempfile.mkdtemp(prefix="re-attack-"))
    os.chmod(d, 0o1777)
    yield d
    subprocess.run(["rm", "-rf", str(d)], check=False)


def finish(eng: EngineProcess) -> None:
    """Stop an engine a test started by hand; remove its shared memory and run directory;
    close its log."""
    eng.close(timeout_s=30)


def start_refused(eng: EngineProcess) -> str | None:
    """Start ``eng`` expecting a refusal: its error, or None after stopping the engine that
    started anyway."""
    try:
        eng.start()
    except RuntimeError as e:
        eng.log.close()
        return str(e)
    finish(eng)
    return None


class RunsId:
    """Unpickling this runs a shell command as the process that loads it."""
    def __init__(self, cmd: str):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


def test_planted_config_in_a_world_writable_run_root_never_runs(tmp_path, shared_base, monkeypatch):
    """As nobody: pre-create the run root (and the instance's run dir) world-writable, then swap
    the children's config for a pickle that runs `id`. The engine (root) must refuse the run
    root, and the planted code must never run."""
    eng = EngineProcess(tmp_path, workers=1, metrics=False)
    root, marker = shared_base / "run", tmp_path / "pwned"       # nobody cannot write tmp_path
    as_nobody("import os\nfor d in (root, run_dir): os.mkdir(d); os.chmod(d, 0o777)",
              root=str(root), run_dir=str(root / eng.instance))
    monkeypatch.setenv("RISK_ENGINE_RUN_ROOT", str(root))
    evil = pickle.dumps(RunsId(f"id > {marker}"))
    refused = None
    try:
        eng.start()
    except RuntimeError as e:
        refused = str(e)
        eng.log.close()
    else:
        try:     # the engine took the directory: mount the attack as reported
            as_nobody("import os\n"
                      "for name in os.listdir(run_dir):\n"
                      "    if name.startswith('config'):\n"
                      "        p = os.path.join(run_dir, name)\n"
                      "        open(p + '.evil', 'wb').write(evil); os.replace(p + '.evil', p)\n",
                      run_dir=str(root / eng.instance), evil=evil)
            ingress = [p for p in eng.children() if b"ingress" in Path(f"/proc/{p}/cmdline").read_bytes()]
            os.kill(ingress[0], signal.SIGKILL)          # every child start reads the config
            t_end = time.monotonic() + 60
            while time.monotonic() < t_end and not marker.exists():
                time.sleep(0.1)
        finally:
            finish(eng)
    assert not marker.exists(), f"the planted pickle ran as the engine's user: {marker.read_text()}"
    assert refused is not None, "the engine started in a run root another user can write"
    assert f"{root}" in refused and "uid=65534 (nobody)" in refused and "0777" in refused, refused


def test_world_writable_journal_dir_with_planted_admin_log_is_refused(tmp_path, shared_base):
    """As nobody: pre-create <base>/risk-engine/<instance>/journal world-writable (the default
    layout under /var/tmp); append a list-replace that empties blocked_ips to admin.log. The
    engine must refuse the directory, so the planted change is never replayed."""
    eng = EngineProcess(tmp_path, workers=1, metrics=False, overrides={
        "journal": {"dir": str(shared_base / "risk-engine/{instance}/journal")},
        "snapshot": {"dir": str(shared_base / "risk-engine/{instance}/snapshots")}})
    jdir = shared_base / "risk-engine" / eng.instance / "journal"
    as_nobody("import os\nos.makedirs(jdir)\n"
              "for p in (jdir, os.path.dirname(jdir), os.path.dirname(os.path.dirname(jdir))):\n"
              "    os.chmod(p, 0o777)", jdir=str(jdir))
    # time_ns: later than any snapshot, so the old reader replayed it
    plant = '{"cmd":"list-replace","name":"blocked_ips","values":[],"time_ns":9000000000000000000}\n'
    admin = eng.admin_bind
    refused, blocked_after = None, None
    try:
        eng.start()
    except RuntimeError as e:
        refused = str(e)
        eng.log.close()
    else:          # it took the directory: plant the change, restart, see what recovery did
        try:
            assert request(admin, {"cmd": "list-show", "name": "blocked_ips"}, 30_000)["count"] > 0
            finish(eng)
            as_nobody("open(p, 'a').write(line)", p=str(jdir / "admin.log"), line=plant)
            eng.start()
            blocked_after = request(admin, {"cmd": "list-show", "name": "blocked_ips"}, 30_000)["count"]
        finally:
            finish(eng)
    assert blocked_after != 0, "a line planted by another user emptied the blocklist"
    assert refused is not None, "the engine used a journal directory another user can write"
    assert "journal.dir" in refused and "uid=65534 (nobody)" in refused, refused


def modes(root: Path) -> dict[str, tuple[bool, int]]:
    """Path -> (is a directory, permission bits) of ``root`` and everything under it."""
    out = {}
    for p in [root, *root.rglob("*")]:
        st = p.lstat()
        out[str(p)] = (stat.S_ISDIR(st.st_mode), stat.S_IMODE(st.st_mode))
    return out


def admin_changes(admin: str) -> None:
    ok = [request(admin, r, 30_000) for r in (
        {"cmd": "list-add", "name": "blocked_ips", "values": ["10.1.1.1"]},
        {"cmd": "list-add", "name": "blocked_ips", "values": ["10.2.2.2"]},
        {"cmd": "set-state", "name": "account_state", "key": 42, "state": "HALTED"})]
    assert all(r["ok"] for r in ok), ok


def test_files_the_engine_creates_are_private(tmp_path, monkeypatch):
    """After a real start, traffic, admin changes and a snapshot: every directory the engine
    made (run root, run dir, journal, snapshots) is 0700 and every file in them 0600; the
    admin socket is in the run directory, and `nobody` cannot connect to it."""
    import numpy as np
    from shm.runtime.config import load_config
    from ingress.client import Client
    from bench.events import random_events
    monkeypatch.setenv("RISK_ENGINE_RUN_ROOT", str(tmp_path / "run"))
    eng = EngineProcess(tmp_path, workers=1, metrics=False)
    admin = eng.admin_bind
    with eng:
        schema = load_config().schema
        with Client(eng.endpoint, schema, timeout_ms=30_000, retries=0) as c:
            c.evaluate_batch(random_events(np.random.default_rng(3), schema, 20))
        admin_changes(admin)
        assert request(admin, {"cmd": "snapshot"}, 30_000)["ok"]
        seen = {**modes(tmp_path / "run"), **modes(tmp_path / eng.instance)}
        sock_path = admin.removeprefix("ipc://")
        assert Path(sock_path).parent == tmp_path / "run" / eng.instance, admin
        as_nobody("import socket\n"
                  "s = socket.socket(socket.AF_UNIX)\n"
                  "try:\n"
                  "    s.connect(path)\n"
                  "    raise SystemExit('nobody connected to the admin socket')\n"
                  "except PermissionError:\n"
                  "    pass\n", path=sock_path)
    wrong = {p: oct(m) for p, (is_dir, m) in seen.items() if m != (0o700 if is_dir else 0o600)}
    assert not wrong, wrong
    names = {Path(p).name for p in seen}
    assert {"config.json", "plan.json", "status.json", "supervisor.pid", "admin.sock", "admin.log",
            "w000.lock"} <= names and not any(n.endswith(".pickle") for n in names), names
    assert any(n.endswith(".rsnap") for n in names) and any(n.endswith(".rjl") for n in names), names


def test_admin_log_damage_is_refused_and_a_torn_tail_dropped(tmp_path, monkeypatch):
    """admin.log with one bit flipped in its middle record: the next start is refused, naming
    the file, the line and the seq. With a record torn at its end instead (a write that never
    finished, so never acknowledged): the start drops it, says so, and appends after it."""
    monkeypatch.setenv("RISK_ENGINE_RUN_ROOT", str(tmp_path / "run"))
    eng = EngineProcess(tmp_path, workers=1, metrics=False)
    admin = eng.admin_bind
    log = Path(eng.raw["journal"]["dir"]) / "admin.log"
    with eng:
        admin_changes(admin)
    good = log.read_bytes()
    lines = good.split(b"\n")
    assert len(lines) == 4 and lines[-1] == b"", good          # 3 records
    bad = bytearray(good)
    bad[len(lines[0]) + 1 + lines[1].index(b"]") - 1] ^= 0x01  # last digit of record 2's value
    log.write_bytes(bytes(bad))
    msg = start_refused(eng)
    assert msg is not None, "the engine started from an admin.log with a damaged record"
    assert str(log) in msg and "line 2" in msg and "seq=2" in msg, msg

    log.write_bytes(good + lines[0][:25])                     # a record whose write never finished
    with eng:
        out = eng.output()
        assert "dropped an unfinished last admin record" in out and str(log) in out, out
        shown = request(admin, {"cmd": "list-show", "name": "blocked_ips"}, 30_000)
        assert {"10.1.1.1", "10.2.2.2"} <= set(shown["values"]), shown       # an ipv4 list: dotted
        assert request(admin, {"cmd": "halt"}, 30_000)["ok"]     # appended after the cut
        assert request(admin, {"cmd": "resume"}, 30_000)["ok"]
    from engine.admin_log import read
    records, torn, _ = read(str(log))
    assert torn is None and [r["seq"] for r in records] == [1, 2, 3, 4, 5]
    assert [r["cmd"] for r in records][-2:] == ["halt", "resume"]
