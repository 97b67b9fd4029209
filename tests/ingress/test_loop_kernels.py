"""The compiled loop's own pieces against what they stand in for: the shard choice must be
``shard_of``'s (a different worker would split one account's features), the in-flight
lookups must find exactly the rows in flight, and the argument tables must refuse an array
the kernels would misread. The loop as a whole: tests/engine/test_compiled_loop.py."""
import numpy as np
import pytest

from shm.schema import Schema
from ingress import _fast_kernels as K
from ingress import _loop_kernels as LK
from ingress import _owner_kernels as OK
from ingress.admission import shard_of


@pytest.mark.parametrize("ktype", ["u8", "u16", "u32", "u64", "i8", "i16", "i32", "i64"])
@pytest.mark.parametrize("n_workers", [1, 2, 3, 7, 64])
def test_shard_hash_reduced_is_shard_of(ktype, n_workers):
    """The compiled loop's worker (and, on a cluster node, partition) of a record: its hash
    mod the worker (partition) count."""
    schema = Schema.build({"pad": "u8", "k": ktype, "v": "f64"}, "k")
    rng = np.random.default_rng(5)
    recs = np.zeros(500, schema.dtype)
    info = np.iinfo(recs["k"].dtype)
    recs["k"] = rng.integers(info.min, info.max, 500, endpoint=True, dtype=recs["k"].dtype)
    recs["k"][:4] = [info.min, info.max, 0, -1 if info.min < 0 else 1]
    dt, off = schema.dtype.fields["k"][:2]
    raw = recs.view(np.uint8)
    size = schema.dtype.itemsize
    got = [int(OK.shard_hash(raw, i * size + off, dt.itemsize, dt.kind == "i")) % n_workers
           for i in range(len(recs))]
    assert got == shard_of(recs["k"], n_workers).tolist()


def _table(rows):
    """An in-flight table with ``rows``: row -> (cid, rid, keyed, identity)."""
    ft = np.zeros((8, K.FT_WORDS), np.int64)
    meta = np.zeros(K.META_WORDS, np.int64)
    env_id = np.zeros((8, LK.ID_BYTES), np.uint8)
    env_len = np.zeros(8, np.int64)
    for row, (cid, rid, keyed, ident) in rows.items():
        ft[row, K.SEQ], ft[row, K.CID], ft[row, K.RID], ft[row, K.KEYED] = 1, cid, rid, keyed
        env_id[row, :len(ident)] = np.frombuffer(ident, np.uint8)
        env_len[row] = len(ident)
    meta[K.HIGH] = max(rows) + 1
    return ft, meta, env_id, env_len


def test_key_row_and_peer_count_see_only_rows_in_flight():
    ft, meta, env_id, env_len = _table({0: (7, 1, 1, b"\x00ab"), 2: (7, 2, 1, b"\x00ab"),
                                        3: (7, 3, 0, b"\x00abc"), 5: (-1, -2, 1, b"\x00zz")})
    assert LK.key_row(ft, meta, 7, 2) == 2
    assert LK.key_row(ft, meta, -1, -2) == 5             # u64 keys as int64 bit patterns
    assert LK.key_row(ft, meta, 7, 3) == -1              # in flight, but not keyed
    ft[2, K.SEQ] = 0                                     # answered
    assert LK.key_row(ft, meta, 7, 2) == -1
    ident = np.zeros(LK.ID_BYTES, np.uint8)
    ident[:3] = np.frombuffer(b"\x00ab", np.uint8)
    assert LK.peer_count(ft, meta, env_id, env_len, ident, 3) == 1     # row 0 (row 2 done)
    ident[3] = ord("c")
    assert LK.peer_count(ft, meta, env_id, env_len, ident, 4) == 1     # a prefix is not it


def test_pack_refuses_an_array_the_kernels_would_misread():
    good = {"done": np.zeros(4, np.int64), "fout": np.zeros((4, 8), np.uint8)}
    t = LK.pack(good, ("done", "fout"))
    assert t[0].tolist() == [good["done"].ctypes.data, 4, 0]
    assert t[1].tolist() == [good["fout"].ctypes.data, 4, 8]
    for bad in (np.zeros(4, np.int32), np.zeros((4, 2), np.int64), np.zeros(8, np.int64)[::2]):
        with pytest.raises(RuntimeError, match="array=done"):
            LK.pack({"done": bad}, ("done",))
    ro = np.zeros(4, np.int64)
    ro.flags.writeable = False
    with pytest.raises(RuntimeError, match="array=done"):
        LK.pack({"done": ro}, ("done",))
