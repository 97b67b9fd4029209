"""A partition snapshot object's payload is built and read in memory (engine.cluster.snapstore):
it went through a temporary directory (``risk-engine-psnap-*``) per object written or read,
which a kill -9 of the node mid-write or mid-take-over left behind in /tmp."""
from __future__ import annotations

import tempfile

import numpy as np
import pytest

from engine.cluster.snapstore import _decode, _encode, object_name
from engine.snapshot import SnapshotCorruptError


def test_a_snapshot_payload_needs_no_temporary_file(tmp_path, monkeypatch):
    # the temporary directory unusable (a regular file: refused even to root): a payload that
    # still needed one fails here; nothing may appear beside it either
    blocker = tmp_path / "tmp-is-a-file"
    blocker.write_bytes(b"")
    monkeypatch.setattr(tempfile, "tempdir", str(blocker))
    monkeypatch.setenv("TMPDIR", str(blocker))
    table = np.zeros(5, [("key", np.uint64), ("count", np.uint32)])
    table["key"], table["count"] = [1, 2, 3, 4, 5], [9, 8, 7, 6, 5]
    arrays = {"f.table": table, "g.sum": np.arange(12, dtype=np.float64).reshape(3, 4)}
    name = object_name(3, 77)
    data = _encode(arrays, {"partition": 3, "covered_seq": 77})
    got, meta = _decode(data, name)
    assert meta == {"partition": 3, "covered_seq": 77} and set(got) == set(arrays)
    for k, a in arrays.items():
        assert got[k].dtype == a.dtype and (got[k] == a).all(), k
    # corruption is still refused, the error naming the object
    bad = bytearray(data)
    bad[-3] ^= 0x40
    with pytest.raises(SnapshotCorruptError, match=f"snapshot object {name}: array 'g.sum': checksum mismatch"):
        _decode(bytes(bad), name)
    with pytest.raises(SnapshotCorruptError, match="file size"):
        _decode(data[:-1], name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tmp-is-a-file"]
