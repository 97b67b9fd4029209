"""A rules reload, off the supervisor's loop.

Reading, parsing and compiling rule files runs in a child process (``python -m
engine.reload``) with a deadline: a hostile or huge file can make it slow, make it fail or
kill it, never the supervisor. The child compiles the kernel into the kernel cache and prints
the generation spec. Then a thread of the supervisor loads that ruleset from the cache (the
supervisor keeps it for feature rebuilds); Python switches threads every few ms, so the
loop keeps reaping and restarting workers and taking snapshots meanwhile. The supervisor
publishes the generation only when both succeeded, the kernels match and the rule files
still hold what they held when the reload began; anything else is a refusal and the serving
generation is untouched. A published ruleset is recorded first (engine.rules_record), so a
restart serves it again. The supervisor compiles the bytes it read, and keeps them in the run
directory beside the generation (rundir.write_rules_copy): a worker that starts later compiles
those bytes and checks its kernel against the generation's (worker_prepare.load_generation),
so a rule file edited on disk without a reload never serves.

Who asked is told the outcome: an admin ``reload`` in its reply, `risk-engine reload` (a
request file in the run directory) in a result file beside it (``reload_reply`` for both).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

from engine.rules_record import files_at_start, read_rules, write_record
from engine.switchover import Switchover
from rules import compile_ruleset
from rules.features import feature_set_for
from shm.runtime import procname, rundir
from shm.runtime.textfile import TextFileError

RELOAD_TIMEOUT_S = 300          # a cold compile of a big ruleset on a busy 2-core machine
MAX_CHILD_OUTPUT_BYTES = 1 << 20
MAX_REQUESTS_PER_POLL = 16       # `risk-engine reload` request files answered per turn
_REQUEST_RE = re.compile(r"reload-([0-9a-f]{32})\.request")


class Refusal(str):
    """A reload's refusal: the message, and its stable error code (docs/DEPLOY.md)."""

    def __new__(cls, message: str, code: str = "RULESET_REFUSED"):
        self = super().__new__(cls, message)
        self.code = code
        return self


def reload_reply(rulesets, outcome: str) -> dict:
    """A reload's outcome as an admin reply: the error with its code, or the generation now
    serving, its ruleset and files, the files it replaced, and where it is recorded."""
    if isinstance(outcome, Refusal):
        return {"ok": False, "error": {"code": outcome.code, "message": str(outcome)}}
    g = rulesets.generation
    spec = rulesets.specs[g]
    rep = {"ok": True, "outcome": outcome, "generation": g, "ruleset": spec["label"],
           "files": spec.get("origin_files", spec["files"]),
           "replaced_files": rulesets.specs.get(g - 1, {}).get("origin_files", []),
           "recorded": rulesets.recorded}
    if getattr(outcome, "cluster", None) is not None:     # engine.cluster.ruleset_apply.Applied
        rep["cluster"] = outcome.cluster
    return rep


def startup_ruleset(cfg, features, log) -> tuple[dict, object]:
    """The ruleset a start serves: the configured one, or the one a reload made serving
    before a restart (engine.rules_record.files_at_start); recorded again."""
    pairs = files_at_start(cfg, log)
    try:
        before = read_rules(pairs)
    except TextFileError:
        before = None                   # the compiler says why, with file:line:col
    spec, rs = ruleset_spec(cfg, tuple(src for _, src in pairs), features,
                            [r.text for r in before] if before is not None else None)
    after = read_rules(pairs)
    if before is None or [r.sha256 for r in after] != [r.sha256 for r in before]:
        raise TextFileError("rule files changed while the engine compiled them; start it again")
    spec["origin_files"] = [path for path, _ in pairs]
    spec["recorded"] = write_record(cfg, after, spec["label"])
    return spec, rs


