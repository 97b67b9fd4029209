"""The compiled batch admission (ingress._batch_admit_kernels.admit_batch) against the Python
pieces it replaces: the shard of every record (Shards.of), its ring slot and token (the
layout test_batch_kernels checks for stage), the records hash (dedup.records_hash); and all
or nothing: a decline leaves every ring and table as it was."""
import numpy as np
import pytest

from ingress import _batch_admit_kernels as BA
from ingress import _fast_kernels as FK
from ingress import _loop_kernels as LK
from ingress import _owner_kernels as OK
from ingress import wire
from ingress.admission import Shards
from ingress.codec import value_checks
from ingress.dedup import IdempotencyWindow, i64_bits, record_mask, records_hash
from shm import layout as L
from shm.journal_append import field_mask
from shm.tokens import INDEX_BITS
from tests.ingress.test_batch_kernels import EV_OFF, SLOT_DT, ring
from tests.ingress.wire_helpers import SCHEMA, records

NOW = 1_000_000_000
CID, RID = 2**64 - 3, 2**63 + 5
FMASK = record_mask(SCHEMA.dtype)
TOKEN0 = 9 << INDEX_BITS
CACHES = [L.PRODUCER_CACHED_CONSUMER_WORD, L.PRODUCER_SEEN_CONSUMER_WORD,
          L.PRODUCER_SEEN_CONSUMER_NS_WORD]


