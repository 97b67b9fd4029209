"""Fuzz target for the ingress decoder and envelope split (random and mutated frames).

    python -m tests.ingress.fuzz_decoder --iterations 1000000 [--seed S] [--max-seconds 1.0]
    python -m tests.ingress.fuzz_decoder --endpoint tcp://127.0.0.1:5555 [--config F] ...

Local mode (default) calls the codec directly. Every input must end in exactly one of: a
valid ``Request`` (dtype, count, contiguity, finite floats, canonical bools, ids in range; its
reply encodes and parses) or a ``WireError`` with a non-OK ``ErrorCode`` whose error reply
encodes and parses back to the same code. Anything else is a failure and the input is printed
(hex) for a regression test. Every 1,000 inputs a known valid frame is decoded again and
compared, so a fuzz input cannot corrupt codec state. ``--max-seconds`` fails an input that
takes longer (a hang detector, not a speed target).

Live mode (``--endpoint``) sends each input as one message from a DEALER socket (random frame
counts, empty frames, delimiters) to a running engine and requires exactly one well-formed
reply per message within ``--reply-timeout-ms``; at the end valid requests must still be
decided. pytest runs 20,000 local inputs (test_fuzz.py) and a live run against a real ROUTER.
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

from shm.schema import Schema
from shm.types import RESPONSE_SLOT_DTYPE, ErrorCode
from ingress import wire
from ingress.codec import Codec, Request, split_envelope
from ingress.wire import WireError

_F64_SPECIAL = [0x7FF0000000000000, 0xFFF0000000000000, 0x7FF8000000000000,
                0x7FF0000000000001, 0xFFFFFFFFFFFFFFFF]
_F32_SPECIAL = [0x7F800000, 0xFF800000, 0x7FC00000, 0x7F800001, 0xFFFFFFFF]
_JSON_VALUES = [None, True, False, 0, -1, 2 ** 64, -2 ** 63 - 1, 10 ** 30, 1.5, -0.0, 1e308,
                float("nan"), float("inf"), float("-inf"), "", "x" * 70, "é" * 4, "\ud800", [],
                [1, 2], {}, {"a": 1}]


def valid_event(schema: Schema, i: int) -> dict:
    """A valid event for any schema, varied by ``i``."""
    ev = {}
    for f in schema.fields:
        if f.kind in ("uint", "int"):
            ev[f.name] = f.hi - i % 3 if i % 2 else f.lo + i % 3
        elif f.kind == "float":
            ev[f.name] = 1.5 * i - 3.0
        elif f.kind == "bool":
            ev[f.name] = i % 2 == 0
        else:
            ev[f.name] = "é"[:f.size // 2] + "a" * (i % max(1, f.size - 1))
    return ev


class Fuzzer:
    """Deterministic input generator (one ``random.Random``) over a codec's schema."""

    def __init__(self, seed: int, codec: Codec):
        self.rng = random.Random(seed)
        self.codec, self.schema = codec, codec.schema
        self.valid_binary = [wire.pack_request(self.schema.hash, codec.events.to_records(
            [valid_event(self.schema, i) for i in range(n)]), 3, 4) for n in (1, 2, 7)]
        self.specials = [(f.name, _F32_SPECIAL if f.size == 4 else _F64_SPECIAL, f.size)
                         for f in self.schema.fields if f.kind == "float"]
        self.bools = [f.name for f in self.schema.fields if f.kind == "bool"]

    def message(self) -> tuple[list, bool]:
        """(frames, is_multipart): a whole ROUTER message or a single body frame."""
        r = self.rng.random()
        if r < 0.05:
            return [b"id"] + self.dealer_frames(), True
        if r < 0.15:
            return [self.random_bytes()], False
        if r < 0.55:
            return [self.mutated_binary()], False
        return [self.mutated_json()], False

    def random_bytes(self) -> bytes:
        rng = self.rng
        n = rng.choice([0, 1, 3, 4, 39, 40, 41, rng.randrange(2000)])
        return rng.choice([b"", b"{", b"RSKQ", b"RSKQ\x01\x00"]) + rng.randbytes(n)

    def dealer_frames(self) -> list:
        """1-4 frames as a DEALER would send them: delimiters, bodies, junk, empty frames."""
        rng = self.rng
        body = rng.choice(self.valid_binary)
        return [rng.choice([b"", body, rng.randbytes(5)]) for _ in range(rng.randint(1, 4))]

    def mutated_binary(self) -> bytes:
        rng, rsize = self.rng, self.schema.record_size
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
                    val = rng.choice([0, 1, 2, self.codec.max_batch, self.codec.max_batch + 1,
                                      2 ** (8 * dt.itemsize) - 1, rng.getrandbits(8 * dt.itemsize)])
                    f[off:off + dt.itemsize] = val.to_bytes(dt.itemsize, "little")
            elif op == 2:                                       # truncate
                del f[rng.randrange(len(f) + 1):]
            elif op == 3:                                       # extend
                f += rng.randbytes(rng.choice([1, 7, rsize, 300]))
            elif op == 4 and self.specials:                     # special float bits in a record
                name, specials, size = rng.choice(self.specials)
                off = wire.REQUEST_HEADER_SIZE + self.schema.dtype.fields[name][1] \
                    + rsize * rng.randrange(2)
                if len(f) >= off + size:
                    f[off:off + size] = rng.choice(specials).to_bytes(size, "little")
            elif op == 5 and self.bools:                        # non-canonical bool
                off = wire.REQUEST_HEADER_SIZE + self.schema.dtype.fields[rng.choice(self.bools)][1]
                if len(f) > off:
                    f[off] = rng.randrange(256)
            elif op == 6 and rng.random() < 0.05:               # just over max_frame_bytes
                f += bytes(max(0, self.codec.max_frame_bytes + 1 - len(f)) + rng.randrange(64))
        return bytes(f)

    def mutated_json(self) -> bytes:
        rng, names = self.rng, list(self.schema.names)
        obj: dict = {"request_id": rng.choice([0, 7, 2 ** 64 - 1]),
                     "events": [valid_event(self.schema, i) for i in range(rng.randint(1, 3))]}
        if rng.random() < 0.3:
            obj["client_id"] = rng.choice([1, -1, 2 ** 64, "x"])
        if rng.random() < 0.2:
            obj["deadline_ms"] = rng.choice([0, 0.5, -1, 1e12, 1e308, 10 ** 400, None,
                                             float("nan"), float("inf")])
        for _ in range(rng.randint(0, 3)):
            op = rng.randrange(6)
            evs = obj.get("events")
            target = rng.choice(evs) if isinstance(evs, list) and evs and \
                all(isinstance(e, dict) for e in evs) else obj
            if op == 0 and target:
                del target[rng.choice(list(target))]
            elif op == 1:
                key = rng.choice(["zz", "request_id", "event", "events"] + names)
                target[key] = copy.deepcopy(rng.choice(_JSON_VALUES))
            elif op == 2 and target:
                target[rng.choice(list(target))] = copy.deepcopy(rng.choice(_JSON_VALUES))
            elif op == 3:
                obj["events"] = [valid_event(self.schema, 0)] * rng.choice([0, self.codec.max_batch + 1])
            elif op == 4:
                obj["event"] = obj.pop("events", valid_event(self.schema, 1))
            else:
                obj["events"] = "__DEEP__" if rng.random() < 0.3 else json.loads("[" * 900 + "]" * 900)
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
        assert reply_code(codec.error_reply(e)) == e.code.name
        return e.code.name
    assert isinstance(req, Request) and req.kind in ("binary", "json")
    r = req.records
    assert r.dtype == codec.schema.dtype and r.flags.c_contiguous and 1 <= len(r) <= codec.max_batch
    for f in codec.schema.fields:
        if f.kind == "float":
            assert np.isfinite(r[f.name]).all(), f.name
        elif f.kind == "bool":
            assert r[f.name].view(np.uint8).max() <= 1, f.name
    assert 0 <= req.request_id < 2 ** 64 and 0 <= req.client_id < 2 ** 64
    assert 0 <= req.deadline_us < 2 ** 32 and req.flags & ~wire.KNOWN_HEADER_FLAGS == 0
    reply = codec.encode_reply(req, np.zeros(len(r), RESPONSE_SLOT_DTYPE), {})
    assert reply_code(reply, len(r)) == "OK"
    return "OK"


