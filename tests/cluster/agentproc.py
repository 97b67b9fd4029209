"""Lease agents run as processes (``python -m engine.cluster.agent_cli``) whose JSON event lines go
to a file, and the serving intervals those lines prove (tests/cluster/conftest.py starts them)."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


class AgentProc:
    """One lease agent process; its events are read back from its log file."""

    def __init__(self, tmp: Path, cluster, node: str, bucket: str, partitions: int, ttl_s: float):
        self.node, self.log = node, tmp / f"{node}.jsonl"
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "engine.cluster.agent_cli", "--servers", ",".join(cluster.urls),
                 "--credentials", cluster.credentials,
                 "--node", node, "--bucket", bucket, "--partitions", str(partitions),
                 "--lease-ttl-s", str(ttl_s), "--replicas", "3"],
                cwd=REPO, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def events(self) -> list[dict]:
        out = []
        for line in self.log.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass                    # a line cut by kill -9, or a traceback: see text()
        return out

    def text(self) -> str:
        return self.log.read_text()

    def last_status(self, after_ns: int = 0) -> dict | None:
        st = [e for e in self.events() if e["ev"] == "status" and e["t_ns"] > after_ns]
        return st[-1] if st else None

    def owned(self) -> set[int]:
        st = self.last_status()
        return {int(p) for p in st["owned"]} if st else set()

    def held(self) -> set[int]:
        """The partitions its log says it holds, as of its last line (exact once the process
        is dead; ``owned()`` is its last status, up to a TTL old)."""
        out: set[int] = set()
        for e in self.events():
            if e["ev"] == "acquired":
                out.add(e["p"])
            elif e["ev"] in ("lost", "released", "prepare_failed"):
                out.discard(e["p"])
            elif e["ev"] == "stopped":
                out.clear()
        return out

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def wait_for(cond, timeout_s: float, what: str, step_s: float = 0.1):
    deadline = time.monotonic() + timeout_s
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        time.sleep(step_s)


def terms(agent_events: dict[str, list[dict]]) -> dict[int, list[tuple[int, int, str, int]]]:
    """Per partition, every term an agent served it: (start_ns, end_ns, node, first revision,
    last revision).
    A term starts when the take was acknowledged (the agent emits before it serves) and ends
    at the latest deadline it printed, or earlier where it printed a loss or release: at the
    ``stopped_ns`` a release or stop names (its table cleared, before the delete marker was
    written, which a watching taker may see and take before the event is printed), else at
    the event (printed after the table was cleared)."""
    out: dict[int, list] = {}
    for node, evs in agent_events.items():
        open_: dict[int, list] = {}
        for e in evs:
            if e["ev"] == "acquired":
                open_[e["p"]] = [e["t_ns"], e["until_ns"], e["rev"], e["rev"]]
            elif e["ev"] == "renewed":
                for p, (rev, until) in e["leases"].items():
                    t = open_.get(int(p))
                    if t is not None:
                        t[1], t[3] = max(t[1], until), rev
            elif e["ev"] in ("lost", "released"):
                t = open_.pop(e["p"], None)
                if t is not None:
                    end = e.get("stopped_ns", e["t_ns"])
                    out.setdefault(e["p"], []).append((t[0], min(t[1], end), node, t[2], t[3]))
            elif e["ev"] == "stopped":
                for p, t in open_.items():
                    end = e.get("stopped_ns", e["t_ns"])
                    out.setdefault(p, []).append((t[0], min(t[1], end), node, t[2], t[3]))
                open_ = {}
        for p, t in open_.items():      # killed: it served at most until its last deadline
            out.setdefault(p, []).append((t[0], t[1], node, t[2], t[3]))
    return out


def assert_one_owner_at_a_time(agent_events: dict[str, list[dict]]) -> dict:
    """No two agents' terms of one partition overlap, and each later term's revision is higher."""
    by_p = terms(agent_events)
    for p, ts in by_p.items():
        ts.sort()
        for a, b in zip(ts, ts[1:]):
            assert a[1] <= b[0], f"partition {p}: {a[2]} served until {a[1]}, {b[2]} from {b[0]}"
            assert b[3] > a[4], f"partition {p}: {b[2]} took revision {b[3]} after {a[2]}'s {a[4]}"
    return by_p

