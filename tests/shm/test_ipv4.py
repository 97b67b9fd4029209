"""The ipv4 schema type (issue 25): strict dotted quads in JSON events and lists, a u32 in
the record with the same schema hash and layout as u32."""
import numpy as np
import pytest

from ingress.codec import Codec
from ingress.wire import WireError
from shm.features.lists import ListError, parse_list_text
from shm.ipv4 import format_ipv4, parse_ipv4
from shm.schema import Schema
from shm.types import ErrorCode

FIELDS = {"id": "u64", "ip": "ipv4", "amount": "f64"}
SCHEMA = Schema.build(FIELDS, "id")
CODEC = Codec(SCHEMA, 8, 1 << 16)


@pytest.mark.parametrize("text,value", [("10.0.0.1", 0x0A000001), ("0.0.0.0", 0),
                                        ("255.255.255.255", 0xFFFFFFFF), ("192.0.2.1", 0xC0000201)])
def test_dotted_quads_parse_and_format_back(text, value):
    assert parse_ipv4(text) == value and format_ipv4(value) == text


@pytest.mark.parametrize("text,why", [
    ("010.0.0.1", "leading zero"), ("10.0.0.00", "leading zero"), ("256.1.1.1", "out of range 0..255"),
    ("1.2.3.999", "out of range 0..255"), (" 10.0.0.1", "whitespace"), ("10.0.0.1\n", "whitespace"),
    ("10.0. 0.1", "whitespace"), ("10.0.1", "four decimal octets"), ("1.2.3.4.5", "four decimal octets"),
    ("0x0a.0.0.1", "four decimal octets"), ("+1.2.3.4", "four decimal octets"),
    ("\uff11.2.3.4", "four decimal octets"), ("", "four decimal octets"), ("167772161", "four decimal octets")])
def test_sloppy_addresses_are_refused_with_the_reason(text, why):
    with pytest.raises(ValueError, match=why):
        parse_ipv4(text)


def test_ipv4_is_a_u32_on_the_wire():
    """Same dtype and schema hash as u32: binary clients and their C headers are unchanged."""
    as_u32 = Schema.build({**FIELDS, "ip": "u32"}, "id")
    assert SCHEMA.dtype == as_u32.dtype and SCHEMA.hash == as_u32.hash
    assert SCHEMA.field("ip").kind == "uint" and SCHEMA.field("ip").hi == 2**32 - 1


def test_json_events_take_dotted_or_integer_and_give_back_dotted():
    recs = CODEC.events.to_records([{"id": 1, "ip": "10.0.0.1", "amount": 1.0},
                                    {"id": 2, "ip": 0x0A000002, "amount": 2.0}])
    assert recs["ip"].tolist() == [0x0A000001, 0x0A000002]
    one = CODEC.events.to_records([{"id": 1, "ip": "203.0.113.7", "amount": 1.0}])   # fast path
    assert one["ip"][0] == 0xCB007107
    assert [e["ip"] for e in CODEC.events.to_events(recs)] == ["10.0.0.1", "10.0.0.2"]


@pytest.mark.parametrize("value,code,text", [
    ("010.0.0.1", ErrorCode.BAD_FIELD, "events[1].ip: '010.0.0.1': octet '010' has a leading zero"),
    ("10.0.0.256", ErrorCode.BAD_FIELD, "events[1].ip: '10.0.0.256': octet 256 out of range 0..255"),
    ("10.0.0.1 ", ErrorCode.BAD_FIELD, "events[1].ip: '10.0.0.1 ' has whitespace"),
    (1.5, ErrorCode.BAD_FIELD, 'events[1].ip: expected an IPv4 address ("10.0.0.1") or an integer, got number'),
    (True, ErrorCode.BAD_FIELD, "got boolean"),
    (2**32, ErrorCode.OUT_OF_RANGE, "events[1].ip: 4294967296 out of range [0, 4294967295]"),
    (-1, ErrorCode.OUT_OF_RANGE, "out of range")])
def test_bad_addresses_in_json_are_refused_with_a_stable_code(value, code, text):
    for events in ([{"id": 1, "ip": "1.2.3.4", "amount": 1.0}, {"id": 2, "ip": value, "amount": 1.0}],):
        with pytest.raises(WireError) as e:
            CODEC.events.to_records(events)
        assert e.value.code == code and text in e.value.message, e.value.message
    with pytest.raises(WireError) as e:                           # the single-event path agrees
        CODEC.events.to_records([{"id": 2, "ip": value, "amount": 1.0}])
    assert e.value.code == code


def test_ipv4_list_files_are_strict():
    vals = parse_list_text("10.0.0.1\n# c\n192.0.2.1  # doc range\n", "ipv4", "f.txt")
    assert vals.tolist() == [0x0A000001, 0xC0000201] and vals.dtype == np.uint64
    for bad in ("010.0.0.1", "0xC0000201", "167772161", "1.2.3"):
        with pytest.raises(ListError, match=r"^f.txt:2: "):
            parse_list_text(f"10.0.0.1\n{bad}\n", "ipv4", "f.txt")
