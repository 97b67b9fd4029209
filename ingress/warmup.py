"""The ingress's warm-up: every per-request step that touches nothing shared, run once before
the ingress reports ready, for each kind of request (one binary event: the fast path; a
binary batch of 2 and of ingress.max_batch events, one and two JSON events: the general path).

The paths bind most of their kernels when they are built (bind_entry); the calls below go
through Numba's dispatcher on first use instead, and would otherwise be compiled (cold
cache: seconds) or loaded from the cache while the first request of their kind waits:
the records hash of a keyed request, the request histograms, a fast-path default decision
(a deadline that passed). Decoding and encoding each kind also runs their Python and numpy
code once. Nothing reaches a ring, the idempotency window or a counter.
"""
from __future__ import annotations

import json

import numpy as np

from shm.control import LATENCY_BOUNDS_NS, observe_request
from shm.types import RESPONSE_SLOT_DTYPE, Action, DecisionFlag, ErrorCode
from ingress import _fast_kernels as FK
from ingress import wire
from ingress.dedup import records_hash


def sample_frames(codec) -> list[bytes]:
    """Request bodies of every kind the paths tell apart, with zero-valued events."""
    dt, n_max = codec.schema.dtype, codec.max_batch
    out = []
    for n in sorted({1, min(2, n_max), n_max}):
        out.append(wire.pack_request(codec.schema.hash, np.zeros(n, dt), 1, n, 0, 0))
    for n in sorted({1, min(2, n_max)}):
        events = codec.events.to_events(np.zeros(n, dt))
        out.append(json.dumps({"request_id": n, "client_id": 1, "events": events}).encode())
    return [f for f in out if len(f) <= codec.max_frame_bytes]


def warm_up(codec, fast, general) -> int:
    """Run the steps (module doc) for each sample; returns how many requests it decoded."""
    frames = sample_frames(codec)
    for frame in frames:
        req = codec.decode(frame)
        records_hash(req.records, general.fmask)
        slots = np.zeros(len(req.records), RESPONSE_SLOT_DTYPE)
        slots["generation"] = 1
        codec.encode_reply(req, slots, None, None)
        codec.encode_error(req.kind, req.request_id, ErrorCode.OVERLOADED, "warm-up")
    # scratch copies of the histogram views: the same types, no counts added
    observe_request(general.c_eval[0].copy(), general.c_stage.copy(), LATENCY_BOUNDS_NS, 1, 2, 3, 4)
    FK.default_decision(fast.fdec[0].copy(), int(Action.BLOCK), int(DecisionFlag.DEFAULT_TIMEOUT),
                        int(ErrorCode.TIMEOUT))
    return len(frames)
