"""The C load generator (bench/loadgen.c) from Python: built with gcc against the libzmq pyzmq
has loaded, fed a payload file of requests built by bench/events.py, run, and its JSON line
read back with error codes named as bench/replies.py names them.

On two shared cores a Python client at 32 clients x 64 events (over 1 M events/s) can be the
bottleneck it measures; the C one runs no Python per message, so what it spends per request
is libzmq's own work (its I/O thread, the mailbox wake-ups), reported as
``cpu_us_per_request``. Without gcc, callers fall back to the Python load generator
(``run_python``, bench/loadgen.py) in the same document shape; ``generator`` says which ran.

The binary is cached as ``~/.cache/risk-engine/loadgen/loadgen-<hash>``, the hash covering the
source and the libzmq it links: that directory holds code we execute, so it is created 0700
and refused if another user owns it or can write it (shm.runtime.securedir).
"""
from __future__ import annotations

import json
import os
import struct
import subprocess
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import zmq

from bench import cbuild
from bench.events import PayloadPool
from bench.loadgen import LoadSpec
from bench.phase import run_phase, split
from bench.replies import code_name
from ingress import wire
from shm.runtime.config import load_config
from shm.runtime.securedir import write_private_file
from shm.types import DecisionFlag

SOURCE = Path(__file__).with_name("loadgen.c")
PAYLOAD_MAGIC = b"RLGP"
PAYLOAD_VERSION = 1
GccMissing = cbuild.GccMissing     # callers catch cload.GccMissing


@dataclass(frozen=True)
class Load:
    """One closed-loop run: ``clients`` each with one request of ``batch`` events in flight;
    ``kind`` 'echo' (a good reply is the request) or 'engine' (a decision reply)."""
    target: str
    kind: str
    clients: int
    batch: int
    duration_s: float
    warmup_s: float = 1.0
    config: str | None = None          # the engine config whose schema the events follow
    seed: int = 0
    timeout_ms: int = 5000
    drain_s: float = 2.0
    max_requests: int = -1             # measured requests at most (-1: the clock alone)
    io_threads: int = 1                # libzmq I/O threads of the C generator
    processes: int = 1                 # C generator processes sharing the clients


def libzmq_path() -> Path:
    """The libzmq shared object this process loaded through pyzmq (its bundled copy, whose
    file name carries a hash, or the system's)."""
    with open("/proc/self/maps") as f:          # importing zmq mapped it
        for line in f:
            fields = line.split(maxsplit=5)
            path = fields[5].strip() if len(fields) == 6 else ""
            if "/libzmq" in path and ".so" in path and Path(path).is_file():
                return Path(path)
    raise RuntimeError("libzmq not found: no libzmq*.so mapped after importing zmq "
                       f"(pyzmq at {os.path.dirname(zmq.__file__)})")


def build(cache_dir: Path | None = None) -> Path:
    """The compiled load generator, built on first use against pyzmq's libzmq (bench.cbuild).
    Raises GccMissing without gcc, RuntimeError when the build fails."""
    lib = libzmq_path()
    return cbuild.build(SOURCE, "loadgen", cache_dir, (str(lib), f"-Wl,-rpath,{lib.parent}"),
                        str(lib).encode())


def write_payloads(path: Path, config: str | None, batch: int, size: int = 256,
                   seed: int = 0) -> None:
    """``size`` binary requests of ``batch`` events (bench.events.PayloadPool, ids left 0:
    the generator writes fresh ones), in the format bench/loadgen.c reads, file mode 0600."""
    pool = PayloadPool(load_config(config).schema, batch, "binary", size=size, seed=seed)
    parts = [PAYLOAD_MAGIC, struct.pack("<II", PAYLOAD_VERSION, size)]
    for i in range(size):
        req = pool.request(i, 0, 0)
        parts += [struct.pack("<II", len(req), batch), req]
    write_private_file(path, b"".join(parts))


