"""The ring slots and the journal record (shm.types, shm.journal_format): built from shared
descriptors, so the words the worker copies from a request and a response slot into a
journal record line up for any schema, by construction."""
from __future__ import annotations

import pytest

from shm.journal_format import journal_dtype, journal_layout
from shm.schema import Schema
from shm.types import (DECISION, REQUEST_HEAD, RESPONSE_SLOT, SLOT_ARRIVAL_OFFSET, SLOT_CLIENT_ID_OFFSET,
                       SLOT_REQUEST_ID_OFFSET, SLOT_TOKEN_OFFSET, request_slot_dtype, request_slot_layout)


SCHEMAS = [({"a": "u8"}, "a"),
           ({"account_id": "u64", "amount": "f64", "country": "bytes2"}, "account_id"),
           ({"k": "i16", "z": "bytes64", "q": "u32", "f": "f32", "b": "bool"}, "k")]


@pytest.mark.parametrize("fields,key", SCHEMAS)
def test_a_request_slot_and_a_journal_record_share_their_words(fields, key):
    """What the worker's word-by-word copy into the journal relies on
    (shm.journal_append._append_slots), for any schema."""
    ev = Schema.build(fields, key).dtype
    slot, rec = request_slot_layout(ev), journal_layout(ev)
    for name in ("arrival_ns", "client_id", "request_id", "event"):
        assert slot[name].offset == rec[name].offset and slot[name].size == rec[name].size
    w = rec.words
    for name in ("score", "generation", "action", "flags"):     # DECISION: response words 1-2,
        assert rec.offset(name) - (w - 3) * 8 == RESPONSE_SLOT.offset(name) - 8   # record w-3..w-2
        assert RESPONSE_SLOT.offset(name) - 8 == DECISION.offset(name)
    assert rec.offset("check") == (w - 1) * 8 and rec.offset("event") + ev.itemsize == (w - 3) * 8
    assert journal_dtype(ev) == rec.dtype()


def test_a_v1_record_is_the_v2_record_without_the_ids():
    ev = Schema.build(*SCHEMAS[1]).dtype
    v1, v2 = journal_layout(ev, 1), journal_layout(ev, 2)
    assert [f.name for f in v2 if f.name not in ("client_id", "request_id")] == [f.name for f in v1]
    assert all(v2.offset(f.name) - v1.offset(f.name) == (0 if f.name in ("seq", "arrival_ns") else 16)
               for f in v1)


@pytest.mark.parametrize("fields,key", SCHEMAS)
def test_the_kernels_slot_offsets_hold_for_every_schema(fields, key):
    """ingress._fast_kernels.write_slot stores at these offsets whatever the event is."""
    dt = request_slot_dtype(Schema.build(fields, key).dtype)
    assert [dt.fields[f][1] for f in ("token", "arrival_ns", "client_id", "request_id")] == \
        [SLOT_TOKEN_OFFSET, SLOT_ARRIVAL_OFFSET, SLOT_CLIENT_ID_OFFSET, SLOT_REQUEST_ID_OFFSET] == \
        [REQUEST_HEAD.offset(f) for f in ("token", "arrival_ns", "client_id", "request_id")]
    assert all(type(o) is int for o in (SLOT_TOKEN_OFFSET, SLOT_ARRIVAL_OFFSET, SLOT_CLIENT_ID_OFFSET,
                                         SLOT_REQUEST_ID_OFFSET))
