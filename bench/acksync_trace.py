"""Where an ``ack: sync`` decision's time goes: one engine node on three nats-servers (R3)
holding every partition, one closed-loop client, each decision's timeline on one clock
(CLOCK_MONOTONIC, shared by the processes of one machine):

    client sent -> worker held the reply (its record journaled) -> the tailer's step began
    -> it read the record -> publish sent -> JetStream acknowledged -> marks advanced
    -> worker released the reply -> client got it

The node runs this checkout's code unchanged: a ``sitecustomize`` in a private temporary
directory (on PYTHONPATH of the node's processes only) wraps ReplyGate.hold/release,
JournalTailer.step/_publish_batch and ReplicationLog._publish as each module is imported, and
each process appends its stamps to a file of its own. Prints per stage p50 / mean / p90 / p99
(ms) over ``--decisions`` (after 20 unrecorded).

    python -m bench.acksync_trace [--decisions 300]
"""
from __future__ import annotations

import argparse
import bisect
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.acksync import DEADLINE_MS, EVENT, node_overrides, owns_all
from bench.engine_proc import EngineProcess, free_port
from engine.cluster.natsserver import NatsCluster
from ingress.client import Client

STAGES = ("client -> held", "held -> step began", "step began -> read", "read -> publish sent",
          "publish -> JetStream ack", "ack -> marks advanced", "marks -> reply released",
          "released -> client", "total")

# runs in every Python process of the node (PYTHONPATH): wraps the traced methods on import
SITECUSTOMIZE = '''
import importlib.abc, os, sys, time
_D, _f = os.environ.get("ACKSYNC_TRACE_DIR"), None

def _tr(*vals):
    global _f
    if _f is None:
        _f = open(os.path.join(_D, "trace.%d" % os.getpid()), "a", buffering=1)
    _f.write(" ".join(map(str, (vals[0], time.monotonic_ns()) + vals[1:])) + "\\n")

def _patch_ackgate(m):
    hold, release = m.ReplyGate.hold, m.ReplyGate.release
    def h(self, o, first, last):
        _tr("hold", last)
        return hold(self, o, first, last)
    def r(self):
        before = [b[2] for b in self.held]
        n = release(self)
        for last in before[:len(before) - len(self.held)]:
            _tr("release", last)
        return n
    m.ReplyGate.hold, m.ReplyGate.release = h, r

def _patch_tailer(m):
    step, batch = m.JournalTailer.step, m.JournalTailer._publish_batch
    async def s(self):
        _tr("step")
        return await step(self)
    async def b(self, w, recs):
        _tr("read", int(recs["seq"][-1]))
        out = await batch(self, w, recs)
        _tr("acked", int(recs["seq"][-1]))
        return out
    m.JournalTailer.step, m.JournalTailer._publish_batch = s, b

def _patch_replog(m):
    pub = m.ReplicationLog._publish
    async def p(self, part, data, hdr, expect):
        _tr("pub", hdr.get(m.H_LAST, 0))
        out = await pub(self, part, data, hdr, expect)
        _tr("ack", hdr.get(m.H_LAST, 0))
        return out
    m.ReplicationLog._publish = p

_PATCH = {"engine.ackgate": _patch_ackgate, "engine.cluster.tailer": _patch_tailer,
          "engine.cluster.replog": _patch_replog}

class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in _PATCH:
            return None
        for f in sys.meta_path:
            if f is self:
                continue
            spec = f.find_spec(name, path, target) if hasattr(f, "find_spec") else None
            if spec is not None:
                run = spec.loader.exec_module
                def exec_module(module, run=run, patch=_PATCH[name]):
                    run(module)
                    patch(module)
                spec.loader.exec_module = exec_module
                return spec
        return None

if _D:
    sys.meta_path.insert(0, _Finder())
'''


