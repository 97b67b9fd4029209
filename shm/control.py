"""The control-and-counters block: one shared-memory array of int64 cells per engine instance.

The supervisor creates it; the ingress and every worker attach. Each cell has ONE writer
(the process that owns its section), so plain aligned 8-byte stores suffice: on x86-64 they
are atomic, and readers (the metrics exporter, `risk-engine stats`) only need a recent value,
not an ordered one. Cells that carry a command between processes (stop, generation) are
written by the supervisor and polled by the others between batches.

Layout (int64 cells; every section starts on its own 64-byte cache line, so two writers
never share a line):

    +---------------------------+  cell 0
    | header: magic, version    |
    +---------------------------+
    | supervisor section        |  stop, generation, per-worker epoch/pid/alive, restarts
    +---------------------------+
    | ingress section           |  requests by (transport, code), decisions by action,
    |                           |  latency histograms per transport and per stage, gc
    +---------------------------+
    | worker 0 section          |  batches, events, active generation, kernel histogram,
    |                           |  gc, rule hits[MAX_RULES], rule errors[MAX_RULES]
    +---------------------------+
    | worker 1 section ...      |
    +---------------------------+

Only this module computes offsets: each section is one descriptor (shm.descriptor) whose
fields each start on a fresh cache line, and ``block_layout(n_workers)`` places the sections
one after another. ``Block.view(name)`` returns named numpy views.
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import numpy as np
from numba import njit

from shm.descriptor import CACHE_LINE_BYTES, WORD_BYTES, Builder, Layout
from shm.types import MAX_RULES

MAGIC = 0x5245_4354_4C31     # "RECTL1"
VERSION = 4                  # 2: supervisor.window_feed, ingress.window_fed; 3: worker.replication_failed;
                             # 4: ingress.py_messages
MAX_WORKERS = 64
N_CODES = 32                 # ErrorCode values fit below this
N_TRANSPORTS = 2             # 0 binary, 1 json
TRANSPORTS = ("binary", "json")
STAGES = ("parse_route", "ring_wait", "reply")
# Histogram upper bounds in ns (Prometheus 'le'); the last bucket is +Inf.
LATENCY_BOUNDS_NS = np.array([5e3, 1e4, 2.5e4, 5e4, 1e5, 2.5e5, 5e5, 1e6, 2.5e6, 5e6, 1e7,
                              2.5e7, 5e7, 1e8], dtype=np.int64)
KERNEL_BOUNDS_NS = np.array([25, 50, 100, 200, 500, 1e3, 2e3, 5e3, 1e4, 1e5], dtype=np.int64)
GC_BOUNDS_NS = np.array([1e4, 1e5, 1e6, 1e7, 1e8, 1e9], dtype=np.int64)
# Stalls: a worker step slower than STALL_NS is counted by phase and logged with its wall
# time, so a TIMEOUT decision can be lined up with what held its worker (bench/soak.py).
STALL_NS = 10_000_000
STALL_PHASES = ("pickup", "kernel", "journal", "publish", "hold")
BLOCKS_EVERY_NS = 50_000_000 # py_blocks cells (risk_python_blocks) refresh at most this often
LOG_ENTRIES = 64             # entries per event log (the newest overwrite the oldest)
LOG_WIDTH = 8                # cells per entry: wall time (ns since the epoch), then 7 values
NB = len(LATENCY_BOUNDS_NS) + 1
NBK = len(KERNEL_BOUNDS_NS) + 1
NBG = len(GC_BOUNDS_NS) + 1


def _hist(nb: int) -> int:
    return nb + 1          # bucket counts + sum (ns)


SUPERVISOR = [("header", 2), ("stop", 1), ("generation", 1), ("worker_restarts", 1),
              ("ingress_restarts", 1), ("reload_errors", 1), ("pause", 1), ("snapshots", 1),
              ("snapshot_errors", 1), ("snapshot_pause_ns", 1), ("snapshot_pause_max_ns", 1),
              ("worker_epoch", MAX_WORKERS), ("worker_pid", MAX_WORKERS),
              ("worker_alive", MAX_WORKERS), ("ingress_pid", 1), ("ingress_alive", 1),
              ("snapshot_log", 1 + LOG_ENTRIES * LOG_WIDTH), ("worker_restart_ns", 1),
              ("standby_pid", 1), ("journal_corrupt_records", 1), ("snapshots_refused", 1),
              ("snapshots_skipped", 1), ("serving", 1), ("standby_phase", 2),
              ("window_feed", 1)]     # ingress.window_feed: the last feed file written
# why a request was refused with OVERLOADED (ingress.overloaded[i]; risk_overloaded_total{reason})
OVERLOAD_REASONS = ("shed", "ring_full", "max_inflight", "worker_behind", "peer_inflight")
# why the ingress closed a connection (ingress.connections_closed[i]; ingress.conns)
CONN_CLOSE_REASONS = ("over_cap", "bad_frames")
INGRESS = [("requests", N_TRANSPORTS * N_CODES), ("decisions", 3), ("inflight", 1),
           ("accepting", 1), ("deduplicated", 1), ("timeouts", 1), ("worker_lost", 1),
           ("eval_hist", N_TRANSPORTS * _hist(NB)), ("stage_hist", len(STAGES) * _hist(NB)),
           ("gc_hist", _hist(NBG)), ("generation_seen", 1), ("dedup_meta", 4),
           ("timeout_log", 1 + LOG_ENTRIES * LOG_WIDTH), ("py_blocks", 1),
           ("overloaded", len(OVERLOAD_REASONS)), ("connections", 1),
           ("connections_closed", len(CONN_CLOSE_REASONS)), ("phase", 2),
           ("autoblock", 4),     # ingress.autoblock: capture switch, blocked, no_peer, failed
           ("window_fed", 2),    # ingress.window_feed: the last feed file applied, the last refused
           ("py_messages", 1)]   # messages the compiled loop handed to Python (ingress.compiledloop)
WORKER = [("batches", 1), ("events", 1), ("generation", 1), ("reload_errors", 1),
          ("paused", 1), ("journal_seq", 1), ("retain_seq", 1),
          ("kernel_hist", _hist(NBK)), ("gc_hist", _hist(NBG)), ("heartbeat_ns", 1),
          ("pickup_hist", _hist(NB)), ("stalls", len(STALL_PHASES)),
          ("stall_log", 1 + LOG_ENTRIES * LOG_WIDTH),
          ("row_generation", 2), ("py_blocks", 1),
          ("journal_unavailable", 1), ("journal_write_errors", 1),
          ("replication_failed", 1),    # ack: sync replies resolved REPLICATION_FAILED (ackgate)
          ("rule_hits", 2 * MAX_RULES), ("rule_errors", 2 * MAX_RULES), ("phase", 2)]
# Start-up: each child process says where it is in a ("phase", 2) view, [STARTUP_PHASES
# index, CLOCK_MONOTONIC ns it entered it] (engine.readiness prints them while the engine
# starts). supervisor.serving: 1 once the supervisor announced "serving"; the ingress reads
# no request before it.
STARTUP_PHASES = ("starting", "compiling", "warming", "ready")
# Rule counters come in two rows: generation g counts into row g % 2. A row is zeroed only
# when generation g + 2 starts, and the supervisor folds a row into its totals before it
# asks for that generation, so no hit is lost across reloads; a restarted worker keeps
# counting on top of its row (the block outlives worker processes).


def _section(name: str, fields: list[tuple[str, int]]) -> Layout:
    """A section's descriptor: each field (n int64 cells) starts on a fresh cache line, and
    so does whatever follows the section."""
    b = Builder(name)
    for field, n in fields:
        b.field(field, n * WORD_BYTES, align=CACHE_LINE_BYTES)
    return b.build(align=CACHE_LINE_BYTES)


SUPERVISOR_SECTION = _section("supervisor", SUPERVISOR)
INGRESS_SECTION = _section("ingress", INGRESS)
WORKER_SECTION = _section("worker", WORKER)


@functools.lru_cache(maxsize=MAX_WORKERS)
def block_layout(n_workers: int) -> Layout:
    """The whole block: supervisor, ingress, then one worker section per worker; fields
    are named ``<section>.<field>`` (``worker0.rule_hits``). Computed once per size."""
    b = Builder(f"control block of {n_workers} workers")
    b.group(SUPERVISOR_SECTION, prefix="supervisor.")
    b.group(INGRESS_SECTION, prefix="ingress.")
    for w in range(n_workers):
        b.group(WORKER_SECTION, prefix=f"worker{w}.")
    return b.build(align=CACHE_LINE_BYTES)


@dataclass(frozen=True)
class BlockLayout:
    n_workers: int

    @property
    def layout(self) -> Layout:
        return block_layout(self.n_workers)

    @property
    def n_cells(self) -> int:
        return self.layout.words

    @property
    def nbytes(self) -> int:
        return self.layout.size


class Block:
    """Named views over the int64 cells of a control block (any buffer of the right size)."""

    def __init__(self, buf, n_workers: int, create: bool = False):
        if not 1 <= n_workers <= MAX_WORKERS:
            raise ValueError(f"control block: n_workers={n_workers} outside [1, {MAX_WORKERS}]")
        self.layout = block_layout(n_workers)
        self.cells = np.frombuffer(buf, dtype=np.int64, count=self.layout.words)
        self.n_workers = n_workers
        self._views = {f.name: self.cells[f.offset // WORD_BYTES:f.end // WORD_BYTES]
                       for f in self.layout}
        hdr = self._views["supervisor.header"]
        if create:
            self.cells[:] = 0
            hdr[0], hdr[1] = MAGIC, VERSION
        elif hdr[0] != MAGIC or hdr[1] != VERSION:
            raise ValueError(f"control block: bad magic/version {int(hdr[0]):#x}/{int(hdr[1])}")

    def view(self, name: str) -> np.ndarray:
        """``block.view('ingress.requests')`` or ``block.view('worker0.rule_hits')``."""
        return self._views[name]

    def worker(self, w: int, name: str) -> np.ndarray:
        return self._views[f"worker{w}.{name}"]

    def rule_row(self, w: int, row: int, kind: str = "rule_hits") -> np.ndarray:
        return self._views[f"worker{w}.{kind}"][row * MAX_RULES:(row + 1) * MAX_RULES]


@njit(cache=True, nogil=True)
def _observe(hist, bounds_ns, value_ns, count):
    i = 0                                   # first bound >= value (Prometheus 'le')
    while i < bounds_ns.shape[0] and bounds_ns[i] < value_ns:
        i += 1
    hist[i] += count
    hist[hist.shape[0] - 1] += value_ns * count


@njit(cache=True, nogil=True)
def _observe_request(eval_row, stage_hist, bounds_ns, arrival_ns, routed_ns, first_resp_ns, now_ns):
    """One request's end-to-end time and, when it reached a worker, its three stages: the
    ingress's per-request instrumentation in a single compiled call."""
    _observe(eval_row, bounds_ns, now_ns - arrival_ns, 1)
    if first_resp_ns:
        _observe(stage_hist[0], bounds_ns, routed_ns - arrival_ns, 1)
        _observe(stage_hist[1], bounds_ns, first_resp_ns - routed_ns, 1)
        _observe(stage_hist[2], bounds_ns, now_ns - first_resp_ns, 1)


