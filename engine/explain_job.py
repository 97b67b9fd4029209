"""`risk-engine admin explain seq=N [writer=W] | request=CLIENT_ID:REQUEST_ID`: explain, off the
supervisor's loop.

The replay runs in a child process (``python -m engine.explain_job``) with a deadline, like a
reload (engine.reload): it reads the journal and the snapshots from disk, rebuilds its own
process-local tables and never touches the engine's shared memory, so the workers are not
paused. The admin server polls the job from its loop and answers when it is done.
The child explains with the rule files of the generation that decided the event when that
generation belongs to this run of the engine (the event arrived after the supervisor
started; gen-N.json in the run directory), as the bytes that generation compiled
(rules-<sha256>.yaml there, never the files as edited since), else with the config's rule
files (a note says so).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from engine.explain import Explainer
from engine.explain_replay import ExplainError, find_event, parse_request_key, request_events
from engine.explain_report import RequestExplanation
from engine.recovery_state import _dirs
from shm.runtime import procname, rundir

EXPLAIN_TIMEOUT_S = 300              # a cold compile of the ruleset on a busy 2-core machine
MAX_CHILD_OUTPUT_BYTES = 16 << 20
MAX_JOBS = 2                         # explains in flight; more are refused (EXPLAIN_BUSY)


class ExplainJob:
    """One explain in flight; ``poll()`` returns None while it runs, then the reply dict."""

    def __init__(self, run_dir, seq: int | None, writer: int | None, started_ns: int,
                 timeout_s: float = EXPLAIN_TIMEOUT_S, request: tuple[int, int] | None = None):
        self.deadline = time.monotonic() + timeout_s
        self.timeout_s = timeout_s
        self.out = tempfile.TemporaryFile()
        self.err = tempfile.TemporaryFile()
        argv = [sys.executable, "-m", "engine.explain_job", "--run-dir", str(run_dir),
                "--started-ns", str(started_ns)]
        argv += ["--request", f"{request[0]}:{request[1]}"] if request else ["--seq", str(seq)]
        if writer is not None:
            argv += ["--writer", str(writer)]
        self.child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.out, stderr=self.err)

    def poll(self) -> dict | None:
        if self.child.poll() is None:
            if time.monotonic() < self.deadline:
                return None
            self.kill()
            return _error("EXPLAIN_TIMEOUT", f"explain took longer than {self.timeout_s:.0f} s; stopped")
        self.out.seek(0)
        raw = self.out.read(MAX_CHILD_OUTPUT_BYTES + 1)
        self.err.seek(0)
        err = self.err.read(4096).decode(errors="replace").strip()
        self.close()
        if len(raw) > MAX_CHILD_OUTPUT_BYTES:
            return _error("EXPLAIN_FAILED", f"explanation over {MAX_CHILD_OUTPUT_BYTES} bytes; use "
                                            f"`risk-engine explain` on the journal directory")
        try:
            res = json.loads(raw.decode())
        except ValueError:
            return _error("EXPLAIN_FAILED", f"explain process exited with code "
                                            f"{self.child.returncode}: {err[-500:] or 'no output'}")
        return res if isinstance(res, dict) else _error("EXPLAIN_FAILED", "no result")

    def kill(self) -> None:
        if self.child.poll() is None:
            self.child.kill()
            self.child.wait()
        self.close()

    def close(self) -> None:
        for f in (self.out, self.err):
            if not f.closed:
                f.close()


def _error(code: str, message: str) -> dict:
    return {"ok": False, "error": {"code": code, "message": message}}


def _explain_one(cfg, jdir: str, args, explainers: dict, writer: int, rec):
    """Explain one event with the rule files of the generation that decided it when this run
    recorded them (one Explainer, compiled once, per set of files)."""
    gen, files, texts, note = int(rec["generation"]), None, None, None
    if gen > 0 and int(rec["arrival_ns"]) >= args.started_ns:
        try:                            # the bytes the generation compiled, not the files now
            spec = rundir.read_generation(args.run_dir, gen)
            files, shas = spec["files"], spec["sha256"]
            texts = tuple(rundir.read_rules_copy(args.run_dir, h).decode() for h in shas)
        except (OSError, ValueError, KeyError, TypeError) as e:
            files, texts = None, None
            note = f"generation {gen}: its rule files are not recorded in the run directory ({e})"
    elif gen > 0:
        note = (f"the event arrived before this engine started: its generation {gen} was "
                f"another run's; explained with the config's rule files")
    k = (tuple(files), texts) if files else None
    if k not in explainers:
        explainers[k] = Explainer(cfg, jdir, rules=files, rule_texts=texts)
    ex = explainers[k].explain(int(rec["seq"]), writer)
    if note:
        ex.notes.append(note)
    return ex


def main(argv=None) -> int:
    """The child: print {"ok": true, "explanation": ...} or an error reply as one JSON line."""
    ap = argparse.ArgumentParser(prog="python -m engine.explain_job")
    ap.add_argument("--run-dir", required=True)
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--seq", type=int)
    which.add_argument("--request", help="CLIENT_ID:REQUEST_ID")
    ap.add_argument("--writer", type=int)
    ap.add_argument("--started-ns", type=int, required=True)
    args = ap.parse_args(argv)
    procname.become_child("explain")
    os.nice(10)                        # a replay must not take CPU from the workers
    try:
        cfg = rundir.read_config(args.run_dir)
        jdir = _dirs(cfg)[0]
        explainers: dict = {}
        if args.request is None:
            out = {"ok": True, "explanation": _explain_one(
                cfg, jdir, args, explainers, *find_event(jdir, cfg.schema, args.seq, args.writer)).to_dict()}
        else:
            key = parse_request_key(args.request)
            arrival, events = request_events(jdir, cfg.schema, *key,
                                             cfg.durability.skip_corrupt_journal_records)
            exs = [_explain_one(cfg, jdir, args, explainers, *find_event(jdir, cfg.schema, s, w))
                   for w, s in events]
            out = {"ok": True, "request": RequestExplanation(*key, arrival, exs).to_dict()}
    except ExplainError as e:
        out = _error(e.code, e.message)
    except Exception as e:             # every failure is the reply's text
        out = _error("EXPLAIN_FAILED", f"{type(e).__name__}: {e}"[:2000])
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
