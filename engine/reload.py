"""A rules reload, off the supervisor's loop.

Reading, parsing and compiling rule files runs in a child process (``python -m
engine.reload``) with a deadline: a hostile or huge file can make it slow, make it fail or
kill it, never the supervisor. The child compiles the kernel into the kernel cache and prints
the generation spec. Then a thread of the supervisor loads that ruleset from the cache (the
supervisor keeps it for feature rebuilds); Python switches threads every few ms, so the
loop keeps reaping and restarting workers and taking snapshots meanwhile. The supervisor
publishes the generation only when both succeeded and the kernels match; anything else is a
refusal and the serving generation is untouched.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time

from rules import compile_ruleset
from rules.features import feature_set_for
from shm.runtime import procname, rundir

RELOAD_TIMEOUT_S = 300          # a cold compile of a big ruleset on a busy 2-core machine
MAX_CHILD_OUTPUT_BYTES = 1 << 20


def ruleset_spec(cfg, files: tuple[str, ...], features=None) -> tuple[dict, object]:
    """Compile (validates, fills the kernel cache) -> (generation spec, ruleset). Raises
    rules.RulesetError on a bad ruleset."""
    rs = compile_ruleset(list(files), cfg.schema, thresholds=cfg.rules.thresholds,
                         on_error=cfg.rules.on_error, features=features)
    spec = {"files": list(files), "thresholds": [list(t) for t in cfg.rules.thresholds],
            "on_error": cfg.rules.on_error, "label": rs.label, "rule_ids": list(rs.rule_ids),
            "modes": list(rs.modes), "source_hash": rs.source_hash}
    return spec, rs


class Rulesets:
    """The ruleset generations the supervisor published, the one serving, and the reload
    that may replace it (one at a time). Generation g's spec is gen-g.json in the run
    directory; supervisor.generation in the control block tells the workers which serves.
    ``before_publish(g)``: generation g's counter row is about to be reused (the collector
    folds it); ``after_reload()``: a reload published a new generation."""

    def __init__(self, cfg, run_dir, block, features, log, before_publish, after_reload):
        self.cfg = cfg
        self.run_dir = run_dir
        self.block = block
        self.features = features            # the feature tables a reload compiles against
        self.log = log
        self.before_publish = before_publish
        self.after_reload = after_reload
        self.generation = 0                 # the one serving (0: none yet)
        self.specs: dict[int, dict] = {}    # generation -> its spec (ruleset_spec)
        self.ruleset = None                 # the serving generation's, for feature rebuilds
        self.job: ReloadJob | None = None   # the reload in flight

    def publish(self, spec: dict, rs) -> None:
        g = self.generation + 1
        rundir.write_generation(self.run_dir, g, spec)
        self.specs[g] = spec
        self.generation = g
        self.ruleset = rs
        self.block.view("supervisor.generation")[0] = g     # workers poll it between batches

    def request_from_file(self) -> None:
        """SIGHUP: `risk-engine reload` may have left a request file with files / previous."""
        req = {}
        try:
            req = rundir.read_json(self.run_dir, "reload.request")
            (self.run_dir / "reload.request").unlink()
        except (OSError, ValueError):
            pass
        if not isinstance(req, dict):
            req = {}
        files = req.get("files")
        if not (isinstance(files, list) and files and all(isinstance(f, str) for f in files)):
            files = None
        refused = self.reload(tuple(files) if files else None, previous=req.get("previous") is True)
        if refused:
            self.log(f"risk-engine: {refused}")

    def reload(self, files: tuple[str, ...] | None = None, previous: bool = False, on_done=None) -> str | None:
        """Start a reload (parsed and compiled in a child process, never on the
        supervisor's loop). Returns a refusal at once, or None: the outcome goes to the log
        and to ``on_done(outcome)`` when it is known (poll()). A refused ruleset keeps the
        old one serving."""
        if self.job is not None:
            return "reload refused: another reload is in progress"
        if previous:
            older = sorted(g for g in self.specs if g < self.generation)
            if not older:
                return "reload refused: no previous generation"
            files = tuple(self.specs[older[-1]]["files"])
        files = files or tuple(self.specs[self.generation]["files"])
        try:
            self.job = ReloadJob(self, files)
        except OSError as e:
            return f"reload refused: cannot start the reload process: {e}"
        if on_done is not None:
            self.job.callbacks.append(on_done)
        return None

    def poll(self) -> None:
        """The supervisor's loop: publish the reload's ruleset once it is ready, or count
        and log its refusal; then tell whoever asked for it."""
        job = self.job
        if job is None:
            return
        try:
            res = job.poll()
        except Exception as e:                 # noqa: BLE001 - a refusal, never the loop's end
            job.kill()
            res = f"reload failed: {type(e).__name__}: {e}"
        if res is None:
            return
        self.job = None
        if isinstance(res, str):
            self.block.view("supervisor.reload_errors")[0] += 1
            self.log(f"risk-engine: reload refused, generation {self.generation} keeps serving:\n{res}")
            outcome = f"reload refused: {res}"
        else:
            spec, rs = res
            self.before_publish(self.generation - 1)   # the counter row g+1 will reuse
            self.publish(spec, rs)
            self.after_reload()
            outcome = f"generation {self.generation} = {spec['label']}"
            self.log(f"risk-engine: {outcome}")
        for cb in job.callbacks:
            cb(outcome)

    def kill(self) -> None:
        """Stop a reload in flight (cleanup)."""
        if self.job is not None:
            self.job.kill()
            self.job = None


class ReloadJob:
    """One reload in flight. ``poll()`` returns None while it runs, then
    ``(spec, ruleset)`` or an error string (the refusal) exactly once."""

    def __init__(self, sup, files: tuple[str, ...], timeout_s: float = RELOAD_TIMEOUT_S):
        self.sup, self.files = sup, files
        self.callbacks: list = []
        self.deadline = time.monotonic() + timeout_s
        self.timeout_s = timeout_s
        self.out = tempfile.TemporaryFile()
        self.err = tempfile.TemporaryFile()
        self.child = subprocess.Popen(
            [sys.executable, "-m", "engine.reload", "--run-dir", str(sup.run_dir), "--", *files],
            stdin=subprocess.DEVNULL, stdout=self.out, stderr=self.err)
        self.thread: threading.Thread | None = None
        self.loaded = None              # (spec, rs) or an exception, set by the thread
        self.child_spec: dict | None = None

    def poll(self):
        if self.thread is None:
            if self.child.poll() is None:
                if time.monotonic() < self.deadline:
                    return None
                self.kill()
                return f"reload took longer than {self.timeout_s:.0f} s; stopped"
            result = self._child_result()
            if isinstance(result, str):
                return result
            self.child_spec = result
            self.thread = threading.Thread(target=self._load, daemon=True, name="reload")
            self.thread.start()
            return None
        if self.thread.is_alive():
            return None
        if isinstance(self.loaded, BaseException):
            return f"{self.loaded}"
        spec, rs = self.loaded
        if spec["source_hash"] != self.child_spec["source_hash"]:
            return "rule files changed while the reload ran; run it again"
        return spec, rs

    def _child_result(self):
        code = self.child.returncode
        self.out.seek(0)
        raw = self.out.read(MAX_CHILD_OUTPUT_BYTES)
        self.out.close()
        self.err.seek(0)
        err = self.err.read(4096).decode(errors="replace").strip()
        self.err.close()
        try:
            res = json.loads(raw.decode())
        except ValueError:
            return f"reload process exited with code {code}: {err[-500:] or 'no output'}"
        if not isinstance(res, dict) or not res.get("ok") or not isinstance(res.get("spec"), dict):
            return str(res.get("error", "refused") if isinstance(res, dict) else "no result")
        return res["spec"]

    def _load(self):
        try:
            self.loaded = ruleset_spec(self.sup.cfg, self.files, self.sup.features.fs)
        except Exception as e:         # any failure is a refusal; the loop keeps serving
            self.loaded = e

    def kill(self) -> None:
        if self.child.poll() is None:
            self.child.kill()
            self.child.wait()
        for f in (self.out, self.err):
            if not f.closed:
                f.close()


def main(argv=None) -> int:
    """The child: compile ``files`` against the running instance's config and print
    {"ok": true, "spec": ...} or {"ok": false, "error": ...} as one JSON line."""
    ap = argparse.ArgumentParser(prog="python -m engine.reload")
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("files", nargs="+")
    args = ap.parse_args(argv)
    procname.become_child("reload")
    try:
        cfg = rundir.read_config(args.run_dir)
        spec, _rs = ruleset_spec(cfg, tuple(args.files), feature_set_for(cfg))
        out = {"ok": True, "spec": spec}
    except Exception as e:             # every failure is reported as the refusal's text
        out = {"ok": False, "error": str(e) or type(e).__name__}
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
