"""Snapshots: round trip of named arrays and metadata, atomic write, corruption refused with a
clear error, keep-last-K, fallback to an older good snapshot."""
import json
import os

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from engine.snapshot import (HEAD_SIZE, SnapshotCorruptError, SnapshotStore, load_snapshot,
                             load_snapshot_bytes, load_snapshot_meta, snapshot_bytes, write_snapshot)

TABLE = np.dtype([("key", np.uint64), ("count", np.uint32), ("hll", np.uint8, (16,))], align=True)


def arrays(seed=0):
    rng = np.random.default_rng(seed)
    t = np.zeros(100, TABLE)
    t["key"] = rng.integers(0, 1 << 63, 100, dtype=np.uint64)
    t["count"] = rng.integers(0, 1000, 100)
    t["hll"] = rng.integers(0, 255, (100, 16))
    return {"table": t, "counts": rng.integers(0, 50, (7, 9)).astype(np.int64),
            "blocked_ips": np.sort(rng.integers(0, 1 << 32, 33, dtype=np.uint64)).astype(np.uint32),
            "empty": np.zeros(0, np.float64), "flag": np.array(True)}


def same_bytes(a, b):
    return a.dtype.itemsize == b.dtype.itemsize and a.shape == b.shape and \
        a.reshape(-1).view(np.uint8).tobytes() == b.reshape(-1).view(np.uint8).tobytes()


def test_round_trip_arrays_and_metadata(tmp_path):
    a = arrays()
    p = str(tmp_path / "s.rsnap")
    size = write_snapshot(p, a, {0: 1234, 3: 7}, generation=5, meta={"why": "test"}, created_ns=99)
    assert size == os.path.getsize(p) and not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    s = load_snapshot(p)
    assert s.journal_seq == {0: 1234, 3: 7} and s.generation == 5 and s.created_ns == 99
    assert s.meta == {"why": "test"} and set(s.arrays) == set(a)
    for k in a:
        assert same_bytes(s.arrays[k], a[k]), k
    assert s.arrays["table"].dtype.fields["hll"][1] == TABLE.fields["hll"][1]
    assert (s.arrays["table"]["count"] == a["table"]["count"]).all()
    assert load_snapshot_meta(p) == {0: 1234, 3: 7}


def test_a_snapshot_in_memory_is_the_file_format(tmp_path):
    """snapshot_bytes (a partition snapshot object's payload) equals the file write_snapshot
    makes, padding included: an empty or 0-d array last ends the file past its last byte
    written (a BytesIO's truncate does not extend it: 463 bytes where 512 were recorded)."""
    for last in ("empty", "flag"):
        a = arrays()
        a = {**{k: v for k, v in a.items() if k != last}, last: a[last]}
        p = str(tmp_path / f"{last}.rsnap")
        write_snapshot(p, a, {}, meta={"partition": 3}, created_ns=7)
        data = snapshot_bytes(a, meta={"partition": 3})
        assert len(data) == os.path.getsize(p)
        s = load_snapshot_bytes(data, "object p.3")
        assert s.meta == {"partition": 3} and s.path == "object p.3" and set(s.arrays) == set(a)
        for k in a:
            assert same_bytes(s.arrays[k], a[k]), k
        with pytest.raises(SnapshotCorruptError, match="snapshot object p.3: file size"):
            load_snapshot_bytes(data[:-1], "object p.3")


def array_offset(path, name):
    raw = open(path, "rb").read()
    toc_len = int.from_bytes(raw[12:16], "little")            # head: magic, version, toc_len
    toc = json.loads(raw[HEAD_SIZE:HEAD_SIZE + toc_len])
    return next(e["offset"] for e in toc["arrays"] if e["name"] == name)


def corrupt_at(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x40]))


@pytest.mark.parametrize("where,match", [
    ("magic", "bad magic"), ("head", "head checksum"), ("toc", "table of contents checksum"),
    ("array", "array 'counts': checksum mismatch"), ("truncate", "file size"),
    ("extend", "file size"), ("empty", "smaller than")])
def test_corruption_refused_with_clear_error(tmp_path, where, match):
    p = str(tmp_path / "s.rsnap")
    write_snapshot(p, arrays(), {0: 1})
    if where == "magic":
        corrupt_at(p, 0)
    elif where == "head":
        corrupt_at(p, 20)
    elif where == "toc":
        corrupt_at(p, HEAD_SIZE + 5)
    elif where == "array":
        corrupt_at(p, array_offset(p, "counts") + 3)
    elif where == "truncate":
        os.truncate(p, os.path.getsize(p) - 1)
    elif where == "extend":
        with open(p, "ab") as f:
            f.write(b"\0")
    else:
        os.truncate(p, 0)
    with pytest.raises(SnapshotCorruptError, match=match) as e:
        load_snapshot(p)
    assert p in str(e.value) and "refused" in str(e.value)


