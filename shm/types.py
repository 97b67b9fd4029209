"""The contract between layers: action codes, error codes, decision flags, ring slot layouts.

Everything that crosses a process or the wire is defined here once. This module imports only
the layout vocabulary (shm.descriptor), nothing else of ours. Codes are stable: a code
is never renumbered or reused (clients switch on them); new codes are appended.
"""
from __future__ import annotations

import enum

import numpy as np

from shm.descriptor import CACHE_LINE_BYTES, WORD_BYTES, Builder, Layout


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
    NOT_OWNER = 23              # a cluster node without the lease on an event's partition:
                                # nothing evaluated; the message names the owner (redirect)
    REPLICATION_FAILED = 24     # cluster.ack sync: the event's record may never reach the
                                # replication stream (fenced off, term ended): not a decision


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
    DEFAULT_REPLICATION = 128   # journal.on_unavailable's action: the event was evaluated
                                # but its record may not be in the cluster's stream (ack: sync)


MAX_FIRED = 16             # fired rule indexes carried per decision
MAX_RULES = 2048           # enabled rules in one ruleset: the control block keeps a hit and an
                           # error counter row of this size per worker (shm.control)


# --- ring slots and the journal record ---------------------------------------------------
# The worker journals a batch straight from its ring slots, word by word
# (shm.journal_append._append_slots), so the layouts below are built from shared
# descriptors (shm.descriptor) and are equal by construction, not by a check:
#
#   request slot     | token | arrival_ns | client_id | request_id | event ... | pad to 64 B
#   journal record   | seq   | arrival_ns | client_id | request_id | event ... | DECISION | check
#   response slot    | token | DECISION | nfired | fired[MAX_FIRED] | error    | pad to 64 B
#   DECISION         | score f64 | generation u32 | action u8 | flags u8 |  (14 B, 8-aligned)
#
# A request slot and a journal record share every word after the first (event_words); a
# response slot and a journal record share DECISION (a group placed at an 8-byte boundary).

def _head(name: str, first: str) -> Builder:
    return (Builder(name).field(first, fmt=np.uint64).field("arrival_ns", fmt=np.int64)
            .field("client_id", fmt=np.uint64).field("request_id", fmt=np.uint64))


def event_words(name: str, first: str, event_dtype: np.dtype) -> Builder:
    """A fresh builder holding the words a request slot and a journal record share: word 0
    ``first`` (the slot's token, the record's seq), arrival_ns, client_id, request_id, then
    the event record at the next 8-byte boundary."""
    return _head(name, first).field("event", fmt=event_dtype, align=WORD_BYTES)


DECISION = (Builder("decision").field("score", fmt=np.float64).field("generation", fmt=np.uint32)
            .field("action", fmt=np.uint8).field("flags", fmt=np.uint8).build())
# the request slot's words before the event, whatever the schema: the ingress's kernels
# write them at these offsets (ingress._fast_kernels.write_slot)
REQUEST_HEAD = _head("request slot head", "token").build()
SLOT_TOKEN_OFFSET = REQUEST_HEAD.offset("token")
SLOT_ARRIVAL_OFFSET = REQUEST_HEAD.offset("arrival_ns")
SLOT_CLIENT_ID_OFFSET = REQUEST_HEAD.offset("client_id")
SLOT_REQUEST_ID_OFFSET = REQUEST_HEAD.offset("request_id")


def request_slot_layout(event_dtype: np.dtype) -> Layout:
    return event_words("request slot", "token", event_dtype).build(align=CACHE_LINE_BYTES)


def request_slot_dtype(event_dtype: np.dtype) -> np.dtype:
    """Request ring slot: routing token, arrival time, the request's client_id and request_id,
    then the event record; 64 B multiple.

    token: opaque to the worker, echoed in the response slot (the ingress encodes
    pending-request index and event index in it: shm.tokens). client_id and request_id: the
    request's header ids, journaled with the event (``risk-engine explain --request``).
    """
    return request_slot_layout(event_dtype).dtype()


RESPONSE_SLOT = (Builder("response slot")
                 .field("token", fmt=np.uint64)
                 .group(DECISION)                 # generation: the ruleset that decided
                 .field("nfired", fmt=np.uint16)  # total fired (enforce + shadow), may exceed MAX_FIRED
                 .field("fired", fmt=(np.uint16, (MAX_FIRED,)))   # first MAX_FIRED fired rule indexes, ascending
                 .field("error", fmt=np.uint16)   # ErrorCode: OK, or why a default decision was used
                 .build(align=CACHE_LINE_BYTES))
RESPONSE_SLOT_DTYPE = RESPONSE_SLOT.dtype()

FIRED_PER_SLOT = 24        # rule indexes per fired-list slot
# The full fired list of a decision with more than MAX_FIRED fired rules: the worker publishes
# it on its fired ring (one slot per FIRED_PER_SLOT indexes) before the response slot, so
# JSON replies can list every fired rule; binary replies carry the response slot's MAX_FIRED.
FIRED_SLOT = (Builder("fired slot")
              .field("token", fmt=np.uint64)     # the response slot's token
              .field("total", fmt=np.uint16)     # fired rules of that decision (= its nfired)
              .field("count", fmt=np.uint16)     # valid entries of idx in this slot
              .field("block_ttl_ms", fmt=np.uint32)  # > 0: an enforce rule with block_source fired
              .field("idx", fmt=(np.uint16, (FIRED_PER_SLOT,)))   # fired rule indexes, ascending across slots
              .build(align=CACHE_LINE_BYTES))
FIRED_SLOT_DTYPE = FIRED_SLOT.dtype()
