"""Random but valid events for any schema, and pools of pre-built request bodies.

The bench must not spend its (shared) CPU building events, so a ``PayloadPool`` builds a few
hundred bodies once; per request only the header (binary) or the JSON envelope is formatted,
with a fresh request id every time (the engine's idempotency window would otherwise answer
replayed ids from its cache, and the bench would measure the cache).

``random_records`` is the one event generator of bench and tests; a ``Spread`` says how values
are drawn. ``LOAD`` (the bench's): the shard key and the other key fields (card, device) from
``n_accounts`` ids (so events spread over every worker), drawn by ``keys``: ``zipf`` (the
default: a few accounts and cards carry much of the traffic, as in real payment flows, so
feature tables see hot keys; exponent ``ZIPF_S``) or ``uniform`` (every id as likely: nearly
every feature lookup is a cache miss), positive log-normal amounts, 2- and 3-byte fields country and currency
codes, integer fields ending in ``_ms`` current epoch milliseconds, 1-byte integers small
enums (1 or 2), bools mostly false. ``RULES`` (the tests'): values over the interesting ranges
of the example rule packs, sanctioned countries included, and a fresh 62-bit key per event
for every key field, so each feature sees one event.
"""
from __future__ import annotations

import functools
import json
import math
import time
from dataclasses import dataclass

import numpy as np

from shm.schema import Schema
from ingress import wire

COUNTRIES = (b"US", b"GB", b"DE", b"FR", b"NL", b"IT", b"ES", b"JP", b"BR", b"NG", b"RU", b"CN")
CURRENCIES = (b"USD", b"EUR", b"GBP", b"JPY", b"BRL", b"CHF")
KEY_DISTRIBUTIONS = ("zipf", "uniform")
ZIPF_S = 0.99               # YCSB's zipfian constant, the usual skew of key-value benchmarks:
                            # over 1M ids the top 1,000 take half the events, the top one 6.5 %
N_KEYS = 1_000_000          # accounts, cards and devices the bench's events come from
POOL_EVENTS = 16_384        # events a PayloadPool holds at least (about 11,000 ids under zipf)
_SCATTER = 2_654_435_761    # a prime: rank -> id is a bijection of [0, n) for n it does not divide


@dataclass(frozen=True)
class Spread:
    """How ``random_records`` draws each field (see the module docstring)."""
    unique_keys: tuple[str, ...]        # fields drawn from [0, 2**62): a new key per event
    shard_from_accounts: bool           # the shard key from 1..n_accounts (``keys``)
    key_fields: tuple[str, ...]         # more fields drawn like the shard key, each on its own
    bool_rate: float
    lognormal_amounts: bool             # else exp(uniform(0, 12)): 1 to 160,000
    countries: tuple[bytes, ...]
    currencies: tuple[bytes, ...]
    recent_ms: bool                     # *_ms integer fields: the last minute, epoch ms
    small_enums: bool                   # 1-byte integers: 1 or 2
    int_hi: int                         # other integers: [max(lo, 0), min(hi, int_hi)]
    order_book: bool                    # side 0-3, ref_price within 20 % of price


LOAD = Spread(unique_keys=(), shard_from_accounts=True, key_fields=("card_id", "device_id"), bool_rate=0.02, lognormal_amounts=True,
              countries=COUNTRIES, currencies=CURRENCIES, recent_ms=True, small_enums=True,
              int_hi=1_000_000, order_book=False)
RULES = Spread(unique_keys=("account_id", "card_id", "device_id"), shard_from_accounts=False, key_fields=(),
               bool_rate=0.1, lognormal_amounts=False,
               countries=(b"US", b"GB", b"NG", b"RU", b"DE", b"FR", b"BR", b"CN", b"IR", b"KP"),
               currencies=(b"USD", b"EUR", b"GBP", b"NGN", b"RUB"), recent_ms=False,
               small_enums=False, int_hi=5000, order_book=True)


@functools.lru_cache(maxsize=4)
def _zipf_cdf(n_keys: int, s: float) -> np.ndarray:
    cdf = np.cumsum(np.arange(1, n_keys + 1, dtype=np.float64) ** -s)
    return cdf / cdf[-1]


def draw_keys(rng: np.random.Generator, n: int, n_keys: int = N_KEYS, keys: str = "zipf",
              zipf_s: float = ZIPF_S, salt: int = 0) -> np.ndarray:
    """``n`` ids in 1..n_keys: ``zipf`` draws rank k with probability proportional to
    k**-zipf_s (bounded, inverse CDF, exact for any s > 0), ``uniform`` every id alike. Ranks
    are scattered over the ids (``salt`` differs per field), so the hottest account is not
    id 1 and not the hottest card's id (rules compare card_id with device_id)."""
    if keys not in KEY_DISTRIBUTIONS:
        raise ValueError(f"keys={keys!r} (allowed: {', '.join(KEY_DISTRIBUTIONS)})")
    if n_keys < 1 or not (math.isfinite(zipf_s) and zipf_s > 0):
        raise ValueError(f"draw_keys: n_keys={n_keys} must be >= 1 and zipf_s={zipf_s} > 0")
    if keys == "uniform":
        rank = rng.integers(0, n_keys, n)
    else:
        rank = np.minimum(np.searchsorted(_zipf_cdf(n_keys, zipf_s), rng.random(n), side="right"),
                          n_keys - 1)
    mul = _SCATTER if math.gcd(_SCATTER, n_keys) == 1 else 1
    return (rank.astype(np.int64) * mul + salt * 7919) % n_keys + 1


