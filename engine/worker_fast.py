"""The worker's batch loop with one compiled call per wake-up (engine._step_kernels.run),
instead of BatchProcessor.process's dozen Python-level calls a batch.

``FastStep(proc, wake).step()`` takes every batch the request ring holds now (up to
MAX_STEPS) and returns how many it did; the worker's loop calls it where it called
``process`` on one drained batch. Same order and same effects per batch as
BatchProcessor.process (kernel -> journal -> publish -> count -> release); what is rare goes
through Python:
- the whole batch, by BatchProcessor.process, whenever the in-place path does not apply: a
  journal that must rotate first, fsync=batch, a failed sync, an unavailable journal,
  ``cluster.ack: sync`` (the reply gate), a kernel whose signature is not the one bound;
- the end of a batch (from its fired lists on) when fired lists are due or the response
  ring is full; a slow batch's stall log.
"""
from __future__ import annotations

import sys
import threading
import time

import numba
import numpy as np

from engine import _step_kernels as K
from engine.ackgate import publish_responses
from shm.control import STALL_NS
from shm.journal_append import ST_WORDS
from shm.ring import bind_entry

MAX_STEPS = 16               # batches per call: the GIL is handed to the journal's thread between


def kernel_address(kernel, sig: tuple) -> int:
    """The native entry address of ``kernel``'s one compiled signature if it is ``sig``, else 0."""
    if len(kernel.signatures) != 1 or tuple(kernel.signatures[0]) != tuple(sig):
        return 0
    cres = kernel.overloads[kernel.signatures[0]]
    return int(cres.library.get_pointer_to_function(cres.fndesc.mangled_name) or 0)


def _cell(cells: np.ndarray, view: np.ndarray) -> int:
    """Index in ``cells`` of ``view``'s first cell (a view of the same control block)."""
    off, rem = divmod(view.ctypes.data - cells.ctypes.data, cells.itemsize)
    if rem or not 0 <= off <= len(cells) - len(view) or view.dtype != cells.dtype:
        raise ValueError("a worker cell outside its control block's int64 cells")
    return off


