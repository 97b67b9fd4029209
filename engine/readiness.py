"""When the engine is ready, and what it says while it gets there.

``wait_ready``: start-up's last step. The engine is ready when every process a request can
reach has compiled (or loaded from the cache) and warmed every kernel it calls: the ingress
(both paths), each worker (its rule kernel, run once, and its feature tables mapped) and
the standby. Until then the ingress reads no request (supervisor.serving). Every
PROGRESS_EVERY_S the supervisor prints what is still being compiled and for how long,
including its own compile of the rules (a cold Numba cache takes minutes).

``not_ready``: what /ready answers (engine.exporter): serving, the ingress and every worker
alive and serving, the rules loaded.
"""
from __future__ import annotations

import threading
import time

from engine.preflight import StartupError
from shm.control import STARTUP_PHASES

READY_TIMEOUT_S = 300        # children's cold compiles on a busy 2-core machine (progress is printed)
PROGRESS_EVERY_S = 5.0
_DOING = {"starting": "starting", "compiling": "compiling or loading its kernels",
          "warming": "warming its kernels up", "ready": "ready"}


class Progress:
    """Prints one line every PROGRESS_EVERY_S while the engine starts: the supervisor's own
    step (``step``) and each child's phase (``shm.control.STARTUP_PHASES``), with times. A
    daemon thread, so a step that holds the main thread (a compile) is still reported."""

    def __init__(self, log, notify=None):
        self.log = log
        self.notify = notify                # engine.sdnotify.Notifier: STATUS= lines
        self.t0 = time.monotonic()
        self.step_name, self.step_t0 = "", self.t0
        self.children = None                # () -> [(name, phase, since_monotonic_s)]
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="progress")
        self._thread.start()

    def step(self, name: str) -> None:
        """The supervisor's own step from now ("" when it waits for its children)."""
        self.step_name, self.step_t0 = name, time.monotonic()

    def line(self) -> str:
        now = time.monotonic()
        parts = []
        if self.step_name:
            parts.append(f"{self.step_name} ({now - self.step_t0:.0f} s)")
        for name, phase, since in (self.children() if self.children else ()):
            took = "" if phase == "ready" else f" ({now - since:.0f} s)"
            parts.append(f"{name} {_DOING[phase]}{took}")
        return f"risk-engine: starting, {now - self.t0:.0f} s: " + "; ".join(parts)

    def _run(self) -> None:
        while not self._done.wait(PROGRESS_EVERY_S):
            try:
                text = self.line()
            except Exception as e:          # a child's view gone mid-read: skip this line
                text = f"risk-engine: starting, {time.monotonic() - self.t0:.0f} s ({e})"
            self.log(text)
            if self.notify is not None:
                self.notify.status(text.removeprefix("risk-engine: "))

    def close(self) -> float:
        """Stop printing; the seconds since start-up began."""
        self._done.set()
        return time.monotonic() - self.t0


def child_phases(sup, spawned_s: float) -> list[tuple[str, str, float]]:
    """(name, phase, since) of the ingress, each worker and the standby; ``since`` on
    time.monotonic(), ``spawned_s`` for a child that wrote nothing yet."""
    b = sup.block
    rows = [("ingress", b.view("ingress.phase"))]
    rows += [(f"worker {w}", b.worker(w, "phase")) for w in range(b.n_workers)]
    if sup.standbys is not None and sup.standbys.process is not None:
        rows.append(("standby", b.view("supervisor.standby_phase")))
    out = []
    for name, v in rows:
        phase, since_ns = int(v[0]), int(v[1])
        out.append((name, STARTUP_PHASES[phase], since_ns / 1e9 if since_ns else spawned_s))
    return out


def wait_ready(sup, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Until the ingress, every worker and the standby are ready (module doc); StartupError
    when one exits or after ``timeout_s``."""
    n = len(sup.placements)
    block = sup.block
    gens = [block.worker(w, "generation") for w in range(n)]
    ingress = block.view("ingress.phase")
    ready = STARTUP_PHASES.index("ready")
    t_end = time.monotonic() + timeout_s
    while time.monotonic() < t_end:
        dead = [r for r, p in sup.children.items() if p.poll() is not None]
        if dead:
            raise StartupError(f"{dead[0]} exited with code {sup.children[dead[0]].returncode} "
                               f"during start-up")
        sb = sup.standbys.process
        if sb is not None and sb.poll() is not None:
            raise StartupError(f"standby worker exited with code {sb.returncode} during start-up")
        if all(g[0] == sup.rulesets.generation for g in gens) and ingress[0] == ready and \
                (sb is None or sup.standbys.ready()):
            return
        time.sleep(0.02)
    waiting = [f"worker {w}" for w, g in enumerate(gens) if g[0] != sup.rulesets.generation]
    if ingress[0] != ready:
        waiting.append("ingress")
    if sup.standbys.process is not None and not sup.standbys.ready():
        waiting.append("standby worker")
    raise StartupError(f"engine not ready after {timeout_s:.0f} s; still starting: {', '.join(waiting)}")


def not_ready(sup) -> list[str]:
    """Why the engine is not ready (empty: ready). Called on the exporter's thread: every
    value is read once."""
    block = sup.block
    if block is None or not block.view("supervisor.serving")[0]:
        return ["starting"]
    if block.view("supervisor.stop")[0]:
        return ["stopping"]
    why = []
    if sup.rulesets is None or sup.rulesets.generation < 1:
        why.append("no rules loaded")
    children = dict(sup.children)
    restarting = dict(sup.restarting)
    for role in ["ingress"] + [f"worker {w}" for w in range(block.n_workers)]:
        p = children.get(role)
        if p is None or p.poll() is not None:
            why.append(f"{role} not running")
        elif role != "ingress" and int(role.split()[1]) in restarting:
            why.append(f"{role} restarting")
    if not block.view("ingress.accepting")[0]:
        why.append("ingress not accepting")
    return why
