"""shm.runtime.securedir: what the engine accepts as a run or state directory, and how it writes
and reads the files in them. Cases that need another user run as root only."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from shm.runtime.securedir import (UnsafePathError, check_private_files, ensure_private_dir,
                                   read_private_file, write_private_file)

NOBODY = 65534
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown to another user")


def mode(p) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


def test_missing_components_are_created_0700(tmp_path):
    old = os.umask(0)                          # even with a permissive umask
    try:
        got = ensure_private_dir(tmp_path / "a" / "b" / "c")
    finally:
        os.umask(old)
    assert got == tmp_path / "a" / "b" / "c"
    assert [mode(tmp_path / p) for p in ("a", "a/b", "a/b/c")] == [0o700] * 3
    assert ensure_private_dir(got) == got          # an existing private dir is accepted


@pytest.mark.parametrize("bits", [0o777, 0o775, 0o757, 0o1777])
def test_a_target_others_can_write_is_refused(tmp_path, bits):
    d = tmp_path / "j"
    d.mkdir()
    os.chmod(d, bits)
    with pytest.raises(UnsafePathError, match=f"journal.dir: {d}: owner uid={os.geteuid()}.*mode {bits:04o}"):
        ensure_private_dir(d, "journal.dir")


def test_a_readable_target_is_accepted(tmp_path):
    d = tmp_path / "j"
    d.mkdir(mode=0o755)
    assert ensure_private_dir(d) == d and mode(d) == 0o755


def test_a_symlink_target_is_refused(tmp_path):
    (tmp_path / "real").mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(UnsafePathError, match="is a symlink"):
        ensure_private_dir(tmp_path / "link")


def test_a_parent_others_can_write_is_refused_unless_sticky(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    with pytest.raises(UnsafePathError, match="parent directory .*shared.*without the sticky bit"):
        ensure_private_dir(shared / "mine")
    assert not (shared / "mine").exists()          # refused before anything was created
    os.chmod(shared, 0o1777)                       # like /tmp and /var/tmp
    assert mode(ensure_private_dir(shared / "mine")) == 0o700


def test_a_symlinked_parent_owned_by_us_is_followed(tmp_path):
    (tmp_path / "real").mkdir(mode=0o700)
    (tmp_path / "alias").symlink_to("real")
    got = ensure_private_dir(tmp_path / "alias" / "x")
    assert got == tmp_path / "real" / "x" and mode(got) == 0o700


@root_only
def test_dirs_owned_by_another_user_are_refused(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, NOBODY, NOBODY)
    with pytest.raises(UnsafePathError, match=r"owner uid=65534 \(nobody\)"):
        ensure_private_dir(theirs, "run directory")            # as the target
    with pytest.raises(UnsafePathError, match=r"parent directory .* uid=65534 \(nobody\).*belongs to another user"):
        ensure_private_dir(theirs / "sub", "run directory")    # as a parent
    (tmp_path / "l").symlink_to(tmp_path)
    os.chown(tmp_path / "l", NOBODY, NOBODY, follow_symlinks=False)
    with pytest.raises(UnsafePathError, match="symlink .* not owned by root or the engine"):
        ensure_private_dir(tmp_path / "l" / "x")


def test_written_files_are_0600_and_never_follow_a_symlink(tmp_path):
    old = os.umask(0)
    try:
        write_private_file(tmp_path / "f.json", b"{}")
    finally:
        os.umask(old)
    assert mode(tmp_path / "f.json") == 0o600 and read_private_file(tmp_path / "f.json") == b"{}"
    target = tmp_path / "victim"
    target.write_bytes(b"keep")
    (tmp_path / "evil").symlink_to(target)
    write_private_file(tmp_path / "evil", b"new")        # replaces the link, not its target
    assert target.read_bytes() == b"keep" and not (tmp_path / "evil").is_symlink()
    (tmp_path / "evil2").symlink_to(target)
    with pytest.raises(UnsafePathError, match="symlink"):
        read_private_file(tmp_path / "evil2")


def test_files_others_can_write_are_not_read(tmp_path):
    f = tmp_path / "config.json"
    f.write_bytes(b"{}")
    os.chmod(f, 0o666)
    with pytest.raises(UnsafePathError, match="refusing to read it"):
        read_private_file(f)


def test_check_private_files_narrows_readable_and_refuses_writable(tmp_path):
    (tmp_path / "seg").write_bytes(b"x")
    os.chmod(tmp_path / "seg", 0o644)
    assert check_private_files(tmp_path) == 1 and mode(tmp_path / "seg") == 0o600
    os.chmod(tmp_path / "seg", 0o646)
    with pytest.raises(UnsafePathError, match="seg"):
        check_private_files(tmp_path, "journal.dir")


@root_only
def test_check_private_files_refuses_another_users_file(tmp_path):
    f = tmp_path / "admin.log"
    f.write_bytes(b"x")
    os.chmod(f, 0o600)
    os.chown(f, NOBODY, NOBODY)
    with pytest.raises(UnsafePathError, match=r"admin.log: owner uid=65534"):
        check_private_files(tmp_path, "journal.dir")
