"""ingress.window_feed: journal records another node published become entries of this node's
idempotency window, through a 0600 file in the run directory and two control-block cells, so a
resend of a request decided there is answered with that decision (docs/CLUSTER.md, "Failover
in serve"). Real control block layout, real window, real files."""
from __future__ import annotations

import os
import stat

import numpy as np

from ingress import window_feed
from ingress.dedup import CONFLICT, IdempotencyWindow, record_mask, records_hash
from shm.journal_append import field_mask
from shm.control import Block, BlockLayout
from shm.journal_format import journal_dtype
from shm.runtime.config import load_config
from shm.types import DecisionFlag

SCHEMA = load_config().schema
WINDOW_NS = 60 * 10**9
FMASK = record_mask(SCHEMA.dtype)


def _records(rows):
    """Journal records of (client_id, request_id, account, score, action), in order: every
    event field byte not zero, the padding zero (the journal writer stores zeros there:
    shm.journal_append.field_mask)."""
    r = np.zeros(len(rows), journal_dtype(SCHEMA.dtype))
    off, size = r.dtype.fields["event"][1], r.dtype.fields["event"][0].itemsize
    raw = r.view(np.uint8).reshape(len(r), -1)
    raw[:, off:off + size] = np.random.default_rng(1).integers(1, 255, (len(r), size)) \
        * (field_mask(SCHEMA.dtype).view(np.uint8) != 0)
    for i, (cid, rid, acct, score, action) in enumerate(rows):
        r[i]["client_id"], r[i]["request_id"] = cid, rid
        r[i]["event"]["account_id"] = acct
        r[i]["score"], r[i]["action"], r[i]["generation"] = score, action, 3
    return r


def _events(recs, *rows) -> np.ndarray:
    """The events' bytes as a client resends them: the fields as journaled, the padding not
    zero (the engine ignores it; the Python cluster client sends what numpy's fancy indexing
    left there: issue 24's IDEMPOTENCY_CONFLICT after a hand-over)."""
    raw = recs.view(np.uint8).reshape(len(recs), -1)
    off, size = recs.dtype.fields["event"][1], recs.dtype.fields["event"][0].itemsize
    ev = np.ascontiguousarray(raw[list(rows), off:off + size])
    ev[:, field_mask(SCHEMA.dtype).view(np.uint8) == 0] = 0xA5
    return ev.reshape(-1)


def _block():
    return Block(np.zeros(BlockLayout(1).nbytes, np.uint8), 1, create=True)


def test_a_taken_partitions_decisions_answer_a_resend_and_a_reused_id_is_a_conflict(tmp_path):
    os.chmod(tmp_path, 0o700)
    recs = _records([(7, 1, 100, 12.5, 2), (9, 4, 101, 0.0, 0), (7, 1, 102, 30.0, 1),
                     (0, 5, 103, 1.0, 0)])                  # client 0: never deduplicated
    ents, slots = window_feed.entries([recs[:1], recs[1:]])    # two stream messages
    assert [tuple(e)[:3] for e in ents.tolist()] == [(7, 1, 2), (9, 4, 1)]
    block, dedup = _block(), IdempotencyWindow(WINDOW_NS, 64, 64 * 64)
    feed = window_feed.WindowFeed(tmp_path, dedup, block)
    path = window_feed.write(tmp_path, 1, ents, slots)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert feed.service() == 0                              # not announced yet: not read
    block.view("supervisor.window_feed")[0] = 1
    assert feed.service() == 2
    assert block.view("ingress.window_fed")[0] == 1 and not os.path.exists(path)
    two = _events(recs, 0, 2)                              # the request's events, its order
    got = dedup.decided_slots((7, 1), 0, 2, records_hash(two, FMASK))
    assert got is not None and got is not CONFLICT
    assert got["score"].tolist() == [12.5, 30.0] and got["action"].tolist() == [2, 1]
    assert (got["generation"] == 3).all() and (got["flags"] & DecisionFlag.DUPLICATE).all()
    one = _events(recs, 1)
    assert dedup.decided_slots((9, 4), 0, 1, records_hash(one, FMASK))["score"][0] == 0.0
    assert dedup.decided_slots((7, 1), 0, 1, records_hash(_events(recs, 0), FMASK)) is CONFLICT   # other events
    assert dedup.decided_slots((0, 5), 0, 1, records_hash(one, FMASK)) is None


def test_a_damaged_feed_file_is_reported_and_refused_not_half_applied(tmp_path, capsys):
    os.chmod(tmp_path, 0o700)
    ents, slots = window_feed.entries([_records([(7, 1, 100, 1.0, 0)])])
    path = window_feed.write(tmp_path, 1, ents, slots)
    with open(path, "r+b") as f:                            # one entry's count made 2
        f.seek(window_feed._HEAD.size + 16)
        f.write(np.int64(2).tobytes())
    block, dedup = _block(), IdempotencyWindow(WINDOW_NS, 64, 64 * 64)
    block.view("supervisor.window_feed")[0] = 1
    assert window_feed.WindowFeed(tmp_path, dedup, block).service() == 0
    assert block.view("ingress.window_fed").tolist() == [1, 1]        # done with, refused
    assert "window feed 1 not applied" in capsys.readouterr().err
    assert len(dedup) == 0 and not os.path.exists(path)


def test_a_large_feed_is_inserted_over_several_rounds_and_announced_once_whole(tmp_path):
    os.chmod(tmp_path, 0o700)
    recs = _records([(7, k, 100 + k, float(k), 0) for k in range(1, 6)])
    window_feed.write(tmp_path, 1, *window_feed.entries([recs]))
    block, dedup = _block(), IdempotencyWindow(WINDOW_NS, 64, 64 * 64)
    feed = window_feed.WindowFeed(tmp_path, dedup, block)
    feed.PER_ROUND = 2                                      # the ingress serves in between
    block.view("supervisor.window_feed")[0] = 1
    assert [feed.service(), block.view("ingress.window_fed")[0]] == [2, 0]
    assert [feed.service(), block.view("ingress.window_fed")[0]] == [2, 0]
    assert [feed.service(), block.view("ingress.window_fed")[0]] == [1, 1]   # taker may serve now
    assert feed.service() == 0 and len(dedup) == 5
