"""Fuzz target for the admin plane of a real engine (random and malformed admin messages).

    python -m tests.engine.fuzz_admin --iterations 100000 [--seed S]

Starts a real engine (bench/engine_proc.py, with a list and an account-state table)
and sends each input as one message from a DEALER socket: random frame counts, raw bytes,
deep nesting, mutated and truncated JSON, duplicate keys, and JSON objects naming every
command with arguments of every wrong type and size. Every input must get exactly one reply
within ``--reply-timeout-ms`` that parses as ``{"ok": true, ...}`` or an error with a known
code; ``INTERNAL`` is a failure (an exception the validation missed). At the end the engine
must still answer ``status`` and decide a request, stop cleanly, start again on the same
journal (its admin.log replayed) and serve.

A valid ``reload`` or ``snapshot`` is never generated (each gets an unknown argument): one
costs a compile or a copy of every feature table, which would make the run measure those.
pytest runs 3,000 inputs (test_admin_hardening.py); ``make fuzz`` 100,000.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

CODES = {"BAD_REQUEST", "BAD_ARGUMENT", "UNKNOWN_COMMAND", "UNKNOWN_LIST", "UNKNOWN_STATE",
         "BAD_LIST", "LIST_FULL", "FILE_NOT_ALLOWED", "NO_FEATURES", "STATE_FULL",
         "SNAPSHOT_FAILED", "RULESET_REFUSED", "RELOAD_BUSY", "FILE_NOT_FOUND", "BAD_ADDRESS"}
COMMANDS = {"status": [], "stats": [], "features": [], "halt": [], "resume": [],
            "snapshot": [], "reload": ["files", "previous"], "list-show": ["name"],
            "list-add": ["name", "values", "file"], "list-remove": ["name", "values", "file"],
            "list-replace": ["name", "values", "file"], "set-state": ["name", "key", "state"],
            "autoblock-remove": ["values"]}
NO_VALID = {"snapshot", "reload"}
TRANSPORT_LIMIT = (1 << 20) - 64          # the admin socket's ZMQ_MAXMSGSIZE, less the frames
VALUES = [None, True, False, 0, 1, -1, 42, 1.5, -0.0, 1e308, 2 ** 63, 2 ** 64 - 1, 2 ** 64,
          -2 ** 63 - 1, 10 ** 30, "", "x", "x" * 300, "é" * 20, "\u0000", "\ud800", "HALTED",
          "ACTIVE", "SLEEPY", "blocked_ips", "account_state", "nope", "1.2.3.4", "300.1.1.1",
          "0xff", '"abc"', "/etc/shadow", "/dev/zero", "/proc/self/fd/0", "../../../etc/passwd",
          [], [1], ["1.2.3.4"], ["1.2.3.4\n5.6.7.8"], [[1]], [None], [True], [1.5], {"a": 1},
          {}, ["HALTED"], [2 ** 64], ["x" * 300]]


class AdminFuzzer:
    """Deterministic generator of admin messages (lists of frames, without the DEALER's
    delimiter unless ``with_delimiter`` is False)."""

    def __init__(self, seed: int, list_file: str):
        self.rng = random.Random(seed)
        self.list_file = list_file

    def value(self, key: str):
        r = self.rng.random()
        if r < 0.15:                     # a plausible valid value
            return {"name": self.rng.choice(["blocked_ips", "account_state"]),
                    "key": self.rng.choice([0, 7, 2 ** 64 - 1, 2 ** 63]),
                    "state": self.rng.choice(["ACTIVE", "REDUCING", "HALTED"]),
                    "values": ["10.0.0.%d" % self.rng.randrange(256) for _ in range(self.rng.randrange(4))],
                    "file": self.list_file, "files": ["/etc/shadow"], "previous": True}.get(key)
        if r < 0.2:                      # big
            n = self.rng.choice([1000, 30_000, 100_000])
            return self.rng.choice([["1.2.3.4"] * n, list(range(n)), "y" * (n * 5), [[0]] * n])
        return self.rng.choice(VALUES)

    def request(self) -> dict:
        cmd = self.rng.choice(list(COMMANDS) + ["", "bogus", "list-", "x" * 200])
        req = {"cmd": cmd}
        for key in COMMANDS.get(cmd, []):
            if self.rng.random() < 0.8:
                req[key] = self.value(key)
        if cmd in NO_VALID or self.rng.random() < 0.1:
            req[self.rng.choice(["junk", "cmd2", "x" * 70, "values"])] = self.value("junk")
        if self.rng.random() < 0.05:
            req["cmd"] = self.rng.choice(VALUES)
        return req

    def body(self) -> bytes:
        r = self.rng.random()
        if r < 0.55:
            return json.dumps(self.request()).encode("utf-8", "surrogatepass")
        if r < 0.65:
            return bytes(self.rng.randrange(256) for _ in range(self.rng.randrange(64)))
        if r < 0.72:
            n = self.rng.choice([5, 50, 1000, 100_000, 500_000])
            opener = self.rng.choice([b"[", b'{"a":'])
            return opener * n if self.rng.random() < 0.5 else b'{"cmd":"status","x":' + b"[" * n + b"]" * n + b"}"
        if r < 0.85:                     # a mutated or truncated valid request
            b = bytearray(json.dumps(self.request()).encode("utf-8", "surrogatepass"))
            for _ in range(self.rng.randrange(1, 4)):
                if b:
                    b[self.rng.randrange(len(b))] = self.rng.randrange(256)
            return bytes(b[:self.rng.randrange(len(b) + 1)])
        if r < 0.9:
            return self.rng.choice([b'{"cmd":"status","cmd":"halt"}', b'{"cmd":"halt","x":NaN}',
                                    b'{"cmd":"set-state","key":Infinity}', b"null", b"1", b'"cmd"',
                                    b"[]", b"{}", '{"cmd":"status"}'.encode("utf-16"),
                                    b'{"cmd":"set-state","name":"account_state","key":' + b"9" * 5000 + b',"state":"HALTED"}'])
        return json.dumps({"cmd": "set-state", "name": self.rng.choice(VALUES), "key": self.rng.choice(VALUES),
                           "state": self.rng.choice(VALUES)}).encode("utf-8", "surrogatepass")

    def message(self) -> list[bytes]:
        """Frames as a DEALER sends them (the empty delimiter first, usually)."""
        r = self.rng.random()
        if r < 0.08:                     # several body frames, or none
            return [b""] + [self.body() for _ in range(self.rng.choice([0, 2, 3, 10]))]
        if r < 0.12:                     # no delimiter: the body is the first frame
            return [self.body() for _ in range(self.rng.choice([1, 2]))]
        if r < 0.14:
            return [b"", b"", self.body()]
        return [b"", self.body()]


def check_reply(frames: list[bytes]) -> str:
    rep = json.loads(frames[-1])
    assert isinstance(rep, dict) and isinstance(rep.get("ok"), bool), rep
    if rep["ok"]:
        return "OK"
    code = rep["error"]["code"]
    assert code in CODES, f"reply code {code}: {rep['error'].get('message')}"
    assert len(rep["error"]["message"]) <= 2000
    return code


def run_live(bind: str, iterations: int, seed: int, list_file: str,
             reply_timeout_ms: int = 30_000) -> Counter:
    """Send ``iterations`` fuzz messages to the admin socket at ``bind``; one good reply each."""
    import zmq
    fz = AdminFuzzer(seed, list_file)
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(bind)
    out: Counter = Counter()
    try:
        for i in range(iterations):
            frames = fz.message()
            if sum(map(len, frames)) > TRANSPORT_LIMIT:
                out["SKIPPED_OVER_TRANSPORT_LIMIT"] += 1
                continue
            sock.send_multipart(frames)
            if not sock.poll(reply_timeout_ms):
                raise AssertionError(f"input {i} (seed {seed}) got no reply within {reply_timeout_ms} ms: "
                                     f"{[f[:200] for f in frames]}")
            reply = sock.recv_multipart()
            try:
                out[check_reply(reply)] += 1
            except Exception as e:
                raise AssertionError(f"input {i} (seed {seed}) {[f[:200] for f in frames]}: {e!r}") from e
        sock.send_multipart([b"", json.dumps({"cmd": "resume"}).encode()])   # leave it serving
        assert sock.poll(reply_timeout_ms) and json.loads(sock.recv_multipart()[-1])["ok"]
    finally:
        sock.close(0)
    return out


def engine_overrides(list_file: str) -> dict:
    return {"lists": {"blocked_ips": {"type": "u32", "file": list_file, "capacity": 64}},
            "state": {"account_state": {"key": "account_id", "capacity": 1024}},
            "ingress": {"default_deadline_ms": 10_000}}


def still_serves(eng) -> None:
    """``status`` answered and a request decided."""
    import numpy as np
    from engine.admin import request
    from shm.runtime.config import load_config
    from ingress.client import Client
    from bench.events import random_events
    st = request(eng.admin_bind, {"cmd": "status"}, 30_000)
    assert st["ok"] and st["generation"] >= 1, st
    schema = load_config().schema
    with Client(eng.endpoint, schema, timeout_ms=30_000, retries=0) as c:
        d = c.evaluate_batch(random_events(np.random.default_rng(3), schema, 3))
    assert len(d) == 3 and all(x.action in ("allow", "review", "block") for x in d), d


def fuzz_engine(tmp: Path, iterations: int, seed: int) -> Counter:
    """The whole run: engine up, fuzz, still serving, stop, restart on the same journal,
    serving again. Returns the reply codes."""
    from bench.engine_proc import REPO, EngineProcess
    list_file = str(REPO / "rules/examples/blocked_ips.txt")
    eng = EngineProcess(tmp, workers=1, metrics=False, overrides=engine_overrides(list_file))
    with eng:
        out = run_live(eng.admin_bind, iterations, seed, list_file)
        still_serves(eng)
    again = EngineProcess(tmp, workers=1, metrics=False, overrides={
        **engine_overrides(list_file), "journal": {"dir": eng.raw["journal"]["dir"]},
        "snapshot": {"dir": eng.raw["snapshot"]["dir"]}})
    with again:
        still_serves(again)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iterations", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=int(time.time()))
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fuzz-admin-") as tmp:
        out = fuzz_engine(Path(tmp), a.iterations, a.seed)
    dt = time.perf_counter() - t0
    print(f"fuzz_admin: {a.iterations} inputs, seed {a.seed}, {dt:.1f} s, 0 failures; the engine "
          f"kept serving and restarted on its journal")
    for name, n in out.most_common():
        print(f"  {name:<30} {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
