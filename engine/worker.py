"""A worker process: drain its request ring in batches, one compiled-kernel call per batch,
journal the decisions, publish them to its response ring.

Started by the supervisor as ``python -m engine.worker --run-dir D --index I``. The loop does
one thing: drain, evaluate, journal, publish, then idle by the ring's strategy. Between two
batches it polls the control block for a stop request or a new ruleset generation, and swaps
the kernel there, so no batch sees half a ruleset. A new generation is loaded on a background
thread (the compile comes from the kernel cache) and swapped in by reference between batches.

Order per batch and why: kernel -> journal append -> publish responses -> release requests.
A decision is journaled before anyone can see it (nothing acknowledged is missing from the
journal); requests are released last, so a worker killed mid-batch leaves them in the ring
for its successor.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numba
import numpy as np

from shm.runtime import gcstats, procname, rundir
from shm.control import (BLOCKS_EVERY_NS, KERNEL_BOUNDS_NS, LATENCY_BOUNDS_NS,
                         STALL_NS, Block, observe, set_phase)
from engine.ackgate import ReplyGate, send_replies
from engine.autoblock import block_rules
from engine.journal import JournalReader, JournalWriter, warm_up
from engine.journal_housekeeper import JournalHousekeeper
from shm.rings import EngineRings
from engine.snapshot_coordinator import hold_for_snapshot
from engine.worker_stalls import StallRecorder
from shm.runtime.topology import pin_self
from engine.worker_prepare import GenerationLoader, Prepared, load_generation
from engine.worker_fast import FastStep
from shm.journal_format import RETRY_NS
from shm.types import (ACTION_NAMES, FIRED_PER_SLOT, FIRED_SLOT_DTYPE, MAX_FIRED, RESPONSE_SLOT_DTYPE,
                       DecisionFlag, ErrorCode)
from rules.kernel_fired import any_above, any_masked
from shm.ring import bind_entry
from shm.doorbell import EventfdDoorbell


class Active:
    """The ruleset a worker evaluates with, and the counter rows it writes."""

    def __init__(self, ruleset, generation: int, block: Block, index: int, max_batch: int):
        self.ruleset = ruleset
        # the compiled entry point: skips Numba's per-call typing of the record arrays; safe
        # because BatchProcessor always passes the kernel contract's dtypes and layouts
        self.kernel = ruleset.entry
        self.generation = generation
        row = generation % 2
        gens = block.worker(index, "row_generation")
        self.hits = block.rule_row(index, row, "rule_hits")[: max(ruleset.n_rules, 1)]
        self.errors = block.rule_row(index, row, "rule_errors")[: max(ruleset.n_rules, 1)]
        if gens[row] != generation:          # a new generation starts its row from zero;
            self.hits[:] = 0                 # a restarted worker keeps counting on its row
            self.errors[:] = 0
            gens[row] = generation
        words = max(1, (ruleset.n_rules + 63) // 64)
        self.bits = np.zeros((max_batch, words), dtype=np.uint64)
        # enforce rules with block_source: a decision firing one has its fired list published
        # with the ttl (publish_fired), and the ingress blocks its sender (ingress.autoblock)
        self.block_ttl, self.block_mask, self.blocking = block_rules(ruleset, words)


class BatchProcessor:
    """The per-batch body, reusable on its own (bench/alloc.py measures it): evaluate one
    contiguous view of request slots into the response ring. Allocates nothing per batch."""

    def __init__(self, rings: EngineRings, active: Active, block: Block, index: int,
                 max_batch: int, journal=None, feature_arrays: tuple = (),
                 on_journal_unavailable: str = "block"):
        self.rings = rings
        self.index = index
        self.unjournaled_action = ACTION_NAMES.index(on_journal_unavailable)
        self.j_unavailable = block.worker(index, "journal_unavailable")
        self.j_errors = block.worker(index, "journal_write_errors")
        self.feature_arrays = feature_arrays      # shared-memory tables, in kernel order
        self.active = active
        self.journal = journal
        self.gate: ReplyGate | None = None        # cluster.ack sync: replies wait for the stream
        self.out = np.zeros(max_batch, dtype=RESPONSE_SLOT_DTYPE)
        self.out_words = self.out.view(np.uint64).reshape(max_batch, -1)   # append_slots
        self.out_nfired = self.out["nfired"]
        self._any_above = bind_entry(any_above, (numba.typeof(self.out_nfired), numba.int64, numba.int64))
        self._any_masked = bind_entry(any_masked, (numba.typeof(np.zeros((1, 1), np.uint64)), numba.typeof(
            self.out_nfired), numba.typeof(np.zeros(1, np.uint64)), numba.int64))
        self.req_w = rings.request.slots.dtype.itemsize // 8
        self.batches = block.worker(index, "batches")
        self.events = block.worker(index, "events")
        self.khist = block.worker(index, "kernel_hist")
        self.pickup = block.worker(index, "pickup_hist")
        self.stalls = StallRecorder(block, index, rings.worker_idle.strategy)
        self.stop = block.view("supervisor.stop")

    def process(self, v: np.ndarray) -> int:
        """Evaluate ``v`` (request slots), journal, publish; returns len(v). The caller
        releases the request slots afterwards."""
        n = len(v)
        a = self.active
        o = self.out[:n]
        o["token"] = v["token"]
        o["generation"] = a.generation
        arrival = v["arrival_ns"]
        t0 = time.monotonic_ns()               # the ingress stamps arrival on this clock
        waited = t0 - int(arrival[0])          # the oldest event's wait for this worker
        observe(self.pickup, LATENCY_BOUNDS_NS, waited, 1)
        j = self.journal
        seq0 = j.last_seq if j is not None else 0
        if j is not None and not j.try_reserve(n):
            self._unjournaled(o, 0)            # full disk: evaluate (and count) nothing
            t1 = t2 = time.monotonic_ns()
        else:
            a.kernel(v["event"], arrival, o, a.bits[:n], a.hits, a.errors, *a.ruleset.feature_arrays)
            t1 = time.monotonic_ns()
            observe(self.khist, KERNEL_BOUNDS_NS, (t1 - t0) // n, n)     # per-event time, n events
            if j is not None:
                # fsync=batch: append syncs before returning, so before the reply; interval_ms:
                # JournalHousekeeper's thread; none: the OS
                # frombuffer: half the cost of .view for a record dtype (v is contiguous)
                k = j.try_append_slots(np.frombuffer(v, np.uint64), self.req_w, self.out_words, n)
                if k < n:
                    self._unjournaled(o, k)
                elif self.j_unavailable[0]:
                    self._journal_back()
            t2 = time.monotonic_ns()
        if self._any_above(self.out_nfired, n, MAX_FIRED) or (     # rare: full lists, for JSON,
                a.blocking and self._any_masked(a.bits, self.out_nfired, a.block_mask, n)):  # blocks
            self.publish_fired(o, a, n)
        send_replies(self.gate, self.rings, o, self.stop, seq0 + 1, j.last_seq if j is not None else 0)
        t3 = time.monotonic_ns()
        if waited > STALL_NS or t3 - t0 > STALL_NS:
            self.stalls.note((waited, t1 - t0, t2 - t1, t3 - t2), n)
        self.batches[0] += 1
        self.events[0] += n
        return n

    def _unjournaled(self, o: np.ndarray, k: int) -> None:
        """Rows k.. of this batch could not be journaled (a full or failing disk): they get
        journal.on_unavailable's action flagged DEFAULT_JOURNAL (JOURNAL_UNAVAILABLE), never
        a decision that looks durable. k = 0: the kernel did not run, nothing was counted;
        k > 0 (a batch larger than a segment, or a failed fsync=batch sync): the kernel ran,
        so the live tables counted rows the journal will not replay."""
        r = o[k:]
        r["action"] = self.unjournaled_action
        r["flags"] = DecisionFlag.DEFAULT_JOURNAL
        r["score"] = 0.0
        r["nfired"] = 0
        r["error"] = ErrorCode.JOURNAL_UNAVAILABLE
        j = self.journal
        self.j_errors[0] = j.write_errors
        if not self.j_unavailable[0]:
            self.j_unavailable[0] = 1
            print(f"risk-engine: worker {self.index}: journal unavailable ({j.last_error}); events "
                  f"answered {ACTION_NAMES[self.unjournaled_action]} with JOURNAL_UNAVAILABLE, "
                  f"retried every {RETRY_NS / 1e9:g} s", file=sys.stderr)

    def retry_journal(self, n: int) -> None:
        """Idle with the journal unavailable: retry it (at most every RETRY_NS), so that a
        cluster node that handed its partitions over (no events come) learns that the disk
        has room again; ``n``: a whole batch must fit (the next segment allocated)."""
        if self.journal is not None and self.journal.try_reserve(n):
            self._journal_back()

    def _journal_back(self) -> None:
        self.j_unavailable[0] = 0
        self.j_errors[0] = self.journal.write_errors
        print(f"risk-engine: worker {self.index}: journal available again, deciding normally",
              file=sys.stderr)

    def publish_fired(self, o: np.ndarray, a: Active, n: int) -> None:
        """Every fired index of each decision of ``o[:n]`` with more than MAX_FIRED or with
        a fired enforce rule that blocks its source (the longest such ttl in each slot), on
        the fired ring, before the response slots (the ingress reads them first: docs/SHM.md).
        A row the kernel did not decide (nfired 0: journal unavailable) blocks nothing."""
        ring = self.rings.fired
        if ring is None:
            return
        bits, nf = a.bits[:n], self.out_nfired[:n]
        want = nf > MAX_FIRED
        if a.blocking:
            want |= (nf > 0) & (bits & a.block_mask).any(axis=1)
        lists = [(int(o[i]["token"]), np.flatnonzero(np.unpackbits(bits[i].view(np.uint8), bitorder="little")))
                 for i in np.flatnonzero(want).tolist()]
        arr = np.zeros(sum(-(-len(idx) // FIRED_PER_SLOT) for _, idx in lists), FIRED_SLOT_DTYPE)
        j = 0
        for token, idx in lists:
            for c in range(0, len(idx), FIRED_PER_SLOT):
                part = idx[c:c + FIRED_PER_SLOT]
                arr[j]["token"], arr[j]["total"], arr[j]["count"] = token, len(idx), len(part)
                arr[j]["block_ttl_ms"] = a.block_ttl[idx].max() if a.blocking else 0
                arr[j]["idx"][:len(part)] = part
                j += 1
        k = 0
        while k < len(arr):               # in pieces that fit; the ingress drains as it polls
            m = min(len(arr) - k, ring.capacity)
            if ring.try_publish(arr[k:k + m]):
                k += m
                continue
            if self.stop[0] >= 2:
                return
            if self.rings.eventfd_bell is not None:
                self.rings.eventfd_bell.ring()      # wake a sleeping ingress to drain it
            self.rings.response_full_idle.wait()


def serve_journaled_tail(rings: EngineRings, journal, proc: "BatchProcessor") -> int:
    """A restarted worker's first step. Its predecessor may have died after journaling a
    batch but before releasing it: those requests are still in the ring AND already counted
    in the (rebuilt) feature tables. Find the longest prefix of the unreleased requests that
    equals the journal's tail (arrival stamp and event), answer it from the journal, release
    it, and leave the rest to be decided normally. Fired rule indexes are not journaled: these
    few replies carry the journaled action and score with an empty rule list."""
    if journal is None or journal.last_seq == 0:
        return 0
    v, _ = rings.request.try_drain(rings.request.capacity)
    m = min(len(v), journal.last_seq)
    if m == 0:
        return 0
    reader = JournalReader(journal.directory, journal.dtype["event"], journal.schema_hash,
                           journal.writer_id, skip_corrupt=True)   # reported at open
    tail = reader.read_all(from_seq=journal.last_seq - m + 1)
    for j in range(min(m, len(tail)), 0, -1):
        t = tail[len(tail) - j:]
        if (t["arrival_ns"] == v["arrival_ns"][:j]).all() and (t["event"] == v["event"][:j]).all():
            o = proc.out[:j]
            o[:] = 0
            o["token"] = v["token"][:j]
            for f in ("action", "flags", "score", "generation"):
                o[f] = t[f]
            send_replies(proc.gate, rings, o, proc.stop, int(t["seq"][0]), int(t["seq"][-1]))
            rings.request.release(j)
            return j
    return 0


def open_journal(cfg, index: int, seq_floor: int = 0):
    """This worker's journal writer (writer id = worker index), or None when disabled.
    ``seq_floor``: the newest snapshot's seq for this worker (control block journal_seq): the
    sequence never restarts at or below it. Corrupt records it steps over are logged (the
    supervisor's recovery counted them)."""
    d = cfg.durability
    if not d.journal_enabled:
        return None
    j = JournalWriter(d.journal_dir, cfg.schema.dtype, cfg.schema.hash, writer_id=index,
                      config=d.journal_config(), seq_floor=seq_floor)
    for c in j.corrupt:
        print(f"risk-engine: worker {index}: journal continues at seq {j.next_seq} after corrupt "
              f"record(s), kept as found: {c}", file=sys.stderr)
    return j


def standby(run_dir: str) -> int:
    """A spare worker: prepare everything that does not depend on the index, say so in the
    control block (supervisor.standby_pid), then wait for the supervisor to write an index
    on stdin and serve it. EOF (the supervisor retired it, or is gone): exit."""
    procname.become_child("worker standby (loading)")
    prep = Prepared(run_dir, "supervisor.standby_phase")
    warm_up()                                    # the journal's compiled helpers
    gcstats.freeze_after_warmup()
    set_phase(prep.block.view("supervisor.standby_phase"), "ready")
    prep.block.view("supervisor.standby_pid")[0] = os.getpid()
    procname.set_role("worker standby")          # ready (tests and `ps` tell it apart)
    line = sys.stdin.readline()
    if not line.strip():
        return _close(prep)
    return serve(run_dir, int(line), prep)


def _close(prep: Prepared) -> int:
    """Exit before serving (a retired standby, a stop during start-up)."""
    prep.ruleset = None
    prep.store.close()
    prep.block_seg.close()
    return 0


def serve(run_dir: str, index: int, prep: Prepared | None = None) -> int:
    procname.become_child(f"worker {index}")
    plan = prep.plan if prep is not None else rundir.read_plan(run_dir)
    pin_self(plan["workers"][index]["cpu"])                 # before touching the rings
    prep = prep or Prepared(run_dir, f"worker{index}.phase")
    cfg, block, block_seg, store = prep.cfg, prep.block, prep.block_seg, prep.store
    if block.view("supervisor.stop")[0] >= 2:  # stopped while it loaded: nothing opened yet
        return _close(prep)
    set_phase(block.worker(index, "phase"), "warming")
    rings = EngineRings.attach(cfg, plan, index, EventfdDoorbell(plan["eventfd"]))
    rings.prefault()                                        # first touch after pinning
    max_batch = min(cfg.ingress.max_batch, cfg.rings.capacity)
    journal = open_journal(cfg, index, int(block.worker(index, "journal_seq")[0]))
    keeper = JournalHousekeeper(journal) if journal is not None else None

    generation = int(block.view("supervisor.generation")[0])
    rs = prep.ruleset if prep.generation == generation else \
        load_generation(run_dir, generation, cfg.schema, store.fs)     # a reload since
    prep.ruleset = None
    active = Active(rs, generation, block, index, max_batch)
    proc = BatchProcessor(rings, active, block, index, max_batch, journal, store.fs.arrays(),
                          cfg.durability.on_journal_unavailable)
    proc.gate = gate = ReplyGate.attach(cfg, plan, rings, index, proc.stop, proc.unjournaled_action, block)
    fast = FastStep(proc, block, rings.worker_idle.strategy)   # compiles or loads it now
    # the start-up collection (~70 ms) before this worker reports its generation (ready)
    gcstats.freeze_after_warmup(block.worker(index, "gc_hist"))
    set_phase(block.worker(index, "phase"), "ready")
    block.worker(index, "generation")[0] = generation
    resent = serve_journaled_tail(rings, journal, proc)
    if resent:
        print(f"risk-engine: worker {index}: answered {resent} journaled request(s) its "
              f"predecessor left unreleased", file=sys.stderr)

    stop = block.view("supervisor.stop")
    want_gen = block.view("supervisor.generation")
    heartbeat = block.worker(index, "heartbeat_ns")
    py_blocks, blocks_due = block.worker(index, "py_blocks"), 0
    reload_errors = block.worker(index, "reload_errors")
    reloader = GenerationLoader(run_dir, cfg.schema, store.fs)
    refused = -1                        # a generation this worker could not load: not retried
    idle = rings.worker_idle
    wake = idle.strategy

    pause = block.view("supervisor.pause")
    while stop[0] < 2:                  # 1: ingress stops accepting; 2: workers stop
        if pause[0]:                    # a snapshot: hold still between two batches
            hold_for_snapshot(block, index, journal, proc.stalls)
        busy = fast.step() > 0          # each batch released after publishing: a crash
        if busy:                            # before that re-reads it
            wake.last_wake = 0              # the next batch, if any, needed no wake-up
            if want_gen[0] == proc.active.generation:
                continue                    # else a reload is due: a busy worker takes it up too
        else:
            now = heartbeat[0] = time.monotonic_ns()
            if now >= blocks_due:       # idle: a per-event leak shows here (bench.alloc); the
                py_blocks[0] = sys.getallocatedblocks()     # call walks the allocator's
                blocks_due = now + BLOCKS_EVERY_NS          # arenas (0.5 us): not every round
            if proc.j_unavailable[0]:
                proc.retry_journal(max_batch)
        g = int(want_gen[0])
        if g != proc.active.generation and g != refused and not reloader.busy:
            done = reloader.take()
            if done is None:
                reloader.start(g)
            elif isinstance(done[1], Exception):
                reload_errors[0] += 1
                print(f"risk-engine: worker {index}: generation {done[0]} refused: {done[1]}",
                      file=sys.stderr)
                refused = done[0]
            else:                               # swap between two batches
                proc.active = Active(done[1], done[0], block, index, max_batch)
                block.worker(index, "generation")[0] = done[0]
        if not busy and not (gate is not None and gate.wait()):
            idle.wait()                 # (a gate holding replies polls the marks instead)
    fast.close()                        # before the journal unmaps its rows
    if gate is not None:
        gate.close()
    if keeper is not None:
        keeper.stop()
    if journal is not None:
        try:
            journal.sync()
            journal.close()
        except OSError as e:            # a failing disk: what was synced is all there is
            print(f"risk-engine: worker {index}: journal close: {e}", file=sys.stderr)
    rings.close()
    proc.feature_arrays = ()
    store.close()
    block_seg.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="engine.worker")
    ap.add_argument("--run-dir", required=True)
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--index", type=int)
    g.add_argument("--standby", action="store_true",
                   help="prepare, then wait for an index on stdin (engine.supervisor)")
    a = ap.parse_args(argv)
    return standby(a.run_dir) if a.standby else serve(a.run_dir, a.index)


if __name__ == "__main__":
    sys.exit(main())
