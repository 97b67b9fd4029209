"""Config parsing errors name the key path; list files refuse bad lines by line number."""
import numpy as np
import pytest

from shm.runtime.config import ConfigError, load_config
from shm.features import lists as L
from shm.features.keys import key_from_python
from shm.features.spec import parse_specs

SCHEMA = load_config().schema


def feat(**kw):
    return parse_specs({"f": kw}, {}, {}, SCHEMA).features[0]


def test_defaults_and_sizes():
    f = feat(kind="count", key="account_id", window="60s")
    assert (f.nbuckets, f.bucket_ms, f.bytes_per_key, f.expr_type) == (60, 1000, 256, "int")
    f = feat(kind="distinct", of="ip", key="account_id", window="24h")
    assert (f.nbuckets, f.registers, f.bytes_per_key) == (8, 64, 592)   # + window registers
    assert feat(kind="count", key="account_id", window="1s").nbuckets == 50   # largest divisor <= 60
    assert feat(kind="sum", of="amount", key=["account_id", "country"], window="7d").key == ("account_id", "country")
    assert feat(kind="age", key="device_id").expr_type == "int"


def test_a_probe_longer_than_the_table_stays_inside_it():
    """capacity 2 with the default probe of 32 once wrote past the table (heap corruption):
    the probe window is capped at the capacity, and a stream of keys through the real table
    functions leaves guard words after the table untouched."""
    from shm.features import table as T
    from shm.features.scalar import _read_update_age
    from shm.features.windows import _read_update_count
    f = feat(kind="age", key="device_id", capacity=2)
    c = feat(kind="count", key="account_id", window="60s", capacity=3, probe=8)
    st = parse_specs({}, {}, {"s": {"key": "account_id", "capacity": 5}}, SCHEMA).states[0]
    assert (f.probe_len, c.probe_len, st.probe_len) == (2, 3, 5)
    assert feat(kind="age", key="device_id", capacity=100, probe=8).probe_len == 8
    for spec, call in ((f, lambda t, k: _read_update_age(t, f.capacity, f.slot_words, f.probe_len, k, 1000 + k)),
                       (c, lambda t, k: _read_update_count(t, c.capacity, c.slot_words, c.probe_len,
                                                           c.nbuckets, c.bucket_ms, k, 1000 * k, 0.0))):
        end = T.table_words(spec.capacity, spec.slot_words)
        t = np.zeros(end + 64, np.uint64)
        T.init_table(t, spec.capacity, spec.slot_words)
        for k in range(1, 50):
            call(t, k)
        assert not t[end:].any()
        assert T.counters(t)["fill"] == spec.capacity and T.counters(t)["evictions"] == 49 - spec.capacity


@pytest.mark.parametrize("raw,path", [
    ({"kind": "count", "key": "account_id", "window": "8d"}, "features.f.window"),
    ({"kind": "count", "key": "account_id", "window": "500ms"}, "features.f.window"),
    ({"kind": "count", "key": "account_id", "window": "soon"}, "features.f.window"),
    ({"kind": "count", "key": "amount", "window": "60s"}, "features.f.key"),
    ({"kind": "count", "key": "nope", "window": "60s"}, "features.f.key"),
    ({"kind": "sum", "key": "account_id", "window": "60s"}, "features.f.of"),
    ({"kind": "sum", "of": "country", "key": "account_id", "window": "60s"}, "features.f.of"),
    ({"kind": "count", "key": "account_id", "window": "60s", "buckets": 7}, "features.f.buckets"),
    ({"kind": "distinct", "of": "ip", "key": "account_id", "window": "1h", "registers": 100}, "features.f.registers"),
    ({"kind": "age", "key": "device_id", "window": "1h"}, "features.f.window"),
    ({"kind": "count", "key": "account_id", "window": "60s", "update": "never"}, "features.f.update"),
    ({"kind": "count", "key": "account_id", "window": "60s", "time": "amount"}, "features.f.time"),
    ({"kind": "median", "key": "account_id"}, "features.f.kind"),
    ({"kind": "count", "key": "account_id", "window": "60s", "colour": 1}, "features.f.colour"),
])
def test_feature_errors_name_the_key(raw, path):
    with pytest.raises(ConfigError) as e:
        parse_specs({"f": raw}, {}, {}, SCHEMA)
    assert e.value.key == path


def test_name_clashes():
    with pytest.raises(ConfigError, match="features.amount"):
        parse_specs({"amount": {"kind": "age", "key": "device_id"}}, {}, {}, SCHEMA)
    with pytest.raises(ConfigError, match="state.x"):
        parse_specs({"x": {"kind": "age", "key": "device_id"}}, {}, {"x": {"key": "account_id"}}, SCHEMA)
    with pytest.raises(ConfigError, match="lists.l.type"):
        parse_specs({}, {"l": {"type": "f64"}}, {}, SCHEMA)


def test_list_file_bad_line_refuses_whole_file(tmp_path):
    p = tmp_path / "ips.txt"
    p.write_text("# header\n10.0.0.1\n\n42  # comment\n10.0.0.300\n7\n")
    with pytest.raises(L.ListError, match=r"ips.txt:5: "):
        L.load_list_file(str(p), "u32")
    with pytest.raises(L.ListError, match=r":2: .*out of range"):
        L.parse_list_text("1\n4294967296\n", "u32")
    with pytest.raises(L.ListError, match=r":1: not an integer"):
        L.parse_list_text("abc\n", "i64")
    with pytest.raises(L.ListError, match=r":3: .*longer than bytes2"):
        L.parse_list_text("US\nFR\nFRA\n", "bytes2")


def test_list_values_and_atomic_replace(tmp_path):
    vals = L.parse_list_text("-1\n0x10\n16\n5\n", "i64")
    assert sorted(vals.tolist()) == [5, 16, 2**64 - 1]
    buf = np.zeros(L.list_words(4), np.uint64)
    L.init_list(buf, 4)
    assert not L._list_contains(buf, np.uint64(5))
    assert L.replace_list(buf, vals) == 1
    assert L._list_contains(buf, np.uint64(5)) and L._list_contains(buf, np.uint64(2**64 - 1))
    assert L.replace_list(buf, np.array([7], np.uint64)) == 2
    assert not L._list_contains(buf, np.uint64(5)) and L._list_contains(buf, np.uint64(7))
    assert L.list_values(buf).tolist() == [7]
    with pytest.raises(L.ListError, match="capacity=4"):
        L.replace_list(buf, np.arange(5, dtype=np.uint64))
    assert L.list_values(buf).tolist() == [7]          # a refused replace changes nothing


def test_example_list_and_encodings():
    v = L.load_list_file("rules/examples/blocked_ips.txt", "u32")
    assert 0xCB007107 in v.tolist() and 0xC0000201 in v.tolist() and len(v) == 4
    assert key_from_python(b"US", "bytes2") == ord("U") | ord("S") << 8
    assert key_from_python(b"a" * 20, "bytes32") == L.parse_value("a" * 20, "bytes32")