def reply_code(frame: bytes, count: int | None = None) -> str:
    """'OK' for a decision reply (of ``count`` decisions if given), else the error name."""
    if frame[:1] == b"{":
        obj = json.loads(frame)
        if "error" in obj:
            return obj["error"]["code"]
        assert count is None or len(obj["decisions"]) == count
        return "OK"
    _, error, dec, _ = wire.unpack_reply(frame)
    assert error or count is None or len(dec) == count
    return ErrorCode(error).name


def run(iterations: int, seed: int = 0, max_seconds: float | None = None,
        codec: Codec | None = None) -> Counter:
    """Local mode: ``iterations`` inputs; outcome counts. Raises AssertionError on a failure."""
    if codec is None:
        from tests.ingress.wire_helpers import make_codec
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


def run_live(endpoint: str, codec: Codec, iterations: int, seed: int = 0,
             reply_timeout_ms: int = 5000, transport_limit: int | None = None) -> Counter:
    """Live mode: one DEALER message per input, exactly one parseable reply each.

    Messages over ``transport_limit`` bytes (default max_frame_bytes + 4096, the engine's
    ZMQ_MAXMSGSIZE) are not sent: ZeroMQ drops them and resets the connection, no reply.
    """
    limit = transport_limit or codec.max_frame_bytes + 4096
    import zmq
    fz = Fuzzer(seed, codec)
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(endpoint)
    outcomes: Counter = Counter()
    try:
        for i in range(iterations + len(fz.valid_binary)):
            control = i >= iterations
            frames = [b"", fz.valid_binary[i - iterations]] if control else \
                (fz.dealer_frames() if fz.rng.random() < 0.1 else [b"", fz.message()[0][-1]])
            if sum(map(len, frames)) > limit:
                outcomes["SKIPPED_OVER_TRANSPORT_LIMIT"] += 1
                continue
            sock.send_multipart(frames)
            if not sock.poll(reply_timeout_ms):
                raise AssertionError(f"input {i} (seed {seed}) got no reply within "
                                     f"{reply_timeout_ms} ms: {[bytes(f[:200]).hex() for f in frames]}")
            reply = sock.recv_multipart()
            code = reply_code(reply[-1])
            if control:
                assert code == "OK", f"valid request after fuzzing got {code}"
            else:
                outcomes[code] += 1
    finally:
        sock.close(linger=0)
    return outcomes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iterations", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=int(time.time()))
    p.add_argument("--max-seconds", type=float, default=1.0, help="per-input hang detector")
    p.add_argument("--endpoint", help="fuzz a running engine at this address (live mode)")
    p.add_argument("--config", help="live mode: the engine's config (default: bundled)")
    p.add_argument("--reply-timeout-ms", type=int, default=5000)
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    if a.endpoint:
        from shm.runtime.config import load_config
        cfg = load_config(a.config)
        codec = Codec(cfg.schema, cfg.ingress.max_batch, cfg.ingress.max_frame_bytes)
        out = run_live(a.endpoint, codec, a.iterations, a.seed, a.reply_timeout_ms)
    else:
        out = run(a.iterations, a.seed, a.max_seconds)
    dt = time.perf_counter() - t0
    print(f"fuzz_decoder: {a.iterations} inputs, seed {a.seed}, {dt:.1f} s "
          f"({a.iterations / dt:,.0f}/s), 0 failures")
    for name, n in out.most_common():
        print(f"  {name:<30} {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