def read_trace(d: Path) -> tuple[dict, list[int]]:
    """{(kind, seq): first ns} and the sorted step starts."""
    ev, steps = {}, []
    for fn in d.glob("trace.*"):
        for line in fn.read_text().splitlines():
            p = line.split()
            if p[0] == "step":
                steps.append(int(p[1]))
            else:
                ev.setdefault((p[0], int(p[2])), []).append(int(p[1]))
    return ev, sorted(steps)


def timelines(ev: dict, steps: list[int], sent: list[tuple[int, int]]) -> np.ndarray:
    """Per decision (a row), each stage's ms (STAGES): its record is the one held between
    its send and its answer; the read, publish and acks are the first that cover its seq after
    it was sent (a step covers every seq up to its read's last; a step may read the record
    between its append and the hold: then the two stages between count 0)."""
    holds = sorted((t, s) for (k, s), ts in ev.items() if k == "hold" for t in ts)
    after = {k: sorted((t, s) for (kk, s), ts in ev.items() if kk == k for t in ts)
             for k in ("read", "pub", "ack", "acked")}

    def first(kind, seq, t0):
        return min((t for t, s in after[kind] if s >= seq and t >= t0), default=None)
    rows = []
    for t0, t1 in sent:
        i = bisect.bisect_left(holds, (t0, 0))
        if i >= len(holds) or holds[i][0] > t1:
            continue
        th, s = holds[i]
        rd, pub = first("read", s, t0), first("pub", s, t0)
        ack = first("ack", s, pub or t0)
        acked, rel = first("acked", s, ack or t0), min(ev.get(("release", s), [0]))
        if None in (rd, pub, ack, acked) or not rel:
            continue
        st = max(steps[max(0, bisect.bisect_right(steps, rd) - 1)], th)
        rows.append((th - t0, max(0, st - th), max(0, rd - st), pub - rd, ack - pub, acked - ack,
                     rel - acked, t1 - rel, t1 - t0))
    return np.array(rows, float).reshape(-1, len(STAGES)) / 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench.acksync_trace", description=__doc__.split("\n\n")[0])
    ap.add_argument("--decisions", type=int, default=300)
    a = ap.parse_args(argv)
    with NatsCluster(3, port_fn=free_port) as nats, tempfile.TemporaryDirectory() as tmp:
        hook, trace = Path(tmp) / "hook", Path(tmp) / "trace"
        hook.mkdir(mode=0o700)
        trace.mkdir(mode=0o700)
        (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
        env = dict(os.environ, ACKSYNC_TRACE_DIR=str(trace),
                   PYTHONPATH=os.pathsep.join(filter(None, (str(hook), os.environ.get("PYTHONPATH")))))
        sent = []
        with EngineProcess(tmp, workers=1, overrides=node_overrides(nats, "sync"), env=env) as e:
            owns_all(e)
            with Client(e.endpoint, timeout_ms=20_000, retries=0, deadline_ms=DEADLINE_MS) as c:
                for i in range(a.decisions + 20):
                    t0 = time.monotonic_ns()
                    d = c.evaluate({**EVENT, "account_id": 1000 + i % 97, "amount": float(i)})
                    if d.error is not None:
                        raise RuntimeError(f"decision {i}: {d.error}")
                    if i >= 20:
                        sent.append((t0, time.monotonic_ns()))
        t = timelines(*read_trace(trace), sent)
    print(f"ack: sync, one decision's timeline: 1 node, 3 nats-servers (R3), 1 client; "
          f"{len(t)} of {len(sent)} decisions traced")
    print(f"{'stage':26s} {'p50':>7s} {'mean':>7s} {'p90':>7s} {'p99':>7s}  (ms)")
    for i, name in enumerate(STAGES):
        c = t[:, i] if len(t) else np.zeros(1)
        print(f"{name:26s} {np.percentile(c, 50):7.3f} {c.mean():7.3f} {np.percentile(c, 90):7.3f} "
              f"{np.percentile(c, 99):7.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
