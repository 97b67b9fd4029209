"""engine.admin_log: numbered, checksummed admin records; damage anywhere but a torn tail is
refused with file, line, offset and seq."""
from __future__ import annotations

import json
import os
import stat

import pytest

from engine.admin_log import AdminLog, AdminLogCorrupt, read

ENTRIES = [{"cmd": "list-add", "name": "blocked_ips", "values": [167837953]},
           {"cmd": "set-state", "name": "account_state", "key": 42, "state": "HALTED"},
           {"cmd": "halt"}]


def written(tmp_path) -> str:
    path = str(tmp_path / "admin.log")
    log = AdminLog(path)
    for i, e in enumerate(ENTRIES):
        assert log.append(1000 + i, e) == i + 1
    return path


def test_round_trip_and_mode(tmp_path):
    path = written(tmp_path)
    records, torn, end = read(path)
    assert torn is None and end == os.path.getsize(path)
    assert [r["seq"] for r in records] == [1, 2, 3] and [r["time_ns"] for r in records] == [1000, 1001, 1002]
    assert [{k: v for k, v in r.items() if k not in ("seq", "time_ns")} for r in records] == ENTRIES
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert AdminLog(path).next_seq == 4            # a reopened log continues the sequence


def lines(path) -> list[bytes]:
    return open(path, "rb").read().split(b"\n")[:-1]


def rewrite(path, ls) -> None:
    open(path, "wb").write(b"".join(l + b"\n" for l in ls))


def test_a_flipped_bit_in_the_middle_is_refused(tmp_path):
    path = written(tmp_path)
    data = bytearray(open(path, "rb").read())
    off = data.index(b"42")
    data[off] ^= 0x01                              # key 42 -> 52: still valid JSON
    open(path, "wb").write(bytes(data))
    with pytest.raises(AdminLogCorrupt, match=rf"{path}: line 2 offset=\d+: checksum mismatch \(expected seq=2\)"):
        read(path)
    with pytest.raises(AdminLogCorrupt):
        AdminLog(path)                             # nor is anything appended after it


@pytest.mark.parametrize("change", ["removed", "repeated", "swapped"])
def test_a_removed_repeated_or_moved_record_is_refused(tmp_path, change):
    path = written(tmp_path)
    a, b, c = lines(path)
    rewrite(path, {"removed": [a, c], "repeated": [a, b, b, c], "swapped": [a, c, b]}[change])
    with pytest.raises(AdminLogCorrupt, match=r"seq=\d, expected seq=\d .*removed, inserted or moved"):
        read(path)


def test_a_planted_line_without_checksum_is_refused(tmp_path):
    path = written(tmp_path)
    with open(path, "ab") as f:
        f.write(b'{"cmd":"list-replace","name":"blocked_ips","values":[]}\n')
    with pytest.raises(AdminLogCorrupt, match=r"line 4 .*no checksum \(expected seq=4\)"):
        read(path)


def test_a_torn_tail_is_reported_and_cut_before_the_next_append(tmp_path):
    path = written(tmp_path)
    size = os.path.getsize(path)
    with open(path, "ab") as f:
        f.write(json.dumps({"cmd": "resume", "seq": 4}).encode()[:11])
    records, torn, end = read(path)
    assert len(records) == 3 and end == size and (torn.offset, torn.nbytes) == (size, 11)
    log = AdminLog(path)
    assert log.torn == torn and os.path.getsize(path) == size
    assert log.append(2000, {"cmd": "resume"}) == 4
    records, torn, _ = read(path)
    assert torn is None and [r["cmd"] for r in records] == ["list-add", "set-state", "halt", "resume"]