class Setup:
    """Rings of ``caps`` slots, a window, an empty fast-row table, conf as the loop fills it."""

    def __init__(self, caps: list):
        self.rings_ = [ring(c) for c in caps]
        self.rings = LK.pack_rings([h for h, _ in self.rings_], [s for _, s in self.rings_])
        self.conf = np.zeros(LK.FMASK + SCHEMA.record_size // 8, np.int64)
        self.conf[LK.FMASK:] = FMASK
        key_dt, key_off = SCHEMA.dtype.fields[SCHEMA.shard_key][:2]
        for i, v in ((LK.RSIZE, SCHEMA.record_size), (LK.EV_OFF, EV_OFF), (LK.BEHIND_NS, 10**9),
                     (LK.N_WORKERS, len(caps)), (LK.SHARD_OFF, key_off),
                     (LK.SHARD_WIDTH, key_dt.itemsize), (LK.SHARD_SIGNED, int(key_dt.kind == "i"))):
            self.conf[i] = v
        self.window = IdempotencyWindow(60 * 10**9, 64, 1 << 16)
        self.ft = np.zeros((8, FK.FT_WORDS), np.int64)
        self.meta = np.zeros(FK.META_WORDS, np.int64)
        self.widx = np.zeros(256, np.int64)
        self.out = np.zeros(BA.out_words(len(caps)), np.int64)
        self.own, self.ts = np.zeros(1, np.int64), np.zeros(2, np.int64)   # not a cluster node

    def admit(self, body: bytes, n: int, keyed: int = 1) -> int:
        _, index, ent, pool = self.window.tables
        return BA.admit_batch(body, n, keyed, i64_bits(CID), i64_bits(RID), TOKEN0, NOW, self.conf,
                              value_checks(SCHEMA), index, ent, pool.size, self.ft, self.meta,
                              self.rings, self.widx, self.out, self.own, self.ts)

    def state(self) -> list:
        """Every ring's slots and header words but the producer's own caches of the consumer
        (the worker check notes what it saw there, whichever path asks: FK.worker_refusal)."""
        return [(np.delete(h, CACHES), s.copy()) for h, s in self.rings_]


def batch(n: int, seed: int = 3) -> np.ndarray:
    recs = records(n)
    recs[SCHEMA.shard_key] = np.random.default_rng(seed).integers(0, 1 << 40, n)
    return recs


def body_of(recs: np.ndarray) -> bytes:
    return wire.pack_request(SCHEMA.hash, recs, CID, RID)


@pytest.mark.parametrize("n_workers", [1, 3])
def test_every_record_reaches_its_workers_ring_in_order(n_workers):
    n = 100
    recs = batch(n)
    s = Setup([256] * n_workers)
    assert s.admit(body_of(recs), n) == BA.ADMITTED
    widx = Shards(SCHEMA, n_workers).of(recs) if n_workers > 1 else np.zeros(n, np.int64)
    assert s.out[BA.RHASH] == records_hash(recs, FMASK)
    for w, (hdr, slots) in enumerate(s.rings_):
        mine = np.flatnonzero(widx == w)
        assert s.out[1 + w] == len(mine) and hdr[L.PRODUCER_POSITION_WORD] == len(mine)
        got = slots.view(SLOT_DT).reshape(-1)[:len(mine)]
        assert got["token"].tolist() == [TOKEN0 + i for i in mine]
        assert (got["arrival_ns"] == NOW).all() and (got["request_id"] == RID).all()
        assert [g["event"].tobytes() for g in got] == [recs[i].tobytes() for i in mine]


def test_a_ring_without_room_for_its_share_declines_the_whole_batch():
    recs = batch(100)
    widx = Shards(SCHEMA, 2).of(recs)
    s = Setup([256, 256])
    s.rings_[1][0][L.PRODUCER_POSITION_WORD] = 256 - int((widx == 1).sum()) + 1   # one short
    before = s.state()
    assert s.admit(body_of(recs), 100) == BA.REFUSED
    assert all((a == c).all() and (b == d).all() for (a, b), (c, d) in zip(before, s.state()))


def test_a_bad_value_in_the_last_record_declines_with_nothing_written():
    recs = batch(64)
    recs["y_f64"][63] = np.inf
    s = Setup([256, 256])
    before = s.state()
    assert s.admit(body_of(recs), 64) == BA.BAD_VALUE
    assert all((a == c).all() and (b == d).all() for (a, b), (c, d) in zip(before, s.state()))


def test_a_key_decided_or_in_a_fast_row_is_declined_and_unkeyed_is_not():
    recs = batch(10)
    s = Setup([256])
    s.window.finish((CID, RID), np.zeros(10 * FK.SLOT_BYTES, np.uint8), NOW, rhash=records_hash(recs, FMASK))
    assert s.admit(body_of(recs), 10) == BA.DECIDED
    other = batch(10, seed=4)                                 # the key reused: still declined
    assert s.admit(body_of(other), 10) == BA.DECIDED
    t = Setup([256])
    t.ft[2, [FK.SEQ, FK.KEYED, FK.CID, FK.RID]] = 5, 1, i64_bits(CID), i64_bits(RID)
    t.meta[FK.HIGH] = 3
    assert t.admit(body_of(recs), 10) == BA.KEY_IN_FLIGHT
    assert t.admit(body_of(recs), 10, keyed=0) == BA.ADMITTED


def test_on_a_cluster_node_a_batch_with_a_foreign_event_is_declined_and_changes_nothing():
    """conf PARTITIONED: every event's partition (the shard hash mod the partition count)
    needs a lease deadline still ahead; one event of a partition whose deadline passed (or
    was never this node's) declines the whole batch, FOREIGN, with every ring as it was (the
    general path answers NOT_OWNER, ingress.ownercheck)."""
    n, partitions = 40, 8
    recs = batch(n)
    s = Setup([256, 256])
    s.conf[LK.PARTITIONED] = 1
    s.own = np.full(partitions, np.iinfo(np.int64).max, np.int64)
    before = s.state()
    hashes = [int(OK.shard_hash(r.tobytes(), SCHEMA.dtype.fields[SCHEMA.shard_key][1],
                                SCHEMA.dtype[SCHEMA.shard_key].itemsize,
                                int(SCHEMA.dtype[SCHEMA.shard_key].kind == "i"))) for r in recs]
    s.own[hashes[n - 1] % partitions] = 0              # the last event's lease is gone
    assert s.admit(body_of(recs), n) == BA.FOREIGN
    for (h0, s0), (h1, s1) in zip(before, s.state()):
        assert np.array_equal(h0, h1) and np.array_equal(s0, s1)
    s.own[:] = np.iinfo(np.int64).max                  # every partition held: admitted
    assert s.admit(body_of(recs), n) == BA.ADMITTED
    assert s.out[1:3].sum() == n


def test_the_records_hash_leaves_the_padding_out_as_the_journal_does():
    """Issue 24: a resend whose padding bytes differ from what a window entry was built from
    (the journal stores zeros there; ingress.window_feed) is the same request, not a conflict."""
    pad = field_mask(SCHEMA.dtype).view(np.uint8) == 0
    assert pad.any(), "the test schema has padding"
    clean = batch(10)
    clean.view(np.uint8).reshape(10, -1)[:, pad] = 0
    dirty = clean.copy()
    dirty.view(np.uint8).reshape(10, -1)[:, pad] = 0xA5
    s = Setup([256])
    assert s.admit(body_of(dirty), 10) == BA.ADMITTED
    assert s.out[BA.RHASH] == records_hash(clean, FMASK) == records_hash(dirty, FMASK)
    other = clean.copy()
    other[SCHEMA.shard_key][3] += 1
    assert records_hash(other, FMASK) != records_hash(clean, FMASK)