def check_args(kind: str) -> list[str]:
    """What the generator needs to know of the wire format (ingress/wire.py), as options."""
    req, rep, dec = wire.REQUEST_HEADER_DTYPE.fields, wire.REPLY_HEADER_DTYPE.fields, wire.DECISION_DTYPE.fields
    ids = ["--client-id-at", str(req["client_id"][1]), "--request-id-at", str(req["request_id"][1])]
    if kind == "echo":
        return ids + ["--check", "echo"]
    if kind != "engine":
        raise ValueError(f"kind={kind!r} (allowed: echo, engine)")
    assert rep["magic"][1] == 0 and rep["version"][1] == 4       # the prefix below
    prefix = struct.pack("<IH", wire.REPLY_MAGIC, wire.PROTOCOL_VERSION)
    return ids + ["--check", "engine", "--reply-prefix", prefix.hex(),
                  "--reply-error-at", str(rep["error"][1]), "--reply-id-at", str(rep["request_id"][1]),
                  "--reply-header", str(wire.REPLY_HEADER_SIZE), "--record-size", str(wire.DECISION_SIZE),
                  "--record-error-at", str(dec["error"][1]), "--record-flags-at", str(dec["flags"][1]),
                  "--dup-flag", str(int(DecisionFlag.DUPLICATE))]


def _named(counts: dict) -> dict:
    """``code_N`` keys as ErrorCode names (bench.replies.code_name)."""
    return {(code_name(int(k[5:])) if k.startswith("code_") else k): v for k, v in counts.items()}


