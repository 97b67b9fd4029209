"""A cidr6 list's admin changes are replayed from admin.log at recovery: its values are
136-bit ints in the log (prefix length << 128 | network), which a u64 array cannot hold."""
from types import SimpleNamespace

from engine.admin_log import AdminLog
from engine.recovery_state import _apply_admin_log
from shm.features.featureset import FeatureSet
from shm.features.lists import list_values
from shm.features.spec import parse_specs
from shm.ipv6 import cidr6_key, format_cidr6
from shm.runtime.config import load_config

SCHEMA = load_config().schema


def test_cidr6_list_changes_replay_from_the_admin_log(tmp_path):
    specs = parse_specs({}, {"nets6": {"type": "cidr6", "capacity": 8}}, {}, SCHEMA)
    fs = FeatureSet(specs, SCHEMA)
    path = str(tmp_path / "admin.log")
    log = AdminLog(path)
    a, b, c = (cidr6_key(t) for t in ("2001:db8::/32", "fd00:1::5", "fd00:2::/64"))
    for i, (cmd, vals) in enumerate((("list-add", [a, b]), ("list-remove", [a]),
                                     ("list-add", [c]), ("list-replace", [b, c]))):
        log.append(1000 + i, {"cmd": cmd, "name": "nets6", "values": vals, "mono_ns": i})
    n, note = _apply_admin_log(SimpleNamespace(fs=fs), path, after_ns=0)
    assert (n, note) == (4, "")
    assert [format_cidr6(v) for v in list_values(fs.array("fl_nets6"))] == ["fd00:2::/64", "fd00:1::5/128"]   # by length, then network
