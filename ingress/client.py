"""Python client: ``Client(endpoint).evaluate(event) -> Decision`` over a REQ socket.

Lazy Pirate (ZeroMQ guide ch. 4): after ``timeout_ms`` without a reply the REQ socket is closed
(linger 0) and reopened, and the SAME request (same client id and request id, header flag
RETRY) is sent again, at most ``retries`` more times; the engine deduplicates on
(client id, request id). Then ``ClientTimeout`` is raised. One request is in flight per client
(REQ semantics); use one client per thread. ``ingress.aio.AsyncClient`` is the asyncio twin.

A binary reply names fired rules by index; ``Client.resolve(decision)`` names them, from
the engine's answer to a rules request (docs/PROTOCOL.md 8b), asked once per generation.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import zmq
import zmq.auth

from shm.schema import Schema
from shm.types import ACTION_NAMES, MAX_FIRED, DecisionFlag, ErrorCode
from ingress import wire
from ingress.jsonevents import EventConverter
from ingress.wire import HeaderFlag, WireError
from shm.runtime.config import load_config


@dataclass(frozen=True)
class Decision:
    """One decision. Binary transport: ``rules`` are the fired rule indexes (enforce and
    shadow, at most MAX_FIRED), ``shadow_rules`` is empty, ``ruleset`` None and ``generation``
    set. JSON transport: ``rules``/``shadow_rules`` are rule ids, ``ruleset`` is
    "name@version", ``generation`` None, and list every fired rule. ``error`` names why a
    default action was used; ``nfired`` is how many rules fired (enforce and shadow)."""
    action: str
    score: float
    rules: tuple = ()
    shadow_rules: tuple = ()
    ruleset: str | None = None
    generation: int | None = None
    flags: tuple[str, ...] = ()
    error: str | None = None
    nfired: int = 0


class RequestError(Exception):
    """The engine (or local validation, request_id None) refused the request with ``code``."""

    def __init__(self, code: ErrorCode, message: str, request_id: int | None = None):
        super().__init__(f"{code.name} ({int(code)}): {message}")
        self.code, self.message, self.request_id = code, message, request_id


class ClientTimeout(TimeoutError):
    """No reply after all attempts; ``request_id`` may still be decided by the engine."""

    def __init__(self, endpoint: str, request_id: int, attempts: int, timeout_ms: int):
        super().__init__(f"no reply from {endpoint}: request_id={request_id} "
                         f"attempts={attempts} timeout_ms={timeout_ms}")
        self.request_id = request_id


class ProtocolError(Exception):
    """A reply that does not belong to the request or is not a valid reply frame."""


@dataclass(frozen=True)
class RuleIds:
    """What the rule indexes of one ruleset generation mean: ``rule_ids[i]`` and ``modes[i]``
    ('enforce' | 'shadow') belong to index i; ``ruleset`` is "name@version"."""
    generation: int
    ruleset: str
    rule_ids: tuple[str, ...]
    modes: tuple[str, ...]


@dataclass(frozen=True)
class CurveKeys:
    """Client CURVE keys (Z85 bytes) and the server's public key."""
    public: bytes
    secret: bytes
    server_public: bytes

    @classmethod
    def from_files(cls, client_secret_file: str, server_public_file: str) -> "CurveKeys":
        """From zmq.auth certificate files (``risk-engine keys`` writes them)."""
        pub, sec = zmq.auth.load_certificate(client_secret_file)
        if not sec:
            raise ValueError(f"client_secret_file={client_secret_file!r}: holds no secret key")
        server_pub, _ = zmq.auth.load_certificate(server_public_file)
        return cls(pub, sec, server_pub)

    def apply(self, sock: zmq.Socket) -> None:
        sock.curve_publickey, sock.curve_secretkey = self.public, self.secret
        sock.curve_serverkey = self.server_public


def load_schema(schema: Schema | str | os.PathLike | None) -> Schema:
    """A Schema as is, else the schema of a config file (None: the bundled default config)."""
    if isinstance(schema, Schema):
        return schema
    return load_config(Path(schema) if schema is not None else None).schema


