"""cidr6 lists (issue 23): one IPv6 prefix per line (a bare address is its /128), a bad line
refused with its number, host bits refused (never masked, as cidr4), normalised (one key
per block however it is spelled); 136 bits a value, so the list stores three words each."""
import numpy as np
import pytest

from shm.features import lists as L
from shm.features.spec import parse_specs
from shm.ipv6 import cidr6_key, format_cidr6
from shm.runtime.config import ConfigError, load_config

SCHEMA = load_config().schema


def test_keys_round_trip_normalised_and_a_bare_address_is_its_slash_128():
    for text in ("2001:db8::/32", "fd00:1:2:3::/64", "::/0", "fd00::5/128"):
        assert format_cidr6(cidr6_key(text)) == text
    assert cidr6_key("2001:DB8:0:0::/32") == cidr6_key("2001:db8::/32")     # one spelling
    assert cidr6_key("fd00::5") == cidr6_key("fd00::5/128") == 128 << 128 | 0xFD00 << 112 | 5
    assert cidr6_key("2001:db8::/32") != cidr6_key("2001:db8::/48")


def test_a_list_file_refuses_a_bad_line_by_number(tmp_path):
    p = tmp_path / "nets6.txt"
    p.write_text("# blocks\n2001:db8::/32\n\nfd00:1::/64  # lab\n2001:0db8::/32\n")
    got = L.load_list_file(str(p), "cidr6")
    assert [format_cidr6(v) for v in got] == ["2001:db8::/32", "fd00:1::/64"]
    for bad, why in (("2001:db8::1/32", "has host bits set (the block is 2001:db8::/32)"),
                     ("2001:db8::/129", "prefix length must be 0..128"),
                     ("2001:db8::/032", "prefix length must be 0..128"),
                     ("fe80::1%eth0", "no whitespace or zone"),
                     ("10.0.0.0/8", "is not an IPv6 prefix"),
                     ("2001:db8:::/32", "is not an IPv6 prefix")):
        p.write_text(f"2001:db8::/32\n# c\n{bad}\n")
        with pytest.raises(L.ListError, match=rf"nets6.txt:3: .*{why.replace('(', '.').replace(')', '.')}"):
            L.load_list_file(str(p), "cidr6")


def test_the_spec_takes_cidr6():
    specs = parse_specs({}, {"nets6": {"type": "cidr6", "capacity": 8}}, {}, SCHEMA)
    assert specs.lists[0].type == "cidr6"
    with pytest.raises(ConfigError, match="lists.nets6.type: must be u32, u64, i64, ipv4, cidr4, cidr6"):
        parse_specs({}, {"nets6": {"type": "cidr7"}}, {}, SCHEMA)


def test_the_double_buffer_holds_whole_cidr6_keys():
    """Three words a value: a u64 list would keep only the low 64 bits of the address."""
    w = L.value_width("cidr6")
    buf = np.zeros(L.list_words(3, w), np.uint64)
    L.init_list(buf, 3, w)
    keys = [cidr6_key(t) for t in ("2001:db8::/32", "fd00::5", "2001:db8:0:1::/64")]
    assert L.replace_list(buf, keys) == 1
    assert list(L.list_values(buf)) == sorted(keys)
    L.replace_list(buf, L.as_values(buf, [keys[1]]))       # the other half, then the flip
    assert [format_cidr6(v) for v in L.list_values(buf)] == ["fd00::5/128"]
    with pytest.raises(L.ListError, match="4 values exceed capacity=3"):
        L.replace_list(buf, keys + [cidr6_key("::/0")])
    assert [format_cidr6(v) for v in L.list_values(buf)] == ["fd00::5/128"]   # untouched