class FastStep:
    def __init__(self, proc, block, wake):
        self.proc, self.wake = proc, wake
        rings = proc.rings
        req, resp = rings.request, rings.response
        self.req, self.resp = req, resp
        self.cells = cells = block.cells
        self.p = p = np.zeros(K.P_WORDS, np.int64)
        self.s = np.zeros(K.S_WORDS, np.int64)
        p[K.P_MAX_BATCH] = len(proc.out)
        p[K.P_REQ_CAP], p[K.P_REQ_W], p[K.P_RESP_CAP] = req.capacity, proc.req_w, resp.capacity
        bell = resp.doorbell
        p[K.P_EFD] = bell.fileno() if bell is not None else -1
        p[K.P_MAX_STEPS] = MAX_STEPS
        for word, view in ((K.P_STOP, proc.stop), (K.P_PAUSE, block.view("supervisor.pause")),
                           (K.P_WANT_GEN, block.view("supervisor.generation")),
                           (K.P_PICKUP, proc.pickup), (K.P_KHIST, proc.khist),
                           (K.P_BATCHES, proc.batches), (K.P_EVENTS, proc.events)):
            p[word] = _cell(cells, view)
        slots = req.slots
        self.events, self.arrival, self.tokens = slots["event"], slots["arrival_ns"], slots["token"]
        self.req_words = slots.view(np.uint64).reshape(-1)
        self._active = self._entry = self._words = None
        self._args: tuple = ()
        self._entries: dict = {}             # argument types -> run's compiled entry point
        self._compiling: threading.Thread | None = None
        self._bind(proc.active)
        words = self._journal_words()
        if words is not None and self._addr:
            self._arguments(words, wait=True)  # compiled or loaded from the cache now

    def _bind(self, a) -> None:
        """Bind the active ruleset: its kernel's address (0: it has another signature, and
        every batch takes the Python path), its rows of counters, its bits."""
        proc, p = self.proc, self.p
        self._active = a
        feats = tuple(a.ruleset.feature_arrays)
        typ = numba.typeof
        sig = (typ(self.events), typ(self.arrival), typ(proc.out).copy(layout="A"), typ(a.bits),
               typ(a.hits), typ(a.errors)) + tuple(typ(f) for f in feats)
        self._addr = kernel_address(a.ruleset.kernel, sig)
        p[K.P_GEN], p[K.P_BLOCKING] = a.generation, int(a.blocking)
        p[K.P_HITS], p[K.P_ERRORS] = _cell(self.cells, a.hits), _cell(self.cells, a.errors)
        p[K.P_N_RULES] = len(a.hits)
        if len(a.errors) != len(a.hits):
            raise ValueError("rule hits and errors rows differ in length")
        j = proc.journal
        jst, jmask = (j._st, j._slot_mask) if j is not None else (np.zeros(ST_WORDS, np.int64),
                                                                  np.zeros(1, np.uint64))
        self._head = (self._addr, self.req.header, self.events, self.arrival, self.tokens,
                      self.req_words, self.resp.header, self.resp.slots, proc.out, proc.out_words,
                      a.bits, a.block_mask)
        self._tail = (jst, jmask, self.cells, p, self.s, feats)
        self.close()                          # the old rows' references too

    def _journal_words(self):
        """The journal segment's rows when the in-place append applies now, else None."""
        j = self.proc.journal
        if j is None:
            return self._no_words
        if j._words is None or j._sync_each or j._sync_failed or self.proc.j_unavailable[0]:
            return None
        return j._words

    _no_words = np.zeros((0, 1), np.uint64)

    def step(self) -> int:
        """Take the batches the request ring holds now: how many were done."""
        proc = self.proc
        if proc.active is not self._active:
            self._bind(proc.active)
        if not self._ready():
            self.close()
            return self._python()
        done = self._entry(*self._args)
        code = int(self.s[K.S_CODE])
        if code <= K.C_GEN:
            return done
        if done:
            self.wake.last_wake = 0           # as the loop sets it after each busy batch
        if code == K.C_SLOW:
            self.close()                      # the Python path may rotate: unmap the old rows
            return done + self._python()
        if code == K.C_STALL:
            s = self.s
            t0 = int(s[K.S_T0])
            proc.stalls.note((int(s[K.S_WAITED]), int(s[K.S_T1]) - t0, int(s[K.S_T2]) - int(s[K.S_T1]),
                              int(s[K.S_T3]) - int(s[K.S_T2])), int(s[K.S_N]))
            return done
        self._finish(code)
        return done + 1

    def _ready(self) -> bool:
        """Whether run applies now, its arguments bound to the journal's current rows. (No
        reference to those rows may outlive this call on the Python path: a rotation there
        retires the map, which the journal's thread then closes.)"""
        words = self._journal_words()
        if words is None or self.proc.gate is not None or not self._addr:
            return False
        return words is self._words or self._arguments(words)

    def _arguments(self, words, wait: bool = False) -> bool:
        """run's arguments with the journal's current rows, and its entry point for their
        types; False while it is not compiled yet. A ruleset with a new number of feature
        arrays needs its own: compiled (or loaded from the cache) on a thread, as the
        ruleset's kernel was (engine.worker_prepare), while the Python path serves;
        ``wait``: here and now (start-up). A compile that failed leaves the Python path to
        this ruleset."""
        j = self.proc.journal
        self.p[K.P_JOURNAL], self.p[K.P_JCAP] = (1, j._cap) if j is not None else (0, 0)
        args = self._head + (words,) + self._tail
        sig = tuple(numba.typeof(x) for x in args)
        if sig not in self._entries:
            if not wait:
                if self._compiling is None:
                    self._compiling = threading.Thread(target=self._compile, args=(sig,),
                                                       daemon=True, name="worker step compile")
                    self._compiling.start()
                return False
            self._compile(sig)
        entry = self._entries[sig]
        if entry is None:                     # failed to compile: said on stderr
            self._addr = 0
            return False
        self._entry, self._words, self._args = entry, words, args
        return True

    def _compile(self, sig: tuple) -> None:
        try:
            self._entries[sig] = bind_entry(K.run, sig)
        except Exception as e:                 # noqa: BLE001 (any compile error: Python path)
            self._entries[sig] = None
            print(f"risk-engine: worker: the compiled step for this ruleset failed to compile, "
                  f"the Python step serves it: {e}", file=sys.stderr)
        finally:
            self._compiling = None

    def close(self) -> None:
        """Drop the references to the journal's mapped rows (a rotation, or the journal's
        close, unmaps them: an exported buffer would make that fail)."""
        self._words, self._args = None, ()

    def _python(self) -> int:
        """One batch by BatchProcessor.process (the path that covers every case)."""
        v1, _ = self.req.try_drain(len(self.proc.out))
        if not len(v1):
            return 0
        self.req.release(self.proc.process(v1))
        return 1

    def _finish(self, code: int) -> None:
        """The rest of the batch ``run`` returned in the middle of: fired lists (C_FIRED),
        responses (C_FIRED, C_FULL) or the eventfd (C_BELL), then as ``process``."""
        proc, s, a = self.proc, self.s, self._active
        n = int(s[K.S_N])
        o = proc.out[:n]
        if code == K.C_FIRED:
            proc.publish_fired(o, a, n)
        if code == K.C_BELL:
            self.resp.doorbell.ring()
        else:
            publish_responses(proc.rings, o, proc.stop)
        t3 = time.monotonic_ns()
        t0, waited, t1, t2 = (int(s[w]) for w in (K.S_T0, K.S_WAITED, K.S_T1, K.S_T2))
        if waited > STALL_NS or t3 - t0 > STALL_NS:
            proc.stalls.note((waited, t1 - t0, t2 - t1, t3 - t2), n)
        proc.batches[0] += 1
        proc.events[0] += n
        self.req.readable(n)                  # the ring's own count of drained slots
        self.req.release(n)