def run_c(exe: Path, load: Load, payloads: Path, client_id_base: int) -> dict:
    """One run of the compiled generator, its clients spread over ``load.processes``
    processes started together (client ids stay distinct): the document, error codes named,
    several processes' merged (``merge``)."""
    procs, docs = [], []
    limit_s = load.warmup_s + load.duration_s + load.drain_s + load.timeout_ms / 1e3 + 30
    try:
        for n in split(load.clients, load.processes):
            cap = load.max_requests if load.max_requests < 0 else load.max_requests * n // load.clients
            one = replace(load, clients=n, max_requests=cap)     # its share of clients and count
            procs.append(subprocess.Popen(_command(exe, one, payloads, client_id_base),
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
            client_id_base += n
        for p in procs:
            out, err = p.communicate(timeout=limit_s)
            if p.returncode != 0 or not out.strip():
                raise RuntimeError(f"loadgen failed: rc={p.returncode} target={load.target} "
                                   f"stderr={err.strip()[-2000:]!r}")
            docs.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:              # a failed or interrupted run leaves no generator behind
            if p.poll() is None:
                p.kill()
                p.wait()
    doc = docs[0] if len(docs) == 1 else merge(docs)
    doc["processes"] = len(docs)
    doc["errors"] = _named(doc["errors"])
    doc["decision_errors"] = _named(doc["decision_errors"])
    return doc


def _command(exe: Path, load: Load, payloads: Path, client_id_base: int) -> list[str]:
    return [str(exe), "--target", load.target, "--payloads", str(payloads),
            "--clients", str(load.clients), "--duration-s", repr(load.duration_s),
            "--warmup-s", repr(load.warmup_s), "--drain-s", repr(load.drain_s),
            "--timeout-ms", str(load.timeout_ms), "--max-requests", str(load.max_requests),
            "--io-threads", str(load.io_threads), "--client-id-base", str(client_id_base),
            *check_args(load.kind)]


def bucket_top(b: int, sub_bits: int) -> int:
    """The largest latency (ns) bucket ``b`` of bench/loadgen.c's histogram holds."""
    sub = 1 << sub_bits
    if b < 2 * sub:
        return b
    shift = (b - 2 * sub) // sub + 1
    return ((sub + (b - 2 * sub) % sub + 1) << shift) - 1


def percentile_ns(hist: dict[int, int], p: float, max_ns: int, sub_bits: int) -> int:
    """As bench/loadgen.c computes it: HdrHistogram's rank round(p% x n), at least 1."""
    total = sum(hist.values())
    if not total:
        return 0
    rank, seen = max(1, int(p / 100.0 * total + 0.5)), 0
    for b in sorted(hist):
        seen += hist[b]
        if seen >= rank:
            return min(bucket_top(b, sub_bits), max_ns)
    return max_ns


def merge(docs: list[dict]) -> dict:
    """Several generator processes' documents of one run as one: counts and rates add up,
    percentiles come from the summed histograms."""
    out = {"generator": "c", "libzmq": docs[0]["libzmq"], "window_s": max(d["window_s"] for d in docs)}
    for k in ("clients", "sent", "ok", "answered", "events_ok", "error_count", "decision_error_count",
              "recorded", "requests_total", "requests_per_s", "events_per_s", "cpu_s"):
        out[k] = sum(d[k] for d in docs)
    for k in ("errors", "decision_errors"):
        out[k] = dict(sum((Counter(d[k]) for d in docs), Counter()))
    sub_bits = docs[0]["hist_sub_bits"]
    hist: Counter = Counter()
    for d in docs:
        hist.update({b: c for b, c in d["hist"]})
    max_ns = max(round(d["max_us"] * 1e3) for d in docs)
    for name, p in (("p50", 50.0), ("p99", 99.0), ("p999", 99.9)):
        out[f"{name}_us"] = percentile_ns(hist, p, max_ns, sub_bits) / 1e3
    out["max_us"] = max_ns / 1e3
    out["mean_us"] = (sum(d["mean_us"] * d["recorded"] for d in docs) / out["recorded"]
                      if out["recorded"] else 0.0)
    out["cpu_us_per_request"] = out["cpu_s"] / out["requests_total"] * 1e6 if out["requests_total"] else 0.0
    out["hist_sub_bits"], out["hist"] = sub_bits, sorted(hist.items())
    return out


def run_python(load: Load, client_id_base: int, processes: int = 2) -> dict:
    """The same run with the Python load generator, in the C generator's document shape."""
    spec = LoadSpec(target=load.target, kind=load.kind, clients=load.clients,
                    duration_s=load.duration_s, warmup_s=load.warmup_s, batch=load.batch,
                    config=load.config, seed=load.seed, client_id_base=client_id_base,
                    timeout_ms=load.timeout_ms, drain_s=load.drain_s)
    ph = run_phase(load.kind, spec, processes, progress=False)
    h, n, dur = ph.hist, ph.hist.get_total_count(), load.duration_s
    dec = sum(ph.decision_errors.values())
    # as the C side counts: events/s counts decisions without an error (a decision carrying
    # both an error and DUPLICATE is subtracted twice here, hence the floor)
    events_ok = max(0, ph.events_ok - dec)
    return {"generator": "python", "clients": load.clients, "window_s": dur,
            "sent": ph.sent, "ok": ph.ok, "answered": ph.answered, "events_ok": events_ok,
            "errors": dict(ph.errors), "decision_errors": dict(ph.decision_errors),
            "error_count": ph.error_count, "decision_error_count": dec, "recorded": n,
            **{f"{name}_us": (h.get_value_at_percentile(p) / 1e3 if n else 0.0)
               for name, p in (("p50", 50.0), ("p99", 99.0), ("p999", 99.9))},
            "max_us": h.get_max_value() / 1e3 if n else 0.0,
            "mean_us": h.get_mean_value() / 1e3 if n else 0.0,
            "requests_per_s": ph.ok / dur, "events_per_s": events_ok / dur,
            "cpu_s": round(ph.load_cpu_s, 4),
            # as bench/report.py: the whole phase's CPU over its requests at the measured rate
            "cpu_us_per_request": (ph.load_cpu_s / (ph.answered / dur * ph.wall_s) * 1e6
                                   if ph.answered and ph.wall_s else 0.0)}