def test_store_keeps_last_k_and_falls_back_past_corrupt(tmp_path):
    st = SnapshotStore(str(tmp_path), keep=3)
    paths = [st.write(arrays(i), {0: 10 * i}, generation=i) for i in range(5)]
    assert st.paths() == paths[:1:-1]                       # newest first, 3 kept
    s, errs = st.load_latest()
    assert s.path == paths[4] and s.journal_seq == {0: 40} and errs == []
    assert st.oldest_journal_seq(0) == 20
    corrupt_at(paths[4], array_offset(paths[4], "table") + 100)
    corrupt_at(paths[3], 0)
    s, errs = st.load_latest()
    assert s.path == paths[2] and s.generation == 2 and len(errs) == 2
    assert paths[4] in errs[0] and "checksum" in errs[0] and "bad magic" in errs[1]
    for k, v in arrays(2).items():
        assert same_bytes(s.arrays[k], v)


def test_store_removes_stale_temp_files_and_ignores_them(tmp_path):
    st = SnapshotStore(str(tmp_path), keep=2)
    stale = tmp_path / ".snap-00000000000000000001.rsnap.4242.tmp"
    stale.write_bytes(b"half written")                      # a crash mid-write leaves this
    s, errs = st.load_latest()
    assert s is None and errs == []
    st.write(arrays(), {0: 5})
    assert not stale.exists() and len(st.paths()) == 1


def test_object_arrays_rejected(tmp_path):
    with pytest.raises(TypeError, match="object dtype"):
        write_snapshot(str(tmp_path / "x.rsnap"), {"o": np.array([object()])}, {0: 0})


DTYPES = [np.dtype(t) for t in ("u1", "i2", "<u4", "i8", "f4", "f8", "?", "S5", "V3")] + [
    TABLE, np.dtype([("a", "u1"), ("b", "f8", (2,)), ("c", "S3")], align=True),
    np.dtype({"names": ["x", "y"], "formats": ["u8", "u2"], "offsets": [0, 12], "itemsize": 24})]


@settings(max_examples=25, deadline=None)
@given(specs=st.lists(st.tuples(st.sampled_from(range(len(DTYPES))),
                                st.lists(st.integers(0, 5), min_size=0, max_size=3)),
                      min_size=0, max_size=5),
       seed=st.integers(0, 2 ** 32 - 1))
def test_round_trip_property_any_dtype_and_shape(tmp_path_factory, specs, seed):
    rng = np.random.default_rng(seed)
    arrs = {}
    for i, (k, shape) in enumerate(specs):
        dt = DTYPES[k]
        n = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        arrs[f"a{i}"] = np.frombuffer(rng.bytes(n), np.uint8).view(dt).reshape(shape) if n \
            else np.zeros(shape, dt)
    p = str(tmp_path_factory.mktemp("s") / "x.rsnap")
    write_snapshot(p, arrs, {int(seed % 7): seed})
    s = load_snapshot(p)
    assert s.journal_seq == {int(seed % 7): seed} and set(s.arrays) == set(arrs)
    for k, a in arrs.items():
        assert same_bytes(s.arrays[k], a) and s.arrays[k].dtype.fields == a.dtype.fields


def test_the_snapshot_hold_runs_realtime_when_allowed_and_restores_the_policy():
    """engine.snapshot_coordinator._realtime: SCHED_FIFO inside when the process may (root or
    CAP_SYS_NICE), unchanged otherwise; the old policy is back afterwards, also on error."""
    import os

    import pytest

    from engine.snapshot_coordinator import _realtime
    before = os.sched_getscheduler(0), os.sched_getparam(0).sched_priority
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
        allowed = True
    except OSError:
        allowed = False
    os.sched_setscheduler(0, before[0], os.sched_param(before[1]))
    with pytest.raises(RuntimeError):
        with _realtime():
            assert os.sched_getscheduler(0) == (os.SCHED_FIFO if allowed else before[0])
            raise RuntimeError("the copy failed")
    assert (os.sched_getscheduler(0), os.sched_getparam(0).sched_priority) == before
