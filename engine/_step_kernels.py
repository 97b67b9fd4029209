"""The worker's per-batch step compiled (engine.worker_fast): drain the request ring, run the
rule kernel, journal, publish the responses, count and release, batch after batch, in one call
from Python for every batch found ready.

The rule kernel is the ruleset's own compiled function, chosen at run time: ``_call_kernel``
calls it through its native entry address (Numba's calling convention, the argument types of
the kernel's one signature, which engine.worker_fast checks before it binds), so this module
compiles once and is cached whatever the ruleset. Passing the kernel's dispatcher as an
argument instead costs about 29 us a call (ENGINEERING.md).

The function holds the GIL (no ``nogil``): the journal's housekeeping thread reads the append
state between two Python-level steps of the writer, as it did when Python called the append.

Whatever is rare returns to Python with a code in ``s[S_CODE]``: a batch the journal cannot
take in place (rotation, fsync=batch: the Python path takes it whole), a batch whose fired
lists must be published or whose responses do not fit (Python finishes it from the fired
lists on), a slow batch (Python logs the stall), stop, pause, a new generation, the batch
limit, an empty ring.
"""
from __future__ import annotations

import ctypes

from llvmlite import binding as ll
from numba import njit, types
from numba.extending import intrinsic

from shm import _ring_kernels as RK
from shm._spin_kernels import monotonic_ns
from shm.control import KERNEL_BOUNDS_NS, LATENCY_BOUNDS_NS, STALL_NS, _observe
from shm.journal_append import ST_POS, _append_slots_at
from shm.types import MAX_FIRED

_LIBC = ctypes.CDLL(None)
ll.add_symbol("write", ctypes.cast(_LIBC.write, ctypes.c_void_p).value)
_write = types.ExternalFunction("write", types.int64(types.int32, types.uint64, types.uint64))

# p: the binding's parameters (int64), written by engine.worker_fast
(P_GEN, P_MAX_BATCH, P_REQ_CAP, P_REQ_W, P_RESP_CAP, P_EFD, P_JOURNAL, P_JCAP, P_BLOCKING,
 P_MAX_STEPS, P_STOP, P_PAUSE, P_WANT_GEN, P_PICKUP, P_KHIST, P_BATCHES, P_EVENTS, P_HITS,
 P_ERRORS, P_N_RULES) = range(20)
P_WORDS = 20
# s: what a call leaves for Python: why it returned, and the batch it returned in the middle
# of (C_FIRED, C_FULL, C_BELL) or after (C_STALL)
(S_CODE, S_POS, S_N, S_T0, S_WAITED, S_T1, S_T2, S_T3, S_TS, S_TS2, S_ONE) = range(11)
S_WORDS = 11
# codes: the ring is empty; stop or pause is set; max steps done; a new generation is due;
# the journal cannot take the next batch in place (it is left in the ring); the batch at
# S_POS/S_N is evaluated and journaled, then: its fired lists are due, its responses do not
# fit, or the eventfd write failed; a batch took longer than STALL_NS (done, to be logged)
C_EMPTY, C_HELD, C_LIMIT, C_GEN, C_SLOW, C_FIRED, C_FULL, C_BELL, C_STALL = range(9)


@intrinsic
def _call_kernel(typingctx, addr, events, arrival, out, bits, hits, errors, feats):
    """``kernel(events, arrival, out, bits, hits, errors, *feats)`` where ``addr`` is the native
    entry address of a kernel compiled for exactly these types, with the first three arrays
    as layout 'A' (the generated kernels' signature). A raised exception propagates."""
    if not isinstance(feats, types.BaseTuple):
        return None
    targets = [events.copy(layout="A"), arrival.copy(layout="A"), out.copy(layout="A"),
               bits, hits, errors] + list(feats.types)
    sig = types.none(addr, events, arrival, out, bits, hits, errors, feats)

    def codegen(context, builder, signature, args):
        given = list(signature.args[1:7])
        vals = [context.cast(builder, v, t, u) for v, t, u in zip(args[1:7], given, targets)]
        vals += [builder.extract_value(args[7], i) for i in range(len(feats.types))]
        fnty = context.call_conv.get_function_type(types.none, targets)
        fn = builder.inttoptr(args[0], fnty.as_pointer())
        status, _ = context.call_conv.call_function(builder, fn, types.none, targets, vals)
        with builder.if_then(status.is_error, likely=False):
            context.call_conv.return_status_propagate(builder, status)
        return context.get_dummy_value()
    return sig, codegen


