"""Every shared-memory structure's byte offsets, pinned to the values the engine has always
used: other processes of the same install and the journal files on disk read these bytes,
so a change must be deliberate (edit the table here, bump the structure's version, say why
in the commit). Read through the public constants and views the code uses, not through the
descriptors, so the pins hold whatever builds the layouts."""
from __future__ import annotations

import numpy as np
import pytest

from shm import layout as L
from shm.control import Block, BlockLayout
from shm.features import table as FT
from shm.journal_format import journal_dtype
from shm.schema import Schema
from shm.types import FIRED_SLOT_DTYPE, RESPONSE_SLOT_DTYPE, request_slot_dtype

RING_HEADER = [(0, "MAGIC"), (128, "LAYOUT_VERSION"), (256, "CAPACITY"), (384, "SLOT_SIZE"),
               (512, "SLOT_DTYPE_HASH"), (640, "PRODUCER_POSITION"),
               (768, "PRODUCER_CACHED_CONSUMER"), (896, "PRODUCER_FULL_COUNT"),
               (1024, "PRODUCER_DOORBELL_COUNT"), (1152, "CONSUMER_POSITION"),
               (1280, "CONSUMER_CACHED_PRODUCER"), (1408, "CONSUMER_SLEEPING"),
               (1536, "CONSUMER_SLEEP_COUNT"), (1664, "PRODUCER_SEEN_CONSUMER"),
               (1792, "PRODUCER_SEEN_CONSUMER_NS")]

# (byte offset in the section, name, bytes); sections follow each other in this order
SUPERVISOR = [(0, "header", 16), (64, "stop", 8), (128, "generation", 8), (192, "worker_restarts", 8),
              (256, "ingress_restarts", 8), (320, "reload_errors", 8), (384, "pause", 8),
              (448, "snapshots", 8), (512, "snapshot_errors", 8), (576, "snapshot_pause_ns", 8),
              (640, "snapshot_pause_max_ns", 8), (704, "worker_epoch", 512), (1216, "worker_pid", 512),
              (1728, "worker_alive", 512), (2240, "ingress_pid", 8), (2304, "ingress_alive", 8),
              (2368, "snapshot_log", 4104), (6528, "worker_restart_ns", 8), (6592, "standby_pid", 8),
              (6656, "journal_corrupt_records", 8), (6720, "snapshots_refused", 8),
              (6784, "snapshots_skipped", 8), (6848, "serving", 8), (6912, "standby_phase", 16),
              (6976, "window_feed", 8)]
INGRESS = [(0, "requests", 512), (512, "decisions", 24), (576, "inflight", 8), (640, "accepting", 8),
           (704, "deduplicated", 8), (768, "timeouts", 8), (832, "worker_lost", 8),
           (896, "eval_hist", 256), (1152, "stage_hist", 384), (1536, "gc_hist", 64),
           (1600, "generation_seen", 8), (1664, "dedup_meta", 32), (1728, "timeout_log", 4104),
           (5888, "py_blocks", 8), (5952, "overloaded", 40), (6016, "connections", 8),
           (6080, "connections_closed", 16), (6144, "phase", 16), (6208, "autoblock", 32),
           (6272, "window_fed", 16), (6336, "py_messages", 8)]     # control block version 4
WORKER = [(0, "batches", 8), (64, "events", 8), (128, "generation", 8), (192, "reload_errors", 8),
          (256, "paused", 8), (320, "journal_seq", 8), (384, "retain_seq", 8), (448, "kernel_hist", 96),
          (576, "gc_hist", 64), (640, "heartbeat_ns", 8), (704, "pickup_hist", 128), (832, "stalls", 40),
          (896, "stall_log", 4104), (5056, "row_generation", 16), (5120, "py_blocks", 8),
          (5184, "journal_unavailable", 8), (5248, "journal_write_errors", 8),
          (5312, "replication_failed", 8),     # control block version 3
          (5376, "rule_hits", 32768), (38144, "rule_errors", 32768), (70912, "phase", 16)]
SECTION_BYTES = {"supervisor": 7040, "ingress": 6400, "worker": 70976}

SCHEMA = Schema.build({"account_id": "u64", "amount": "f64", "country": "bytes2", "ok": "bool",
                       "n": "bytes13"}, "account_id")