def random_records(schema: Schema, n: int, seed: int | np.random.Generator = 0,
                   n_accounts: int = N_KEYS, spread: Spread = LOAD, keys: str = "zipf",
                   zipf_s: float = ZIPF_S) -> np.ndarray:
    """``n`` valid records of ``schema.dtype`` (finite floats, in-range ints, ASCII bytes);
    ``seed``: a number or a Generator to draw from; ``keys``, ``zipf_s``: how the shard key
    and the spread's key fields are drawn from 1..n_accounts (``draw_keys``)."""
    if n < 1 or n_accounts < 1:
        raise ValueError(f"random_records: n={n} and n_accounts={n_accounts} must be >= 1")
    rng = np.random.default_rng(seed)
    rec = np.zeros(n, dtype=schema.dtype)
    now_ms = int(time.time() * 1000)
    for f in schema.fields:
        col = rec[f.name]
        if f.name in spread.unique_keys:
            col[:] = rng.integers(0, 1 << 62, n)
        elif f.kind in ("uint", "int") and (spread.shard_from_accounts and f.name == schema.shard_key
                                            or f.name in spread.key_fields):
            col[:] = draw_keys(rng, n, min(n_accounts, int(f.hi)), keys, zipf_s,
                               salt=schema.names.index(f.name))
        elif f.kind == "bool":
            col[:] = rng.random(n) < spread.bool_rate
        elif f.kind == "float":
            amounts = rng.lognormal(4.0, 1.5, n) if spread.lognormal_amounts else np.exp(rng.uniform(0, 12, n))
            col[:] = np.round(amounts, 2)
        elif f.kind == "bytes":
            pool = spread.countries if f.size == 2 else spread.currencies if f.size == 3 else None
            if pool is None:
                letters = rng.integers(65, 91, (n, f.size), dtype=np.uint8)
                col[:] = letters.view(f"S{f.size}").ravel()
            else:
                col[:] = np.array(pool, dtype=f"S{f.size}")[rng.integers(0, len(pool), n)]
        elif spread.recent_ms and f.name.endswith("_ms") and f.kind == "int" and f.hi >= now_ms:
            col[:] = now_ms - rng.integers(0, 60_000, n)
        elif spread.small_enums and f.size == 1:          # u8/i8 are enums in practice (side, channel)
            col[:] = rng.integers(1, 3, n)
        else:
            hi = min(int(f.hi), spread.int_hi)
            lo = max(int(f.lo), 0)
            col[:] = rng.integers(lo, hi + 1, n)
    if spread.order_book and "side" in schema.names:
        rec["side"] = rng.integers(0, 4, n)
    if spread.order_book and "ref_price" in schema.names:
        rec["ref_price"] = np.round(rec["price"] * rng.uniform(0.8, 1.2, n), 2)
    return rec


def random_events(rng: np.random.Generator, schema: Schema, n: int) -> np.ndarray:
    """The tests' events: ``random_records`` with the ``RULES`` spread."""
    return random_records(schema, n, rng, spread=RULES)


def records_to_json(schema: Schema, rec: np.ndarray) -> list[dict]:
    """Records as JSON-ready dicts (bytes fields as strings, trailing zeros stripped)."""
    out = []
    kinds = [(f.name, f.kind) for f in schema.fields]
    for r in rec:
        d = {}
        for name, kind in kinds:
            v = r[name]
            if kind == "bytes":
                d[name] = bytes(v).rstrip(b"\0").decode("ascii")
            elif kind == "float":
                d[name] = float(v)
            elif kind == "bool":
                d[name] = bool(v)
            else:
                d[name] = int(v)
        out.append(d)
    return out


class PayloadPool:
    """``size`` pre-built bodies of ``batch`` events each (default: enough for POOL_EVENTS
    events, so a skewed key distribution is sampled beyond its head); ``request(i,
    client_id, rid)`` returns the full request frame for body ``i % size`` with fresh ids.

    transport 'binary': 40-byte header (``ingress.wire.REQUEST_HEADER``) + packed records.
    transport 'json': ``{"request_id": R, "client_id": C, "events": [...]}``.
    """

    def __init__(self, schema: Schema, batch: int, transport: str, size: int | None = None,
                 seed: int = 0, n_accounts: int = N_KEYS, keys: str = "zipf", zipf_s: float = ZIPF_S):
        if transport not in ("binary", "json"):
            raise ValueError(f"transport={transport!r} (allowed: binary, json)")
        if batch < 1:
            raise ValueError(f"batch={batch} must be >= 1")
        size = size or max(256, -(-POOL_EVENTS // batch))
        self.transport = transport
        self.batch = batch
        self.size = size
        self.schema_hash = schema.hash
        rec = random_records(schema, size * batch, seed, n_accounts, keys=keys,
                             zipf_s=zipf_s).reshape(size, batch)
        if transport == "binary":
            self.bodies = [rec[i].tobytes() for i in range(size)]
        else:
            self.bodies = [json.dumps(records_to_json(schema, rec[i]), separators=(",", ":"))
                           for i in range(size)]
        self._pack = wire.REQUEST_HEADER.pack
        self._magic = wire.REQUEST_MAGIC
        self._version = wire.PROTOCOL_VERSION

    def request(self, i: int, client_id: int, request_id: int) -> bytes:
        body = self.bodies[i % self.size]
        if self.transport == "binary":
            return self._pack(self._magic, self._version, 0, self.schema_hash, self.batch, 0,
                              client_id, request_id) + body
        return ('{"request_id":%d,"client_id":%d,"events":%s}' % (request_id, client_id, body)).encode()