def ruleset_spec(cfg, files: tuple[str, ...], features=None, texts=None) -> tuple[dict, object]:
    """Compile (validates, fills the kernel cache) -> (generation spec, ruleset). ``texts``:
    the files' contents as read (then compiled, and kept for the workers by publish), else
    the files are read. Raises rules.RulesetError on a bad ruleset."""
    rs = compile_ruleset(list(files), cfg.schema, thresholds=cfg.rules.thresholds,
                         on_error=cfg.rules.on_error, features=features, texts=texts)
    spec = {"files": list(files), "thresholds": [list(t) for t in cfg.rules.thresholds],
            "on_error": cfg.rules.on_error, "label": rs.label, "rule_ids": list(rs.rule_ids),
            "modes": list(rs.modes), "source_hash": rs.source_hash}
    if texts is not None:
        spec["texts"] = list(texts)         # not published: keep_compiled_bytes writes them
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
        self.switch: Switchover | None = None   # its published generation, workers loading it
        self.recorded: str | None = None    # engine.rules_record's active.json (None: journal off)
        self.route = None                   # a cluster node's reload (every node), for SIGHUP and the CLI

    def keep_compiled_bytes(self, spec: dict) -> None:
        """The bytes the supervisor compiled, kept in the run directory for the workers
        (rundir.write_rules_copy); the spec names them by sha256. Raises OSError."""
        texts = spec.pop("texts", None)
        if texts is not None:
            spec["sha256"] = [rundir.write_rules_copy(self.run_dir, t.encode()) for t in texts]

    def publish(self, spec: dict, rs) -> None:
        self.recorded = spec.pop("recorded", self.recorded)
        self.keep_compiled_bytes(spec)
        if len(spec.get("sha256", ())) != len(spec["files"]):
            raise ValueError(f"generation {self.generation + 1}: no compiled bytes to publish "
                             f"for files={spec['files']}")
        g = self.generation + 1
        rundir.write_generation(self.run_dir, g, spec)
        self.specs[g] = spec
        self.generation = g
        self.ruleset = rs
        self.block.view("supervisor.generation")[0] = g     # workers poll it between batches

    def request_from_file(self) -> None:
        """SIGHUP (systemctl reload): recompile the serving files; the outcome goes to the log."""
        refused = (self.route or self.reload)()
        if refused:
            self.log(f"risk-engine: {refused}")

    def take_requests(self) -> None:
        """`risk-engine reload` leaves reload-<id>.request (files, previous) in the run
        directory and waits for reload-<id>.result. Looked for on every turn of the loop (one
        listdir of a small directory); while a reload runs, a new request gets RELOAD_BUSY."""
        try:
            names = sorted(n for n in os.listdir(self.run_dir) if _REQUEST_RE.fullmatch(n))
        except OSError:
            return
        for name in names[:MAX_REQUESTS_PER_POLL]:
            rid = _REQUEST_RE.fullmatch(name).group(1)

            def done(outcome, rid=rid):
                try:
                    rundir.write_json(self.run_dir, f"reload-{rid}.result", reload_reply(self, outcome))
                except OSError as e:        # the caller times out; the loop goes on
                    self.log(f"risk-engine: reload {rid}: cannot write its result: {e}")
            try:
                req = rundir.read_json(self.run_dir, name)
            except (OSError, ValueError) as e:
                req = e
            (self.run_dir / name).unlink(missing_ok=True)
            files = req.get("files") if isinstance(req, dict) else None
            if not isinstance(req, dict) or not (files is None or (
                    isinstance(files, list) and 0 < len(files) <= 64 and
                    all(isinstance(f, str) and f for f in files))):
                done(Refusal(f"reload refused: bad request file: {str(req)[:200]}", "BAD_ARGUMENT"))
                continue
            refused = (self.route or self.reload)(tuple(files) if files else None,
                                                  previous=req.get("previous") is True, on_done=done)
            if refused:
                done(refused)

    def reload(self, files: tuple[str, ...] | None = None, previous: bool = False, on_done=None) -> str | None:
        """Start a reload (parsed and compiled in a child process, never on the
        supervisor's loop). Returns a refusal at once, or None: the outcome goes to the log
        and to ``on_done(outcome)`` when it is known (poll()). A refused ruleset keeps the
        old one serving."""
        if self.job is not None or self.switch is not None:
            return Refusal("reload refused: another reload is in progress", "RELOAD_BUSY")
        res = self.resolve(files, previous)
        if isinstance(res, Refusal):
            return res
        files, before = res
        try:
            self.job = ReloadJob(self, files)
        except OSError as e:
            return Refusal(f"reload refused: cannot start the reload process: {e}")
        self.job.before = before
        if on_done is not None:
            self.job.callbacks.append(on_done)
        return None

    def resolve(self, files: tuple[str, ...] | None, previous: bool):
        """The files a reload compiles (those given, the previous generation's, or the serving
        ones) and their texts as read now: (files, before), or a Refusal."""
        if previous:
            older = sorted(g for g in self.specs if g < self.generation)
            if not older:
                return Refusal("reload refused: no previous generation")
            files = tuple(self.specs[older[-1]]["origin_files"])
        files = tuple(files or self.specs[self.generation]["origin_files"])
        try:
            return files, read_rules([(f, f) for f in files])     # what the compile must see
        except TextFileError as e:
            missing = [f for f in files if not os.path.lexists(f)]
            return Refusal(f"reload refused: {e}", "FILE_NOT_FOUND" if missing else "RULESET_REFUSED")

    def poll(self) -> None:
        """The supervisor's loop: publish the reload's ruleset once it is ready, or count
        and log its refusal; then tell whoever asked for it."""
        self.take_requests()
        self._answer_when_switched()
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
        if not isinstance(res, str):
            res = self._record(job, *res)
        if isinstance(res, str):
            self.block.view("supervisor.reload_errors")[0] += 1
            self.log(f"risk-engine: reload refused, generation {self.generation} keeps serving:\n{res}")
            outcome = Refusal(f"reload refused: {res}")
        else:
            spec, rs = res
            self.before_publish(self.generation - 1)   # the counter row g+1 will reuse
            self.publish(spec, rs)
            self.after_reload()
            outcome = f"generation {self.generation} = {spec['label']}"
            self.log(f"risk-engine: {outcome}")
            self.switch = Switchover(self.block, self.generation, outcome, job.callbacks)
            return                                  # answered once the workers serve it
        for cb in job.callbacks:
            cb(outcome)

    def _answer_when_switched(self) -> None:
        sw = self.switch
        res = sw.poll() if sw is not None else None
        if res is None:
            return
        self.switch = None
        text, code = res
        if code is not None:
            self.log(f"risk-engine: reload: {text}")
        outcome = text if code is None else Refusal(f"reload incomplete: {text}", code)
        for cb in sw.callbacks:
            cb(outcome)

    def _record(self, job, spec: dict, rs):
        """Before publishing: the files still hold what the reload began with, and the
        ruleset is recorded for a restart. (spec, rs), or the refusal's text."""
        try:
            after = read_rules([(f, f) for f in job.files])
        except TextFileError as e:
            return f"{e} (while the reload ran)"
        if [r.sha256 for r in after] != [r.sha256 for r in job.before]:
            return "rule files changed while the reload ran; run it again"
        spec["origin_files"] = list(job.files)
        keep = [f for sp in self.specs.values() for f in sp["files"]]  # explain reads them
        try:                    # before the record: a refusal here leaves no record of it
            self.keep_compiled_bytes(spec)
        except OSError as e:
            return f"cannot keep the compiled rule files in the run directory ({e})"
        try:
            spec["recorded"] = write_record(self.cfg, after, spec["label"], keep)
        except OSError as e:
            return f"cannot record the ruleset for a restart ({e}); generation {self.generation} keeps serving"
        return spec, rs

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
        self.before: list = []          # the files as read when the reload began (rules_record)
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
            self.loaded = ruleset_spec(self.sup.cfg, self.files, self.sup.features.fs,
                                       [r.text for r in self.before])
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