def test_ring_header_offsets():
    got = [(getattr(L, n + "_OFFSET"), n) for _, n in RING_HEADER]
    assert got == RING_HEADER
    assert [getattr(L, n + "_WORD") for _, n in RING_HEADER] == [o // 8 for o, _ in RING_HEADER]
    assert (L.HEADER_BYTES, L.SLOTS_OFFSET, L.HEADER_WORDS) == (1920, 1920, 240)


@pytest.mark.parametrize("n_workers", [1, 3])
def test_control_block_offsets(n_workers):
    block = Block(bytearray(BlockLayout(n_workers).nbytes), n_workers, create=True)
    base = block.cells.__array_interface__["data"][0]

    def placed(section: str, start: int, pins: list) -> list:
        out = []
        for off, name, size in pins:
            v = block.view(f"{section}.{name}")
            out.append((v.__array_interface__["data"][0] - base - start, name, v.nbytes))
        return out

    start = 0
    sections = [("supervisor", SUPERVISOR), ("ingress", INGRESS)] + \
               [(f"worker{w}", WORKER) for w in range(n_workers)]
    for section, pins in sections:
        assert placed(section, start, pins) == pins, section
        start += SECTION_BYTES[section.rstrip("0123456789")]
    assert BlockLayout(n_workers).nbytes == start


def test_feature_table_header_words():
    assert (FT.W_MAGIC, FT.W_VERSION, FT.W_CAPACITY, FT.W_SLOT_WORDS) == (0, 1, 2, 3)
    assert FT.COUNTER_NAMES == {"fill": 8, "evictions": 16, "late_dropped": 24, "lock_timeouts": 32,
                                "full": 40}
    assert (FT.C_FILL, FT.C_EVICTIONS, FT.C_LATE, FT.C_TIMEOUTS, FT.C_FULL) == (8, 16, 24, 32, 40)
    assert (FT.STRIPE_BASE, FT.STRIPE_STRIDE, FT.N_STRIPES) == (64, 8, 256)
    assert (FT.SLOT_BASE, FT.HEADER_BYTES) == (2112, 16896)
    assert (FT.KEY_OFF, FT.META_OFF, FT.PAYLOAD_OFF) == (0, 1, 2)


def _offsets(dt: np.dtype) -> list:
    return [(name, dt.fields[name][1], str(dt.fields[name][0])) for name in dt.names] + [("", dt.itemsize, "")]


def test_slot_and_record_offsets():
    ev = SCHEMA.dtype
    e = ev.itemsize
    assert e == 32
    assert _offsets(request_slot_dtype(ev)) == [
        ("token", 0, "uint64"), ("arrival_ns", 8, "int64"), ("client_id", 16, "uint64"),
        ("request_id", 24, "uint64"), ("event", 32, str(ev)), ("", 64, "")]
    assert _offsets(RESPONSE_SLOT_DTYPE) == [
        ("token", 0, "uint64"), ("score", 8, "float64"), ("generation", 16, "uint32"),
        ("action", 20, "uint8"), ("flags", 21, "uint8"), ("nfired", 22, "uint16"),
        ("fired", 24, "('<u2', (16,))"), ("error", 56, "uint16"), ("", 64, "")]
    assert _offsets(FIRED_SLOT_DTYPE) == [
        ("token", 0, "uint64"), ("total", 8, "uint16"), ("count", 10, "uint16"),
        ("block_ttl_ms", 12, "uint32"), ("idx", 16, "('<u2', (24,))"), ("", 64, "")]
    assert _offsets(journal_dtype(ev)) == [
        ("seq", 0, "uint64"), ("arrival_ns", 8, "int64"), ("client_id", 16, "uint64"),
        ("request_id", 24, "uint64"), ("event", 32, str(ev)), ("score", 32 + e, "float64"),
        ("generation", 40 + e, "uint32"), ("action", 44 + e, "uint8"), ("flags", 45 + e, "uint8"),
        ("check", 48 + e, "uint64"), ("", 56 + e, "")]
    assert _offsets(journal_dtype(ev, 1)) == [
        ("seq", 0, "uint64"), ("arrival_ns", 8, "int64"), ("event", 16, str(ev)),
        ("score", 16 + e, "float64"), ("generation", 24 + e, "uint32"), ("action", 28 + e, "uint8"),
        ("flags", 29 + e, "uint8"), ("check", 32 + e, "uint64"), ("", 40 + e, "")]
    # the ring checks the slot dtype by a hash of its descr across processes: same dtype, same hash
    for dt in (request_slot_dtype(ev), RESPONSE_SLOT_DTYPE, FIRED_SLOT_DTYPE, journal_dtype(ev)):
        assert not dt.isalignedstruct


def test_slot_dtype_hashes_are_unchanged():
    """The 63-bit hash of a slot dtype's descr that a ring header carries (an attaching
    process compares it): numpy sees the same dtypes, not only the same offsets."""
    assert L.slot_dtype_hash(RESPONSE_SLOT_DTYPE) == 0xC4A56ED4E1371D
    assert L.slot_dtype_hash(FIRED_SLOT_DTYPE) == 0x33FB84165EE8D227   # block_ttl_ms (was reserved)
    assert L.slot_dtype_hash(request_slot_dtype(SCHEMA.dtype)) == 0x6374B8171C6D535C
    assert L.slot_dtype_hash(journal_dtype(SCHEMA.dtype)) == 0x2B26BD425076C5A4
