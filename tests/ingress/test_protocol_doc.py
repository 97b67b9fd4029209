"""docs/PROTOCOL.md stays true: its hex dumps are the codec's bytes, its tables name every code."""
import json
import re
from pathlib import Path

import numpy as np

from shm.schema import Schema
from shm.types import RESPONSE_SLOT_DTYPE, DecisionFlag, ErrorCode
from ingress import wire
from ingress.codec import Codec, RulesetMeta, split_envelope
from ingress.wire import WireError
from tests.ingress.wire_helpers import MAX_BATCH, MAX_FRAME, SCHEMA, event, make_codec, records

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
    bad = wire.pack_request(0x1122334455667788, recs, 0x1122334455667788, 7, 5000, 0)
    try:                                   # the real refusal, not a message typed here
        CODEC.decode(bad)
    except wire.WireError as e:
        err = CODEC.error_reply(e)
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


# --- the message formats of the codes table (issue 20, defect 4) -----------------------------

def doc_formats() -> dict[str, list[str]]:
    """Code name -> the message formats of its row in the codes table."""
    out = {}
    for line in DOC.splitlines():
        m = re.match(r"^\| (\d+) \| `(\w+)` \| (.*) \|$", line)
        if m and m.group(2) in ErrorCode.__members__:
            cells = m.group(3).split(" | ")
            out[m.group(2)] = re.findall(r"`([^`]+)`", cells[-1]) if len(cells) == 2 else []
    return out


def format_regex(fmt: str) -> str:
    """A documented format as a regex: ``<...>`` placeholders match any non-empty text."""
    return "".join(".+?" if p.startswith("<") else re.escape(p) for p in re.split(r"(<[^>]+>)", fmt) if p)


def unmatched(code: str, messages: list[str]) -> tuple[list[str], list[str]]:
    """(messages no documented format of ``code`` matches, formats no message matched)."""
    fmts = doc_formats()[code]
    bad = [m for m in messages if not any(re.fullmatch(format_regex(f), m) for f in fmts)]
    unused = [f for f in fmts if not any(re.fullmatch(format_regex(f), m) for m in messages)]
    return bad, unused


ENGINE_ONLY = {"OVERLOADED", "IDEMPOTENCY_CONFLICT",      # tests/engine/test_decision_contract.py
               "UNKNOWN_GENERATION",                       # tests/engine/test_first_request.py
               "NOT_OWNER"}                                # tests/ingress/test_ownercheck.py
# formats of codec codes that only the router produces, provoked there too
ROUTER_FORMATS = {"a message of <n> frames: expected [identity, (empty,) body]"}


def _provoke_codec() -> dict[str, list[str]]:
    """Every refusal the codec produces, provoked with real frames: code name -> messages."""
    codec = make_codec()
    got: dict[str, list[str]] = {}

    def refuse(frame=None, frames=None):
        try:
            codec.decode(split_envelope(frames)[1] if frames is not None else frame)
        except WireError as e:
            got.setdefault(e.code.name, []).append(e.message)
            return
        raise AssertionError(f"accepted: {frame!r}")

    def binary(recs=None, **over):
        f = bytearray(wire.pack_request(SCHEMA.hash, records(1) if recs is None else recs, 1, 2))
        fields = wire.REQUEST_HEADER_DTYPE.fields
        for k, v in over.items():
            off, size = fields[k][1], fields[k][0].itemsize
            f[off:off + size] = int(v).to_bytes(size, "little")
        return bytes(f)

    def js(obj):
        return json.dumps(obj).encode()

    refuse(frames=[b"id", b"", b"body", b"extra"])
    refuse(b"")
    refuse(binary() + bytes(MAX_FRAME))
    refuse(b"XXXX" + bytes(60))
    refuse(b"RSKQ" + bytes(10))
    refuse(binary(version=2))
    refuse(binary(schema_hash=SCHEMA.hash ^ 1))
    refuse(binary(count=0))
    refuse(binary()[:-1])
    refuse(binary(flags=4))
    r = records(1)
    r["x_f32"] = np.nan
    refuse(binary(r))
    r = records(1)
    r.view(np.uint8)[SCHEMA.dtype.fields["flag"][1]] = 2
    refuse(binary(r))
    refuse(b'{"request_id": 1, "event": {}')
    refuse(js({"request_id": "x"}))
    refuse(b'{"request_id": 1, "x": 2}')
    refuse(js({"request_id": 1, "client_id": -1, "event": event()}))
    refuse(js({"request_id": 1, "deadline_ms": -1, "event": event()}))
    refuse(js({"request_id": 1, "deadline_ms": 1e9, "event": event()}))
    refuse(js({"request_id": 1}))
    refuse(js({"request_id": 1, "events": {}}))
    refuse(js({"request_id": 1, "events": []}))
    refuse(js({"request_id": 1, "events": [1]}))
    refuse(js({"request_id": 1, "event": {**event(), "zz": 1}}))
    ev = event()
    del ev["a_u32"]
    refuse(js({"request_id": 1, "event": ev}))
    for field, v in (("a_u32", "x"), ("y_f64", "x"), ("flag", 1), ("name", 5), ("a_u32", 2**32),
                     ("name", "x" * 8), ("x_f32", 1e39), ("y_f64", 10**400), ("y_f64", float("nan"))):
        refuse(js({"request_id": 1, "events": [event(), event(**{field: v})]}))
    lone = js({"request_id": 1, "event": event(name="SURROGATE")}).replace(b'"SURROGATE"', b'"\\ud800"')
    refuse(lone)
    # a JSON request beyond the binary limit: BAD_COUNT from the events array
    refuse(js({"request_id": 1, "events": [event()] * (MAX_BATCH + 1)}))
    # the rules request (section 8b)
    refuse(js({"request_id": 1, "rules": 1, "event": event()}))
    refuse(js({"request_id": 1, "rules": -1}))
    # an ipv4 field (section 8)
    codec = Codec(Schema.build({"id": "u64", "ip": "ipv4"}, "id"), MAX_BATCH, MAX_FRAME)
    for v in (1.5, "10.0.1", " 10.0.0.1", "010.0.0.1", "10.0.0.256"):
        refuse(js({"request_id": 1, "event": {"id": 1, "ip": v}}))
    return got


def test_every_documented_message_format_is_the_codecs_real_reply():
    """Each code's documented formats against the messages the real codec gives for real
    frames: every message matches a documented format (the whole message), and every
    documented format is produced (no stale row). MISSING_FIELD names events[i].field."""
    got = _provoke_codec()
    for code, fmts in doc_formats().items():
        if code in ENGINE_ONLY or not fmts:
            assert code in ENGINE_ONLY or code not in got, (code, got.get(code))
            continue
        bad, unused = unmatched(code, got.get(code, []))
        assert not bad and not set(unused) - ROUTER_FORMATS, (code, bad, unused)
    assert got["MISSING_FIELD"] == ["events[0].a_u32: missing"]
    assert set(got) <= set(doc_formats())