@njit(cache=True, inline="always")
def _now(s):
    return monotonic_ns(s, S_TS)        # time.monotonic_ns's clock: the ingress stamps arrival


@njit(cache=True, inline="always")
def _fired_due(o, bits, mask, n, blocking):
    """A decision with more than MAX_FIRED fired rules, or (``blocking``) a decided one that
    fired an enforce rule with block_source: its list goes on the fired ring first."""
    for i in range(n):
        if o[i].nfired > MAX_FIRED:
            return True
    if blocking:
        for i in range(n):
            if o[i].nfired > 0:
                for w in range(mask.shape[0]):
                    if bits[i, w] & mask[w]:
                        return True
    return False


@njit(cache=True)
def run(addr, req_hdr, events, arrival, tokens, req_words, resp_hdr, resp_slots, out, out_words,
        bits, block_mask, jwords, jst, jmask, cells, p, s, feats):
    """Batches while the request ring has them (at most ``p[P_MAX_STEPS]``): the number
    done; why it returned in ``s[S_CODE]``. Per batch, as BatchProcessor.process: tokens and
    generation, the pickup wait observed, the kernel, its time observed, the journal append,
    the responses published (the eventfd rung if the ingress sleeps), counters, release."""
    done = 0
    cap = p[P_REQ_CAP]
    rw = p[P_REQ_W]
    hits = cells[p[P_HITS]:p[P_HITS] + p[P_N_RULES]]
    errors = cells[p[P_ERRORS]:p[P_ERRORS] + p[P_N_RULES]]
    pickup = cells[p[P_PICKUP]:p[P_PICKUP] + LATENCY_BOUNDS_NS.shape[0] + 2]
    khist = cells[p[P_KHIST]:p[P_KHIST] + KERNEL_BOUNDS_NS.shape[0] + 2]
    while True:
        if cells[p[P_STOP]] >= 2 or cells[p[P_PAUSE]] != 0:
            s[S_CODE] = C_HELD
            return done
        if done >= p[P_MAX_STEPS]:
            s[S_CODE] = C_LIMIT
            return done
        pos, n = RK._readable(req_hdr, p[P_MAX_BATCH])
        if n <= 0:
            s[S_CODE] = C_EMPTY
            return done
        i0 = pos & (cap - 1)
        if n > cap - i0:
            n = cap - i0                          # the part before the wrap, as try_drain's v1
        if p[P_JOURNAL] and (jst[ST_POS] + n > p[P_JCAP] or jst[ST_POS] + n > jwords.shape[0]):
            s[S_CODE] = C_SLOW
            return done
        o = out[:n]
        for i in range(n):
            o[i].token = tokens[i0 + i]
            o[i].generation = p[P_GEN]
        t0 = _now(s)
        waited = t0 - arrival[i0]
        _observe(pickup, LATENCY_BOUNDS_NS, waited, 1)
        _call_kernel(addr, events[i0:i0 + n], arrival[i0:i0 + n], o, bits, hits, errors, feats)
        t1 = _now(s)
        _observe(khist, KERNEL_BOUNDS_NS, (t1 - t0) // n, n)
        if p[P_JOURNAL]:
            _append_slots_at(jwords, jst, req_words[i0 * rw:(i0 + n) * rw], rw, jmask, out_words, n)
        t2 = _now(s)
        s[S_POS], s[S_N], s[S_T0], s[S_WAITED], s[S_T1], s[S_T2] = pos, n, t0, waited, t1, t2
        if _fired_due(o, bits, block_mask, n, p[P_BLOCKING] != 0):
            s[S_CODE] = C_FIRED
            return done
        rc = RK._try_publish(resp_hdr, resp_slots, o, p[P_RESP_CAP])
        if rc < 0:
            s[S_CODE] = C_FULL
            return done
        if rc > 0 and p[P_EFD] >= 0:
            s[S_ONE] = 1
            if _write(p[P_EFD], s.ctypes.data + S_ONE * 8, 8) != 8:
                s[S_CODE] = C_BELL
                return done
        t3 = _now(s)
        cells[p[P_BATCHES]] += 1
        cells[p[P_EVENTS]] += n
        RK._release(req_hdr, n)
        done += 1
        if waited > STALL_NS or t3 - t0 > STALL_NS:
            s[S_T3] = t3
            s[S_CODE] = C_STALL
            return done
        if cells[p[P_WANT_GEN]] != p[P_GEN]:
            s[S_CODE] = C_GEN
            return done
