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

import json
import subprocess
import sys
import tempfile
import threading
import time

RELOAD_TIMEOUT_S = 300          # a cold compile of a big ruleset on a busy 2-core machine
MAX_CHILD_OUTPUT_BYTES = 1 << 20


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
        from engine.supervisor import ruleset_spec
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
    import argparse
    ap = argparse.ArgumentParser(prog="python -m engine.reload")
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("files", nargs="+")
    args = ap.parse_args(argv)
    from engine import procname, rundir
    procname.become_child("reload")
    from engine.supervisor import ruleset_spec
    from rules.features import feature_set_for
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
