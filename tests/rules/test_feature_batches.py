"""The batched feature path (the kernel's prefetch of a block's table slots before it works
on them) against a brute-force recount and against the same kernel fed one event per call:
Zipf-distributed keys, so many events of one batch share a key and every event must see
the updates of all earlier ones, across the 64-event prefetch blocks too."""
from __future__ import annotations

import numpy as np
import pytest

from bench.events import draw_keys
from rules import compile_ruleset
from rules.features import PREFETCH_EVENTS
from shm.features.featureset import FeatureSet
from shm.features.spec import parse_specs
from shm.runtime.config import load_config

SCHEMA = load_config().schema
N = 5 * PREFETCH_EVENTS + 17            # several prefetch blocks and a partial one
FEATURES = {
    "cnt": {"kind": "count", "key": "account_id", "window": "60s", "capacity": 256},
    "spend": {"kind": "sum", "of": "amount", "key": "card_id", "window": "1h", "capacity": 256,
              "update": "unless_blocked"},
    "biggest": {"kind": "max", "of": "amount", "key": "device_id", "window": "10m", "capacity": 256},
    "seen": {"kind": "age", "key": "account_id", "capacity": 256},
}
CNT_BITS, SPEND_BITS = 8, 11
# each read value is spelled out in binary by the fired bits, so the decisions carry it exactly
RULES = "ruleset: b\nversion: 1\nrules:\n  - {id: blk, when: \"amount == 7\", action: block}\n" + "".join(
    f"  - {{id: c{b}, when: \"cnt // {2 ** b} % 2 == 1\", action: allow}}\n" for b in range(CNT_BITS)) + "".join(
    f"  - {{id: s{b}, when: \"spend // {2 ** b} % 2 == 1\", action: allow}}\n" for b in range(SPEND_BITS))


@pytest.fixture(scope="module")
def ruleset(tmp_path_factory, kernel_cache):
    p = tmp_path_factory.mktemp("batches") / "b.yaml"
    p.write_text(RULES)
    return compile_ruleset([str(p)], SCHEMA, cache_dir=kernel_cache,
                           features=FeatureSet(parse_specs(FEATURES, {}, {}, SCHEMA), SCHEMA))


def _events(seed: int):
    rng = np.random.default_rng(seed)
    ev = np.zeros(N, SCHEMA.dtype)
    ev["account_id"] = draw_keys(rng, N, 40, zipf_s=1.1)     # the hottest about a fifth of them
    ev["card_id"] = draw_keys(rng, N, 40, zipf_s=1.1, salt=1)
    ev["device_id"] = draw_keys(rng, N, 40, zipf_s=1.1, salt=2)
    ev["amount"] = rng.integers(0, 10, N).astype(np.float64)
    arrival = 1_764_300_000_000_000_000 + np.arange(N, dtype=np.int64) * 1_000_000   # 1 ms apart
    return ev, arrival


def _run(rs, ev, arrival, per_call: int):
    fs = FeatureSet(rs.features.specs, SCHEMA)
    out, bits, hits, errors = rs.new_buffers(N)
    for lo in range(0, N, per_call):
        hi = min(N, lo + per_call)
        rs.kernel(ev[lo:hi], arrival[lo:hi], out[lo:hi], bits[lo:hi], hits, errors, *fs.arrays())
    return out, bits, fs


@pytest.mark.parametrize("seed", [1, 2])
def test_a_batch_of_shared_keys_reads_the_brute_force_recount(ruleset, seed):
    ev, arrival = _events(seed)
    assert np.bincount(ev["account_id"].astype(np.int64)).max() > 2 * PREFETCH_EVENTS // 5
    out, bits, _ = _run(ruleset, ev, arrival, N)
    word = bits[:, 0].astype(np.uint64)
    got_cnt = sum(((word >> np.uint64(1 + b)) & np.uint64(1)).astype(np.int64) << b for b in range(CNT_BITS))
    got_spend = sum(((word >> np.uint64(1 + CNT_BITS + b)) & np.uint64(1)).astype(np.int64) << b
                    for b in range(SPEND_BITS))
    blocked = ev["amount"] == 7
    assert (out["action"] == np.where(blocked, 2, 0)).all()
    for i in range(N):
        same_acct = ev["account_id"][:i + 1] == ev["account_id"][i]
        same_card = ev["card_id"][:i] == ev["card_id"][i]
        want_spend = ev["amount"][:i][same_card & ~blocked[:i]].sum() + ev["amount"][i]
        assert (got_cnt[i], got_spend[i]) == (same_acct.sum(), want_spend), i


def test_one_call_per_batch_leaves_the_tables_of_one_call_per_event(ruleset):
    """Bit for bit: the tables (every feature, read or not) and the decisions after one
    kernel call over the batch equal those after N calls of one event (no other event in
    its prefetch block) and the update-only entry's replay."""
    ev, arrival = _events(3)
    out_b, bits_b, fs_b = _run(ruleset, ev, arrival, N)
    out_1, bits_1, fs_1 = _run(ruleset, ev, arrival, 1)
    assert (out_b == out_1).all() and (bits_b == bits_1).all()
    replay = FeatureSet(ruleset.features.specs, SCHEMA)
    ruleset.apply_updates(ev, arrival, out_b["action"].copy(), *replay.arrays())
    for name, a, b, c in zip(fs_b.arg_names(), fs_b.arrays(), fs_1.arrays(), replay.arrays()):
        assert (a == b).all() and (a == c).all(), name
    assert all(fs_b.counters()[f"ft_{n}"]["fill"] > 10 for n in FEATURES)


def _shm_imports(path, root):
    """Files of ``shm`` that ``path`` imports (from shm.x import ...), transitively, that
    hold compiled code or a layout kernels compile in (shm.jitcache's markers)."""
    from shm.jitcache import _MARKERS
    import ast
    seen, todo = set(), [path]
    while todo:
        tree = ast.parse(todo.pop().read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("shm."):
                f = root.joinpath(*node.module.split(".")).with_suffix(".py")
                if f.exists() and f not in seen:
                    seen.add(f)
                    todo.append(f)
    return {f for f in seen if any(m in f.read_bytes() for m in _MARKERS)}


def test_the_kernel_cache_key_hashes_every_source_the_feature_code_compiles_from(tmp_path):
    """Numba's cache does not see a change in a called module, so the generated kernel's
    text carries a digest of every shm source its feature code compiles from (the prefetch
    intrinsic in shm/atomics.py and the table layout in shm/descriptor.py included): a
    change in any of them gives the kernel a new name."""
    import hashlib
    from pathlib import Path
    import rules.features as rf
    from shm.features.featureset import IMPORTS
    root = Path(rf.__file__).resolve().parents[1]
    gen = tmp_path / "gen.py"
    gen.write_text("\n".join(IMPORTS))
    needed = _shm_imports(gen, root)
    assert root / "shm" / "features" / "table.py" in needed and root / "shm" / "atomics.py" in needed
    hashed = [f.resolve() for f in rf.feature_sources()]
    assert needed <= set(hashed), sorted(str(f.relative_to(root)) for f in needed - set(hashed))
    fs = FeatureSet(parse_specs(FEATURES, {}, {}, SCHEMA), SCHEMA)
    h = hashlib.blake2b(repr(fs.specs).encode(), digest_size=8)
    for f in hashed:
        h.update(f.read_bytes())
    assert rf.specs_digest(fs) == h.hexdigest()
