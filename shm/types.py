"""The contract between layers: action codes, error codes, decision flags, ring slot layouts.

Everything that crosses a process or the wire is defined here once. Codes are stable: a code
is never renumbered or reused (clients switch on them); new codes are appended.
"""
from __future__ import annotations

import enum

import numpy as np


class Action(enum.IntEnum):
    """Decision action; a larger value is more severe (block > review > allow)."""
    ALLOW = 0
    REVIEW = 1
    BLOCK = 2


ACTION_NAMES = ("allow", "review", "block")


class ErrorCode(enum.IntEnum):
    """Stable error codes, in binary replies (u16) and by name in JSON replies."""
    OK = 0
    BAD_FRAME = 1          # missing/extra frames, empty frame
    FRAME_TOO_LARGE = 2    # frame over ingress.max_frame_bytes
    BAD_MAGIC = 3
    BAD_VERSION = 4
    SCHEMA_MISMATCH = 5    # header schema hash differs from the engine's
    BAD_COUNT = 6          # N = 0 or N > max_batch
    BAD_LENGTH = 7         # body length != N * record size
    BAD_JSON = 8           # not valid JSON / not an object / bad shape
    UNKNOWN_FIELD = 9
    MISSING_FIELD = 10
    BAD_FIELD = 11         # wrong JSON type for the field
    OUT_OF_RANGE = 12      # integer out of the field's range, bytes too long
    NON_FINITE = 13        # NaN or Inf in a float field
    OVERLOADED = 14        # a ring was full; nothing was evaluated
    TIMEOUT = 15           # deadline passed before the decision was ready
    WORKER_LOST = 16       # the worker died with the event in flight
    SHUTTING_DOWN = 17
    INTERNAL = 18
    BAD_FLAGS = 19         # unknown header flag bits
    JOURNAL_UNAVAILABLE = 20   # the journal cannot be written (full disk, I/O error): the
                               # event was not evaluated; journal.on_unavailable's action
    IDEMPOTENCY_CONFLICT = 21   # (client_id, request_id) reused for other events
    UNKNOWN_GENERATION = 22     # a rules request for a generation the engine never loaded


class DecisionFlag(enum.IntFlag):
    """Per-decision flags (binary reply u8). A flagged decision was not fully evaluated."""
    NONE = 0
    FIRED_OVERFLOW = 1     # more fired rules than MAX_FIRED; list truncated
    DEFAULT_TIMEOUT = 2    # the configured default action, deadline passed
    DEFAULT_OVERLOAD = 4   # the configured default action, engine overloaded
    DEFAULT_WORKER_LOST = 8
    DUPLICATE = 16         # replayed from the idempotency window (retry of a seen request)
    EVAL_ERROR = 32        # at least one rule raised (counted; see rules.on_error)
    DEFAULT_JOURNAL = 64   # the configured default action (journal.on_unavailable): the event
                           # could not be journaled, so it was not evaluated nor counted


MAX_FIRED = 16             # fired rule indexes carried per decision
MAX_RULES = 2048           # enabled rules in one ruleset: the control block keeps a hit and an
                           # error counter row of this size per worker (shm.control)


def _padded(fields: list, multiple: int = 64) -> np.dtype:
    dt = np.dtype(fields, align=True)
    size = (dt.itemsize + multiple - 1) // multiple * multiple
    return np.dtype({"names": dt.names, "formats": [dt.fields[n][0] for n in dt.names],
                     "offsets": [dt.fields[n][1] for n in dt.names], "itemsize": size})


def request_slot_dtype(event_dtype: np.dtype) -> np.dtype:
    """Request ring slot: routing token, arrival time, the request's client_id and request_id,
    then the event record; 64 B multiple.

    token: opaque to the worker, echoed in the response slot (the ingress encodes
    pending-request index and event index in it). client_id and request_id: the request's
    header ids, journaled with the event (``risk-engine explain --request``).
    """
    return _padded([("token", np.uint64), ("arrival_ns", np.int64), ("client_id", np.uint64),
                    ("request_id", np.uint64), ("event", event_dtype)])


RESPONSE_SLOT_DTYPE = _padded([
    ("token", np.uint64),
    ("score", np.float64),
    ("generation", np.uint32),     # ruleset generation that decided (see engine reload)
    ("action", np.uint8),
    ("flags", np.uint8),
    ("nfired", np.uint16),         # total fired (enforce + shadow), may exceed MAX_FIRED
    ("fired", np.uint16, (MAX_FIRED,)),   # first MAX_FIRED fired rule indexes, ascending
    ("error", np.uint16),          # ErrorCode: OK, or why a default decision was used
])

FIRED_PER_SLOT = 24        # rule indexes per fired-list slot
# The full fired list of a decision with more than MAX_FIRED fired rules: the worker publishes
# it on its fired ring (one slot per FIRED_PER_SLOT indexes) before the response slot, so
# JSON replies can list every fired rule; binary replies carry the response slot's MAX_FIRED.
FIRED_SLOT_DTYPE = np.dtype([
    ("token", np.uint64),          # the response slot's token
    ("total", np.uint16),          # fired rules of that decision (= its nfired)
    ("count", np.uint16),          # valid entries of idx in this slot
    ("reserved", np.uint32),
    ("idx", np.uint16, (FIRED_PER_SLOT,)),   # fired rule indexes, ascending across slots
])