class ClientCodec:
    """Request frames and reply parsing shared by the sync and asyncio clients."""

    def __init__(self, schema: Schema, transport: str, client_id: int | None):
        if transport not in ("binary", "json"):
            raise ValueError(f"transport={transport!r}: must be 'binary' or 'json'")
        self.schema, self.transport = schema, transport
        self.events = EventConverter(schema)
        self.client_id = client_id if client_id is not None else int.from_bytes(os.urandom(8), "little") or 1
        self._next_id = 0
        self.rule_ids: dict[int, RuleIds] = {}     # generation -> its rule ids (never change)

    def new_request_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def records(self, events) -> np.ndarray:
        """Validated records from a list of dicts (same checks as the engine) or an array."""
        if isinstance(events, np.ndarray):
            if events.dtype != self.schema.dtype:
                raise TypeError(f"records dtype {events.dtype} != schema dtype {self.schema.dtype}")
            return events
        try:
            return self.events.to_records(list(events))
        except WireError as e:
            raise RequestError(e.code, e.message) from None

    def frame(self, records: np.ndarray, request_id: int, deadline_ms: float, retry: bool) -> bytes:
        if self.transport == "binary":
            return wire.pack_request(self.schema.hash, records, self.client_id, request_id,
                                     round(deadline_ms * 1000), HeaderFlag.RETRY if retry else 0)
        obj = {"request_id": request_id, "client_id": self.client_id,
               "events": self.events.to_events(records)}
        if deadline_ms:
            obj["deadline_ms"] = deadline_ms
        return json.dumps(obj, separators=(",", ":")).encode()

    def rules_frame(self, request_id: int, generation: int) -> bytes:
        return json.dumps({"request_id": request_id, "rules": generation}).encode()

    def parse_rules(self, frame: bytes, request_id: int, generation: int) -> RuleIds:
        """The answer to a rules request; raises RequestError or ProtocolError."""
        try:
            obj = json.loads(frame)
            if "error" in obj:
                e = obj["error"]
                code = ErrorCode[e["code"]] if e["code"] in ErrorCode.__members__ else ErrorCode.INTERNAL
                raise RequestError(code, e["message"], request_id)
            got = RuleIds(obj["generation"], obj["ruleset"], tuple(obj["rule_ids"]), tuple(obj["modes"]))
            rid = obj["request_id"]
        except (ValueError, KeyError, TypeError) as e:
            raise ProtocolError(f"invalid rules reply: {e}") from None
        if rid != request_id or got.generation != generation or len(got.rule_ids) != len(got.modes):
            raise ProtocolError(f"rules reply request_id={rid} generation={got.generation}, "
                                f"expected {request_id} and {generation}")
        return got

    @staticmethod
    def named(d: Decision, ids: RuleIds) -> Decision:
        """``d`` with the rule ids of its indexes, split into enforce ``rules`` and
        ``shadow_rules``, and ``ruleset`` set."""
        rules = [ids.rule_ids[i] if i < len(ids.rule_ids) else f"#{i}" for i in d.rules]
        shadow = {r for i, r in zip(d.rules, rules) if i < len(ids.modes) and ids.modes[i] == "shadow"}
        return replace(d, rules=tuple(r for r in rules if r not in shadow),
                       shadow_rules=tuple(r for r in rules if r in shadow), ruleset=ids.ruleset)

    def reply_id(self, frame: bytes) -> int:
        """The request id a reply names, read before the reply is parsed (a client with several
        requests in flight on one socket matches replies by it); 0 for an error reply to a
        request the engine could not read. Raises ProtocolError for a frame that is no reply."""
        if frame[:1] == b"{":
            try:
                rid = json.loads(frame)["request_id"]
            except (ValueError, KeyError, TypeError) as e:
                raise ProtocolError(f"invalid JSON reply: {e}") from None
            if rid is None:
                return 0
            if type(rid) is not int:
                raise ProtocolError(f"invalid JSON reply: request_id={rid!r}")
            return rid
        try:
            return wire.unpack_reply_header(frame)[0]
        except ValueError as e:
            raise ProtocolError(str(e)) from None

    def parse(self, frame: bytes, request_id: int, count: int) -> list[Decision]:
        """Decisions of a reply to ``request_id``; raises RequestError or ProtocolError."""
        if frame[:1] == b"{":
            return self._parse_json(frame, request_id, count)
        try:
            rid, error, n, msg = wire.unpack_reply_header(frame)
        except ValueError as e:
            raise ProtocolError(str(e)) from None
        if rid != request_id and not (error and rid == 0):
            raise ProtocolError(f"reply request_id={rid}, expected {request_id}")
        if error:
            raise RequestError(_code(error), msg, request_id)
        if n != count:
            raise ProtocolError(f"reply count={n}, expected {count}")
        # struct per decision: a Decision object per decision is built anyway
        return [Decision(_ACTIONS[a] if a < len(_ACTIONS) else str(a), sc,
                         tuple(fired[:min(nf, MAX_FIRED)]), (), None, g, _FLAG_NAMES[fl],
                         _code(err).name if err else None, nf)
                for a, fl, err, nf, g, sc, *fired in
                wire.DECISION.iter_unpack(memoryview(frame)[wire.REPLY_HEADER_SIZE:])]

    def _parse_json(self, frame: bytes, request_id: int, count: int) -> list[Decision]:
        try:
            obj = json.loads(frame)
            rid = obj["request_id"]
            if "error" in obj:
                e = obj["error"]
                code = ErrorCode[e["code"]] if e["code"] in ErrorCode.__members__ else ErrorCode.INTERNAL
                if rid not in (None, request_id):
                    raise ProtocolError(f"reply request_id={rid}, expected {request_id}")
                raise RequestError(code, e["message"], request_id)
            decisions = obj["decisions"]
        except (ValueError, KeyError, TypeError) as e:
            raise ProtocolError(f"invalid JSON reply: {e}") from None
        if rid != request_id or len(decisions) != count:
            raise ProtocolError(f"reply request_id={rid} count={len(decisions)}, "
                                f"expected {request_id} and {count}")
        return [Decision(d["action"], d["score"], tuple(d["rules"]), tuple(d["shadow_rules"]),
                         d["ruleset"], None, tuple(d.get("flags", ())), d.get("error"),
                         d.get("nfired", len(d["rules"]) + len(d["shadow_rules"])))
                for d in decisions]


