"""Fuzz target for the ingress decoder and envelope split (random and mutated frames).

    python -m tests.ingress.fuzz_decoder --iterations 1000000 [--seed S] [--max-seconds 1.0]

Every input must end in exactly one of: a valid ``Request`` (dtype, count, contiguity, finite
floats, canonical bools, ids in range; its reply encodes and parses) or a ``WireError`` with a
non-OK ``ErrorCode`` whose error reply encodes and parses back to the same code. Anything else
is a failure and the input is printed (hex) for a regression test. Every 1,000 inputs a known
valid frame is decoded again and compared, so a fuzz input cannot corrupt codec state. The CLI
also fails an input that takes longer than ``--max-seconds`` (a hang detector, not a speed
target); pytest runs 20,000 inputs in tests/ingress/test_fuzz.py.
"""
from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import time
from collections import Counter

import numpy as np

from engine.types import RESPONSE_SLOT_DTYPE, ErrorCode
from ingress import wire
from ingress.codec import Codec, Request, split_envelope
from ingress.wire import WireError
from tests.ingress.wire_helpers import MAX_BATCH, MAX_FRAME, SCHEMA, event, make_codec

_F64_SPECIAL = [0x7FF0000000000000, 0xFFF0000000000000, 0x7FF8000000000000,
                0x7FF0000000000001, 0xFFFFFFFFFFFFFFFF]
_F32_SPECIAL = [0x7F800000, 0xFF800000, 0x7FC00000, 0x7F800001, 0xFFFFFFFF]
_JSON_VALUES = [None, True, False, 0, -1, 2 ** 64, -2 ** 63 - 1, 10 ** 30, 1.5, -0.0, 1e308,
                float("nan"), float("inf"), float("-inf"), "", "x" * 70, "é" * 4, "\ud800", [],
                [1, 2], {}, {"a": 1}]


class Fuzzer:
    """Deterministic input generator (one ``random.Random``) over ``SCHEMA``."""

    def __init__(self, seed: int, codec: Codec):
        self.rng = random.Random(seed)
        self.codec = codec
        self.valid_binary = [wire.pack_request(SCHEMA.hash, codec.events.to_records(
            [event(i) for i in range(n)]), 3, 4) for n in (1, 2, 7)]

    def message(self) -> tuple[list, bool]:
        """(frames, is_multipart): a whole ROUTER message or a single body frame."""
        r = self.rng.random()
        if r < 0.05:
            return self.frames(), True
        if r < 0.15:
            return [self.random_bytes()], False
        if r < 0.55:
            return [self.mutated_binary()], False
        return [self.mutated_json()], False

    def random_bytes(self) -> bytes:
        rng = self.rng
        n = rng.choice([0, 1, 3, 4, 39, 40, 41, rng.randrange(2000)])
        head = rng.choice([b"", b"{", b"RSKQ", b"RSKQ\x01\x00"])
        return head + rng.randbytes(n)

    def frames(self) -> list:
        rng = self.rng
        body = rng.choice(self.valid_binary)
        return [rng.choice([b"", b"id", rng.randbytes(5), body]) for _ in range(rng.randrange(5))] \
            + ([b"id", b"", body] if rng.random() < 0.3 else [])

    def mutated_binary(self) -> bytes:
        rng = self.rng
        f = bytearray(rng.choice(self.valid_binary))
        for _ in range(rng.randint(1, 4)):
            op = rng.randrange(7)
            if op == 0 and f:                                   # flip a bit anywhere
                i = rng.randrange(len(f))
                f[i] ^= 1 << rng.randrange(8)
            elif op == 1:                                       # overwrite a header field
                name = rng.choice(wire.REQUEST_HEADER_DTYPE.names)
                dt, off = wire.REQUEST_HEADER_DTYPE.fields[name][:2]
                if len(f) >= off + dt.itemsize:
                    val = rng.choice([0, 1, 2, MAX_BATCH, MAX_BATCH + 1, 2 ** (8 * dt.itemsize) - 1,
                                      rng.getrandbits(8 * dt.itemsize)])
                    f[off:off + dt.itemsize] = val.to_bytes(dt.itemsize, "little")
            elif op == 2:                                       # truncate
                del f[rng.randrange(len(f) + 1):]
            elif op == 3:                                       # extend
                f += rng.randbytes(rng.choice([1, 7, SCHEMA.record_size, 300]))
            elif op == 4:                                       # special float bits in a record
                name, specials = rng.choice([("x_f32", _F32_SPECIAL), ("y_f64", _F64_SPECIAL)])
                size = SCHEMA.dtype.fields[name][0].itemsize
                off = wire.REQUEST_HEADER_SIZE + SCHEMA.dtype.fields[name][1] \
                    + SCHEMA.record_size * rng.randrange(2)
                if len(f) >= off + size:
                    f[off:off + size] = rng.choice(specials).to_bytes(size, "little")
            elif op == 5:                                       # non-canonical bool
                off = wire.REQUEST_HEADER_SIZE + SCHEMA.dtype.fields["flag"][1]
                if len(f) > off:
                    f[off] = rng.randrange(256)
            elif rng.random() < 0.02:                           # huge frame
                f += bytes(MAX_FRAME)
        return bytes(f)

    def mutated_json(self) -> bytes:
        rng = self.rng
        obj: dict = {"request_id": rng.choice([0, 7, 2 ** 64 - 1]),
                     "events": [event(i) for i in range(rng.randint(1, 3))]}
        if rng.random() < 0.3:
            obj["client_id"] = rng.choice([1, -1, 2 ** 64, "x"])
        if rng.random() < 0.2:
            obj["deadline_ms"] = rng.choice([0, 0.5, -1, 1e12, 1e308, 10 ** 400, None,
                                            float("nan"), float("inf")])
        for _ in range(rng.randint(0, 3)):
            op = rng.randrange(6)
            target = rng.choice(obj["events"]) if isinstance(obj.get("events"), list) \
                and obj["events"] and isinstance(obj["events"][0], dict) else obj
            if op == 0 and target:
                del target[rng.choice(list(target))]
            elif op == 1:
                target[rng.choice(["zz", "request_id", "event", "events"] + list(SCHEMA.names))] = \
                    copy.deepcopy(rng.choice(_JSON_VALUES))
            elif op == 2 and target:
                target[rng.choice(list(target))] = copy.deepcopy(rng.choice(_JSON_VALUES))
            elif op == 3:
                obj["events"] = [event(0)] * rng.choice([0, MAX_BATCH + 1])
            elif op == 4:
                obj["event"] = obj.pop("events", event())
            else:
                depth = rng.choice([10, 1000, 50_000])
                obj["events"] = json.loads("[" * min(depth, 900) + "]" * min(depth, 900)) \
                    if depth < 1000 else "__DEEP__"
        text = json.dumps(obj).replace('"__DEEP__"', "[" * 30_000 + "]" * 30_000)
        b = bytearray(text.encode("utf-8", "surrogatepass"))
        if rng.random() < 0.3 and len(b) > 1:                   # textual damage
            i = rng.randrange(1, len(b))
            b[i:i + rng.randint(0, 3)] = rng.randbytes(rng.randint(0, 3))
        return bytes(b)


