"""Binary wire format, protocol version 1: every offset and size lives here (docs/PROTOCOL.md).

All integers are little-endian. A request frame is a 40-byte header followed by N packed event
records in the schema's layout (``Schema.dtype``, ``Schema.record_size`` bytes each). A reply
frame is a 24-byte header followed by N 56-byte decision records, or, when the request-level
error code is not OK, by a UTF-8 message of ``msg_len`` bytes (N = 0)::

    request header (40 B)                     reply header (24 B)
    off size field                            off size field
     0   4   magic  'R' 'S' 'K' 'Q'            0   4   magic  'R' 'S' 'K' 'A'
     4   2   version (1)                       4   2   version (1)
     6   2   flags  (HeaderFlag bits)          6   2   error  (ErrorCode, 0 = OK)
     8   8   schema_hash                       8   4   count  N (0 on error)
    16   4   count  N (1..max_batch)          12   4   msg_len (bytes of message after header)
    20   4   deadline_us (0 = engine default) 16   8   request_id (0 if unreadable)
    24   8   client_id
    32   8   request_id

    decision record (56 B)
     0   1   action   (Action: 0 allow, 1 review, 2 block)
     1   1   flags    (DecisionFlag bits)
     2   2   error    (ErrorCode; OK, or why the default action was used)
     4   2   nfired   (total fired, enforce + shadow; may exceed MAX_FIRED)
     6   2   reserved (0)
     8   4   generation (ruleset generation that decided)
    12   4   reserved (0)
    16   8   score    (f64)
    24  32   fired    (u16[MAX_FIRED] rule indexes, ascending; first min(nfired, 16) valid)

The header is parsed with ``struct`` (cheaper than numpy for 40 bytes);
the numpy dtypes below describe the same layout and are checked against the struct formats.
"""
from __future__ import annotations

import enum
import struct

import numpy as np

from shm.types import MAX_FIRED

PROTOCOL_VERSION = 1
REQUEST_MAGIC = int.from_bytes(b"RSKQ", "little")
REPLY_MAGIC = int.from_bytes(b"RSKA", "little")
JSON_FIRST_BYTE = ord("{")


class HeaderFlag(enum.IntFlag):
    """Request header flag bits. Any other bit set is rejected with ``BAD_FLAGS``."""
    NONE = 0
    RETRY = 1      # the client resends a request it already sent (Lazy Pirate); same ids


KNOWN_HEADER_FLAGS = int(HeaderFlag.RETRY)

REQUEST_HEADER = struct.Struct("<IHHQIIQQ")
REPLY_HEADER = struct.Struct("<IHHIIQ")

DECISION = struct.Struct(f"<BBHHxxIxxxxd{MAX_FIRED}H")   # one decision record (N = 1 path)

REQUEST_HEADER_DTYPE = np.dtype({
    "names": ["magic", "version", "flags", "schema_hash", "count", "deadline_us",
              "client_id", "request_id"],
    "formats": ["<u4", "<u2", "<u2", "<u8", "<u4", "<u4", "<u8", "<u8"],
    "offsets": [0, 4, 6, 8, 16, 20, 24, 32], "itemsize": 40})

REPLY_HEADER_DTYPE = np.dtype({
    "names": ["magic", "version", "error", "count", "msg_len", "request_id"],
    "formats": ["<u4", "<u2", "<u2", "<u4", "<u4", "<u8"],
    "offsets": [0, 4, 6, 8, 12, 16], "itemsize": 24})

DECISION_DTYPE = np.dtype({
    "names": ["action", "flags", "error", "nfired", "generation", "score", "fired"],
    "formats": ["u1", "u1", "<u2", "<u2", "<u4", "<f8", ("<u2", (MAX_FIRED,))],
    "offsets": [0, 1, 2, 4, 8, 16, 24], "itemsize": 56})

REQUEST_HEADER_SIZE = REQUEST_HEADER.size
REPLY_HEADER_SIZE = REPLY_HEADER.size
DECISION_SIZE = DECISION_DTYPE.itemsize
MAX_ERROR_MESSAGE_BYTES = 1024

assert REQUEST_HEADER_DTYPE.itemsize == REQUEST_HEADER_SIZE == 40
assert REPLY_HEADER_DTYPE.itemsize == REPLY_HEADER_SIZE == 24
assert DECISION_SIZE == 24 + 2 * MAX_FIRED == DECISION.size


def pack_request(schema_hash: int, records: np.ndarray, client_id: int, request_id: int,
                 deadline_us: int = 0, flags: int = 0) -> bytes:
    """A binary request frame for ``records`` (already of the schema's dtype)."""
    head = REQUEST_HEADER.pack(REQUEST_MAGIC, PROTOCOL_VERSION, flags, schema_hash,
                               len(records), deadline_us, client_id, request_id)
    return head + np.ascontiguousarray(records).tobytes()


def pack_reply_header(error: int, count: int, request_id: int, msg_len: int = 0) -> bytes:
    return REPLY_HEADER.pack(REPLY_MAGIC, PROTOCOL_VERSION, error, count, msg_len, request_id)


def pack_error_reply(request_id: int | None, code: int, message: str) -> bytes:
    """Reply header with ``code`` and N = 0, then the UTF-8 message (at most 1024 bytes)."""
    msg = message.encode("utf-8", "replace")[:MAX_ERROR_MESSAGE_BYTES]
    return pack_reply_header(code, 0, request_id or 0, len(msg)) + msg


def unpack_reply_header(frame: bytes) -> tuple[int, int, int, str]:
    """Client side: ``(request_id, error, count, message)`` of a reply, its length checked.

    Raises ``ValueError`` naming the offending field when the frame is not a valid reply.
    """
    if len(frame) < REPLY_HEADER_SIZE:
        raise ValueError(f"reply too short: len={len(frame)} < {REPLY_HEADER_SIZE}")
    magic, version, error, count, msg_len, request_id = REPLY_HEADER.unpack_from(frame)
    if magic != REPLY_MAGIC or version != PROTOCOL_VERSION:
        raise ValueError(f"bad reply header: magic=0x{magic:08x} version={version}")
    body = len(frame) - REPLY_HEADER_SIZE
    if error:
        if count != 0 or msg_len != body:
            raise ValueError(f"bad error reply: count={count} msg_len={msg_len} body={body}")
        return request_id, error, 0, bytes(frame[REPLY_HEADER_SIZE:]).decode("utf-8", "replace")
    if msg_len != 0 or body != count * DECISION_SIZE:
        raise ValueError(f"bad reply length: count={count} body={body} msg_len={msg_len}")
    return request_id, 0, count, ""


def unpack_reply(frame: bytes) -> tuple[int, int, np.ndarray | None, str]:
    """Client side: ``(request_id, error, decisions of DECISION_DTYPE or None, message)``."""
    request_id, error, count, msg = unpack_reply_header(frame)
    if error:
        return request_id, error, None, msg
    dec = np.frombuffer(frame, DECISION_DTYPE, count=count, offset=REPLY_HEADER_SIZE).copy()
    return request_id, 0, dec, ""


class WireError(Exception):
    """A request that must be answered with an error reply instead of being evaluated.

    ``code`` is the stable ``ErrorCode``; ``request_id`` is None when it could not be read;
    ``kind`` ('binary' | 'json') selects the reply encoding; ``envelope`` is set by
    ``split_envelope`` so the ROUTER can still address the reply.
    """

    def __init__(self, code, message: str, request_id: int | None = None,
                 kind: str = "binary", envelope: list | None = None):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.request_id = request_id
        self.kind = kind
        self.envelope = envelope