observe_request = _observe_request


def observe(hist: np.ndarray, bounds_ns: np.ndarray, value_ns: int, count: int = 1) -> None:
    """Add ``count`` observations of ``value_ns`` to a histogram view laid out as
    [buckets..., sum_ns]. One compiled call: numpy's searchsorted plus two scalar
    increments cost ~4 us a call from Python here; this ~0.3 us."""
    _observe(hist, bounds_ns, value_ns, count)


def set_phase(view: np.ndarray, phase: str) -> None:
    """Enter start-up phase ``phase`` (STARTUP_PHASES) in a ("phase", 2) view."""
    view[1] = time.monotonic_ns()
    view[0] = STARTUP_PHASES.index(phase)


class EventLog:
    """A small ring of fixed-width entries in a control-block view (one writer): cell 0
    counts the entries ever added; entry i lives at 1 + (i % LOG_ENTRIES) * LOG_WIDTH. Written
    only on rare events (a stall, a timeout, a snapshot), read at scrape time."""

    def __init__(self, view: np.ndarray):
        self.count = view[:1]
        self.rows = view[1:].reshape(LOG_ENTRIES, LOG_WIDTH)

    def add(self, *values: int) -> None:
        """Append (wall time now, *values); at most LOG_WIDTH - 1 values."""
        i = int(self.count[0])
        row = self.rows[i % LOG_ENTRIES]
        row[:] = 0
        row[0] = time.time_ns()
        row[1:1 + len(values)] = values
        self.count[0] = i + 1

    def newest(self) -> np.ndarray | None:
        """The newest entry's cells (a writable view), or None when empty."""
        i = int(self.count[0])
        return self.rows[(i - 1) % LOG_ENTRIES] if i else None

    def entries(self) -> list[list[int]]:
        """The retained entries, oldest first."""
        n = int(self.count[0])
        idx = [i % LOG_ENTRIES for i in range(max(0, n - LOG_ENTRIES), n)]
        return self.rows[idx].tolist()


def observe_many(hist: np.ndarray, bounds_ns: np.ndarray, values_ns: np.ndarray) -> None:
    """Vectorised: add every value of an array (one numpy call per batch)."""
    idx = np.searchsorted(bounds_ns, values_ns)
    hist[:-1] += np.bincount(idx, minlength=len(hist) - 1)
    hist[-1] += int(values_ns.sum())
