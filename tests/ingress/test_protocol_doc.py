"""docs/PROTOCOL.md stays true: its hex dumps are the codec's bytes, its tables name every code."""
import json
from pathlib import Path

import numpy as np

from engine.schema import Schema
from engine.types import RESPONSE_SLOT_DTYPE, DecisionFlag, ErrorCode
from ingress import wire
from ingress.codec import Codec, RulesetMeta

DOC = (Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md").read_text()
EXAMPLE = Schema.build({"account_id": "u64", "amount": "f64", "country": "bytes2", "ip": "u32",
                        "ts_ms": "i64"}, "account_id")
CODEC = Codec(EXAMPLE, 4096, 1 << 20)
EVENT = {"account_id": 42, "amount": 250.0, "country": "FR", "ip": 3232235777,
         "ts_ms": 1764288000000}


def hexdump(b: bytes) -> str:
    lines = []
    for off in range(0, len(b), 16):
        chunk = b[off:off + 16]
        hx = " ".join(f"{x:02x}" for x in chunk[:8]) + "  " + " ".join(f"{x:02x}" for x in chunk[8:])
        lines.append(f"{off:04x}  {hx}".rstrip())
    return "\n".join(lines)


def example_frames() -> dict[str, bytes]:
    recs = CODEC.events.to_records([EVENT])
    req = wire.pack_request(EXAMPLE.hash, recs, 0x1122334455667788, 7, 5000, 0)
    slots = np.zeros(1, RESPONSE_SLOT_DTYPE)
    slots["action"], slots["score"], slots["generation"], slots["nfired"] = 2, 87.5, 3, 2
    slots["fired"][0, :2] = [0, 4]
    reply = CODEC.encode_reply(CODEC.decode(req), slots)
    err = CODEC.encode_error("binary", 7, ErrorCode.SCHEMA_MISMATCH, "schema_hash mismatch")
    return {"request": req, "reply": reply, "error": err}


def test_doc_hex_dumps_are_the_codec_bytes():
    for name, frame in example_frames().items():
        assert hexdump(frame) in DOC, f"{name} example in docs/PROTOCOL.md is stale:\n{hexdump(frame)}"
    assert f"0x{EXAMPLE.hash:016x}" in DOC


def test_doc_json_examples_decode():
    meta = RulesetMeta(3, "payments@12", ("r_velocity", "r1", "r2", "r3", "r_country"),
                       ("enforce", "enforce", "enforce", "enforce", "shadow"))
    req = CODEC.decode(json.dumps({"request_id": 7, "event": EVENT}).encode())
    slots = np.zeros(1, RESPONSE_SLOT_DTYPE)
    slots["action"], slots["score"], slots["generation"], slots["nfired"] = 2, 87.5, 3, 2
    slots["fired"][0, :2] = [0, 4]
    assert CODEC.encode_reply(req, slots, meta).decode() in DOC


def test_doc_names_every_code_and_flag_with_its_number():
    for c in ErrorCode:
        assert f"| {int(c)} | `{c.name}` |" in DOC, c
    for f in DecisionFlag:
        if f.value:
            assert f"| {int(f)} | `{f.name}` |" in DOC, f