def _code(value: int) -> ErrorCode:
    try:
        return ErrorCode(value)
    except ValueError:
        return ErrorCode.INTERNAL


_ACTIONS = ACTION_NAMES
_FLAG_NAMES = tuple(tuple(f.name for f in DecisionFlag if f.value and f.value & v)
                    for v in range(256))


class LazyPirateSocket:
    """The REQ socket of a client (sync or asyncio, by the context it was given): made on
    first use, dropped after a timeout (a REQ socket cannot send twice: Lazy Pirate).
    Needs ``_ctx``, ``_sock``, ``endpoint``, ``curve`` and ``reconnects``. ``SOCKET_TYPE``:
    REQ here; ingress.cluster_batch's owner sockets are DEALERs, made and dropped alike."""
    SOCKET_TYPE = zmq.REQ

    def _socket(self, timeout_ms: int) -> zmq.Socket:
        """The socket, its send bounded by ``timeout_ms``: a peer that refused the
        handshake (a CURVE key the server does not allow, plaintext to a CURVE server) takes
        the socket's only pipe with it, and an unbounded send would then wait forever."""
        if self._sock is None:
            s = self._ctx.socket(self.SOCKET_TYPE)
            s.linger = 0
            self._send_timeout_ms = None
            if self.curve is not None:
                self.curve.apply(s)
            if "[" in self.endpoint:      # libzmq refuses tcp://[addr]:port without ZMQ_IPV6
                s.setsockopt(zmq.IPV6, 1)
            s.connect(self.endpoint)
            self._sock = s
        if self._send_timeout_ms != timeout_ms:
            self._sock.sndtimeo = self._send_timeout_ms = timeout_ms
        return self._sock

    def _drop_socket(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None
            self.reconnects += 1

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None


class Client(LazyPirateSocket):
    """Synchronous client (see module doc). ``schema``: a Schema or a config file path
    (None: the bundled default config). ``deadline_ms`` 0 lets the engine use its default."""

    def __init__(self, endpoint: str, schema: Schema | str | os.PathLike | None = None, *,
                 timeout_ms: int = 1000, retries: int = 3, transport: str = "binary",
                 deadline_ms: float = 0, curve: CurveKeys | None = None,
                 client_id: int | None = None, context: zmq.Context | None = None):
        if timeout_ms <= 0 or retries < 0:
            raise ValueError(f"timeout_ms={timeout_ms} retries={retries}: need > 0 and >= 0")
        self.endpoint, self.timeout_ms, self.retries = endpoint, timeout_ms, retries
        self.deadline_ms, self.curve = deadline_ms, curve
        self.codec = ClientCodec(load_schema(schema), transport, client_id)
        self._ctx = context or zmq.Context.instance()
        self._sock: zmq.Socket | None = None
        self.reconnects = 0          # Lazy Pirate socket re-creations, for tests and metrics

    @property
    def client_id(self) -> int:
        return self.codec.client_id

    def evaluate(self, event: dict, *, timeout_ms: int | None = None,
                 deadline_ms: float | None = None) -> Decision:
        return self.evaluate_batch([event], timeout_ms=timeout_ms, deadline_ms=deadline_ms)[0]

    def evaluate_batch(self, events, *, timeout_ms: int | None = None,
                       deadline_ms: float | None = None) -> list[Decision]:
        """Decisions for a list of event dicts or an array of ``schema.dtype``, in order."""
        recs = self.codec.records(events)
        rid = self.codec.new_request_id()
        timeout_ms = timeout_ms or self.timeout_ms
        deadline_ms = self.deadline_ms if deadline_ms is None else deadline_ms
        for attempt in range(self.retries + 1):
            reply = self._attempt(self.codec.frame(recs, rid, deadline_ms, retry=attempt > 0),
                                  timeout_ms)
            if reply is not None:
                return self.codec.parse(reply, rid, len(recs))
        raise ClientTimeout(self.endpoint, rid, self.retries + 1, timeout_ms)

    def _attempt(self, frame: bytes, timeout_ms: int) -> bytes | None:
        """One Lazy Pirate attempt: the reply, or None when the send or the reply took longer
        than ``timeout_ms`` (the socket is then dropped: a REQ socket cannot send twice)."""
        sock = self._socket(timeout_ms)
        try:
            sock.send(frame, copy=len(frame) < 65536)
        except zmq.Again:
            pass
        else:
            if sock.poll(timeout_ms, zmq.POLLIN):
                return sock.recv()
        self._drop_socket()
        return None

    def rule_ids(self, generation: int, *, timeout_ms: int | None = None) -> RuleIds:
        """The rule ids of ``generation``, asked of the engine once and cached (a generation's
        rules never change; a reload makes a new generation)."""
        got = self.codec.rule_ids.get(generation)
        if got is None:
            rid = self.codec.new_request_id()
            timeout_ms = timeout_ms or self.timeout_ms
            frame = self.codec.rules_frame(rid, generation)
            for _ in range(self.retries + 1):
                reply = self._attempt(frame, timeout_ms)
                if reply is not None:
                    got = self.codec.parse_rules(reply, rid, generation)
                    break
            else:
                raise ClientTimeout(self.endpoint, rid, self.retries + 1, timeout_ms)
            self.codec.rule_ids[generation] = got
        return got

    def resolve(self, d: Decision) -> Decision:
        """``d`` with rule ids for indexes (split into enforce ``rules`` and ``shadow_rules``)
        and ``ruleset`` set; a JSON decision, or one without a generation (0: a default
        action), is returned as it is."""
        if d.ruleset is not None or not d.generation:
            return d
        return self.codec.named(d, self.rule_ids(d.generation))


    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