def check(codec: Codec, frames: list, multipart: bool) -> str:
    """Decode one input; return the outcome name or raise AssertionError."""
    try:
        if multipart:
            env, body = split_envelope(frames)
            assert len(body) and env == frames[:len(env)]
        else:
            body = frames[0]
        req = codec.decode(body)
    except WireError as e:
        assert isinstance(e.code, ErrorCode) and e.code != ErrorCode.OK, e.code
        assert e.kind in ("binary", "json") and isinstance(e.message, str)
        assert e.request_id is None or 0 <= e.request_id < 2 ** 64
        reply = codec.error_reply(e)
        if e.kind == "json":
            assert json.loads(reply)["error"]["code"] == e.code.name
        else:
            assert wire.unpack_reply(reply)[1] == e.code
        return e.code.name
    assert isinstance(req, Request) and req.kind in ("binary", "json")
    r = req.records
    assert r.dtype == SCHEMA.dtype and r.flags.c_contiguous and 1 <= len(r) <= codec.max_batch
    assert np.isfinite(r["x_f32"]).all() and np.isfinite(r["y_f64"]).all()
    assert r["flag"].view(np.uint8).max() <= 1
    assert 0 <= req.request_id < 2 ** 64 and 0 <= req.client_id < 2 ** 64
    assert 0 <= req.deadline_us < 2 ** 32 and req.flags & ~wire.KNOWN_HEADER_FLAGS == 0
    reply = codec.encode_reply(req, np.zeros(len(r), RESPONSE_SLOT_DTYPE), {})
    if req.kind == "binary":
        assert len(wire.unpack_reply(reply)[2]) == len(r)
    else:
        assert len(json.loads(reply)["decisions"]) == len(r)
    return "OK"


def run(iterations: int, seed: int = 0, max_seconds: float | None = None) -> Counter:
    """Run ``iterations`` inputs; return outcome counts. Raises AssertionError on a failure."""
    codec = make_codec()
    fz = Fuzzer(seed, codec)
    control = fz.valid_binary[2]
    expect = codec.decode(control).records.tobytes()
    outcomes: Counter = Counter()
    for i in range(iterations):
        frames, multipart = fz.message()
        t0 = time.perf_counter()
        try:
            outcomes[check(codec, frames, multipart)] += 1
        except Exception as e:
            raise AssertionError(f"input {i} (seed {seed}) frames="
                                 f"{[bytes(f[:200]).hex() for f in frames]}: {e!r}") from e
        if max_seconds is not None and time.perf_counter() - t0 > max_seconds:
            raise AssertionError(f"input {i} (seed {seed}) took over {max_seconds} s")
        if i % 1000 == 999:
            assert codec.decode(control).records.tobytes() == expect, "codec state corrupted"
    return outcomes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iterations", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=int(time.time()))
    p.add_argument("--max-seconds", type=float, default=1.0, help="per-input hang detector")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    out = run(a.iterations, a.seed, a.max_seconds)
    dt = time.perf_counter() - t0
    print(f"fuzz_decoder: {a.iterations} inputs, seed {a.seed}, {dt:.1f} s "
          f"({a.iterations / dt:,.0f}/s), 0 failures")
    for name, n in out.most_common():
        print(f"  {name:<16} {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
