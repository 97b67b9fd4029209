"""The compiler contract: a kernel generated only from FeatureSet bindings (as the rule
compiler will) reads features including the current event, commits after the decision,
honours unless_blocked, account state, global halt and list membership."""
import importlib.util

import numpy as np

from shm.runtime.config import load_config
from shm.features.featureset import IMPORTS, FeatureSet
from shm.features.spec import parse_specs
from shm.features.state import HALTED

CFG = load_config()
FEATURES = {
    "txn_count_1m": {"kind": "count", "key": "account_id", "window": "60s", "capacity": 64},
    "card_blocked_sum": {"kind": "sum", "of": "amount", "key": "card_id", "window": "1h",
                         "update": "unless_blocked", "capacity": 64},
    "first_seen_s": {"kind": "age", "key": "device_id", "capacity": 64},
    "last_amount": {"kind": "last", "of": "amount", "key": ["account_id", "country"], "capacity": 64},
}


def build(tmp_path):
    specs = parse_specs(FEATURES, {"blocked_ips": {"type": "u32", "file": "rules/examples/blocked_ips.txt", "capacity": 16}},
                        {"account_state": {"key": "account_id", "capacity": 64}}, CFG.schema)
    fs = FeatureSet(specs, CFG.schema)
    b = fs.bindings
    assert b["txn_count_1m"].can_fuse() and not b["card_blocked_sum"].can_fuse()
    args = ", ".join(fs.arg_names())
    # rule: block if more than 2 txns a minute, blocked ip, halted account or global halt
    src = "\n".join(IMPORTS) + f"""
from numba import njit

@njit(cache=True)
def kernel(events, arrival_ms, out, {args}):
    for i in range(events.shape[0]):
        rec = events[i]
        a_ms = arrival_ms[i]
        c = {b['txn_count_1m'].emit_read_update('rec', 'a_ms')}   # always: fused, no update below
        s = {b['card_blocked_sum'].emit_read('rec', 'a_ms')}
        age = {b['first_seen_s'].emit_read('rec', 'a_ms')}
        last = {b['last_amount'].emit_read('rec', 'a_ms')}
        blocked = c > 2 or {b['blocked_ips'].emit_contains('rec.ip', 'u32')} \\
            or {b['account_state'].emit_read('rec')} == {HALTED} or {b['global_halt'].emit_read()}
        out[i, 0] = c
        out[i, 1] = s
        out[i, 2] = age
        out[i, 3] = last
        out[i, 4] = blocked
        if not blocked:
            {b['card_blocked_sum'].emit_update('rec', 'a_ms')}
        {b['first_seen_s'].emit_update('rec', 'a_ms')}
        {b['last_amount'].emit_update('rec', 'a_ms')}
"""
    path = tmp_path / "gen_kernel.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("gen_kernel", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return fs, mod.kernel


def run(fs, kernel, rows):
    ev = np.zeros(len(rows), CFG.schema.dtype)
    arr = np.zeros(len(rows), np.int64)
    for i, (acct, card, dev, amount, ip, t_ms) in enumerate(rows):
        ev[i]["account_id"], ev[i]["card_id"], ev[i]["device_id"] = acct, card, dev
        ev[i]["amount"], ev[i]["ip"], ev[i]["country"] = amount, ip, b"FR"
        arr[i] = t_ms
    out = np.zeros((len(rows), 5))
    kernel(ev, arr, out, *fs.arrays())
    return out


def test_generated_kernel_semantics(tmp_path):
    fs, kernel = build(tmp_path)
    out = run(fs, kernel, [
        (1, 10, 100, 5.0, 1, 1000),      # count 1, sum 5, age 0, last nan
        (1, 10, 100, 7.0, 1, 3500),      # count 2, sum 12, age 2, last 5
        (1, 10, 100, 1.0, 1, 4000),      # count 3 -> blocked; sum read includes it: 13
        (1, 10, 100, 2.0, 1, 5000),      # count 4 blocked; the blocked 1.0 was not added: 14
        (2, 10, 101, 3.0, 0xCB007107, 6000),   # blocked ip: sum 12 + 3 = 15
        (3, 10, 102, 4.0, 1, 7000),      # not blocked: 12 + 4 = 16
    ])
    assert out[:, 0].tolist() == [1, 2, 3, 4, 1, 1]
    assert out[:, 1].tolist() == [5, 12, 13, 14, 15, 16]
    assert out[:, 2].tolist() == [0, 2, 3, 4, 0, 0]
    assert np.isnan(out[0, 3]) and out[1:4, 3].tolist() == [5, 7, 1]
    assert out[:, 4].tolist() == [0, 0, 1, 1, 1, 0]
    fs.set_state("account_state", 3, HALTED)
    assert run(fs, kernel, [(3, 11, 102, 1.0, 1, 8000)])[0, 4] == 1
    fs.set_state("account_state", 3, 0)
    assert run(fs, kernel, [(3, 12, 102, 1.0, 1, 200_000)])[0, 4] == 0   # 3rd txn, but a new minute
    fs.set_halt(True)
    assert run(fs, kernel, [(4, 13, 103, 1.0, 1, 9000)])[0, 4] == 1
    fs.set_halt(False)
    fs.replace_list("blocked_ips", np.array([1], np.uint64))
    assert run(fs, kernel, [(5, 14, 104, 1.0, 1, 9000)])[0, 4] == 1
    assert "txn_count_1m" in fs.memory_report() and fs.counters()["ft_txn_count_1m"]["fill"] == 5
