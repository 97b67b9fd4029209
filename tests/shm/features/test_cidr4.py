"""cidr4 lists (issue 23): one prefix per line, a bad line refused with its number, host bits
refused (never masked), one key per block so list-add of a block already there is a no-op."""
import numpy as np
import pytest

from shm.features import lists as L
from shm.features.spec import parse_specs
from shm.ipv4 import cidr4_key, format_cidr4
from shm.runtime.config import ConfigError, load_config

SCHEMA = load_config().schema


def test_keys_round_trip_and_a_bare_address_is_its_slash_32():
    for text in ("10.0.0.0/8", "192.0.2.7/32", "0.0.0.0/0", "203.0.113.128/25"):
        assert format_cidr4(cidr4_key(text)) == text
    assert cidr4_key("192.0.2.7") == cidr4_key("192.0.2.7/32")
    assert cidr4_key("10.0.0.0/8") == 8 << 32 | 0x0A000000
    # the same network with two lengths is two entries
    assert cidr4_key("10.0.0.0/8") != cidr4_key("10.0.0.0/16")


def test_a_list_file_refuses_a_bad_line_by_number(tmp_path):
    p = tmp_path / "cidrs.txt"
    p.write_text("# blocks\n10.0.0.0/8\n\n192.0.2.0/24  # test net\n10.0.0.0/8\n")
    got = L.load_list_file(str(p), "cidr4")
    assert [format_cidr4(v) for v in got] == ["10.0.0.0/8", "192.0.2.0/24"]
    for bad, why in (("10.0.0.1/8", "host bits set (the block is 10.0.0.0/8)"),
                     ("10.0.0.0/33", "prefix length must be 0..32"),
                     ("10.0.0.0/08", "prefix length must be 0..32"),
                     ("10.0.0/8", "not four decimal octets"),
                     ("::/0", "not four decimal octets")):
        p.write_text(f"10.0.0.0/8\n# c\n{bad}\n")
        with pytest.raises(L.ListError, match=rf"cidrs.txt:3: .*{why.replace('(', '.').replace(')', '.')}"):
            L.load_list_file(str(p), "cidr4")


def test_the_spec_takes_cidr4_and_names_it_in_the_error():
    specs = parse_specs({}, {"nets": {"type": "cidr4", "capacity": 8}}, {}, SCHEMA)
    assert specs.lists[0].type == "cidr4"
    with pytest.raises(ConfigError, match="lists.nets.type: must be u32, u64, i64, ipv4, cidr4"):
        parse_specs({}, {"nets": {"type": "cidr5"}}, {}, SCHEMA)


def test_the_double_buffer_holds_cidr4_keys():
    buf = np.zeros(L.list_words(4), np.uint64)
    L.init_list(buf, 4)
    L.replace_list(buf, np.array([cidr4_key("10.0.0.0/8"), cidr4_key("192.0.2.0/24")], np.uint64))
    assert sorted(format_cidr4(v) for v in L.list_values(buf)) == ["10.0.0.0/8", "192.0.2.0/24"]
