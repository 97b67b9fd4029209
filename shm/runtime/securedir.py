"""Private directories and files for the engine's run and state data.

Every directory the engine keeps files in (the run directory, the journal, the snapshots) is
reached through ``ensure_private_dir``: missing components are created 0700, an existing
target must be a real directory (not a symlink) owned by the engine's uid that no other user
can write, and every existing ancestor must be owned by root or the engine's uid and be
writable by no one else unless it has the sticky bit (/tmp, /var/tmp): otherwise another
local user could swap the directory, plant files in it, or read what it holds. Files are
created 0600 with O_NOFOLLOW (``open_private``, ``write_private_file``).

An unsafe path raises ``UnsafePathError`` (a PermissionError) naming the path, its owner
and its mode; the supervisor turns it into a StartupError.
"""
from __future__ import annotations

import errno
import os
import pwd
import stat
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600
_MAX_SYMLINKS = 40


class UnsafePathError(PermissionError):
    """A directory or file another user could write (or a symlink where none may be)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _owner(uid: int) -> str:
    try:
        return f"uid={uid} ({pwd.getpwuid(uid).pw_name})"
    except (KeyError, ImportError):
        return f"uid={uid}"


def _describe(path: str, st: os.stat_result) -> str:
    return f"{path}: owner {_owner(st.st_uid)}, mode {stat.S_IMODE(st.st_mode):04o}"


def _check_ancestor(path: str, st: os.stat_result, what: str) -> None:
    """An existing directory above the target: only root or we may change its entries."""
    me = os.geteuid()
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid not in (0, me):
        raise UnsafePathError(f"{what}: parent directory {_describe(path, st)} belongs to another "
                              f"user, who could replace what the engine (uid={me}) keeps under it")
    if mode & 0o022 and not mode & stat.S_ISVTX:
        raise UnsafePathError(f"{what}: parent directory {_describe(path, st)} is writable by "
                              f"group/others without the sticky bit: another user could replace "
                              f"what the engine keeps under it")


def _check_own_dir(path: str, st: os.stat_result, what: str) -> None:
    """The target directory (or one the engine created): ours and writable by no one else."""
    me = os.geteuid()
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePathError(f"{what}: {path} is a symlink; configure the real directory")
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePathError(f"{what}: {path} exists and is not a directory")
    if st.st_uid != me:
        raise UnsafePathError(f"{what}: {_describe(path, st)}: the engine (uid={me}) needs a "
                              f"directory it owns; remove it or chown it to uid={me}")
    if stat.S_IMODE(st.st_mode) & 0o022:
        raise UnsafePathError(f"{what}: {_describe(path, st)} is writable by group/others: "
                              f"another user could plant or swap files in it; "
                              f"chmod 0700 it after checking its content")


def ensure_private_dir(path, what: str = "directory") -> Path:
    """Create ``path`` (and missing parents) 0700 or check the existing one; returns it as an
    absolute Path. ``what`` names the directory in errors (e.g. "journal.dir").
    Raises UnsafePathError."""
    target = os.path.abspath(os.fspath(path))
    todo = [c for c in target.split("/") if c]
    cur, hops = "/", 0
    while todo:
        name = todo.pop(0)
        if name in (".", ".."):              # only from a symlink's target
            cur = os.path.dirname(cur) if name == ".." else cur
            continue
        nxt = os.path.join(cur, name)
        try:
            st = os.lstat(nxt)
        except FileNotFoundError:
            _mkdir_private(nxt, what)
            for rest in todo:                # everything below is created by us too
                if rest in (".", ".."):
                    raise UnsafePathError(f"{what}: {target}: a symlink's target leads to "
                                          f"a missing directory through {rest!r}")
                nxt = os.path.join(nxt, rest)
                _mkdir_private(nxt, what)
            return Path(nxt)
        last = not todo
        if stat.S_ISLNK(st.st_mode) and not last:
            # a link above the target (/var/run -> /run): follow it only if root or we own
            # it (as fs.protected_symlinks would); its target is checked like any ancestor
            hops += 1
            if hops > _MAX_SYMLINKS or st.st_uid not in (0, os.geteuid()):
                raise UnsafePathError(f"{what}: symlink {_describe(nxt, st)} on the path to "
                                      f"{target} is not owned by root or the engine")
            link = os.readlink(nxt)
            parts = [c for c in link.split("/") if c]
            if link.startswith("/"):
                cur = "/"
            todo = parts + todo
            continue
        if last:
            _check_own_dir(nxt, st, what)
        else:
            if not stat.S_ISDIR(st.st_mode):
                raise UnsafePathError(f"{what}: {nxt} on the path to {target} is not a directory")
            _check_ancestor(nxt, st, what)
        cur = nxt
    return Path(cur)


def _mkdir_private(path: str, what: str) -> None:
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        pass                                # created meanwhile (a racing start): checked below
    except PermissionError as e:
        raise PermissionError(f"{what}: cannot create {path}: {e.strerror}") from None
    st = os.lstat(path)
    _check_own_dir(path, st, what)
    if stat.S_IMODE(st.st_mode) != DIR_MODE:
        os.chmod(path, DIR_MODE, follow_symlinks=False)


def check_private_files(directory, what: str = "directory") -> int:
    """Every entry of ``directory`` (not recursive) must be ours and writable by no one
    else; files readable by others (written by an older version) are narrowed to 0600.
    Returns how many were narrowed. Raises UnsafePathError."""
    me, narrowed = os.geteuid(), 0
    for name in sorted(os.listdir(directory)):
        p = os.path.join(directory, name)
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            continue
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISLNK(st.st_mode) or st.st_uid != me or mode & 0o022:
            kind = "symlink" if stat.S_ISLNK(st.st_mode) else "file"
            raise UnsafePathError(f"{what}: {kind} {_describe(p, st)} was not written by the engine "
                                  f"(uid={me}) or can be changed by another user; check it and "
                                  f"remove it or fix its owner/mode")
        if stat.S_ISREG(st.st_mode) and mode & 0o077:
            os.chmod(p, FILE_MODE, follow_symlinks=False)
            narrowed += 1
    return narrowed


def open_private(path, flags: int = os.O_WRONLY | os.O_CREAT | os.O_TRUNC) -> int:
    """os.open with mode 0600 that never follows a symlink at ``path``."""
    return os.open(os.fspath(path), flags | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)


def write_private_file(path, data: bytes) -> None:
    """Replace ``path`` atomically with ``data``: a fresh 0600 temporary file (O_EXCL,
    O_NOFOLLOW) renamed over it."""
    path = os.fspath(path)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.unlink(tmp)                       # left by a killed process with our pid
    except FileNotFoundError:
        pass
    fd = open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_private_file(path) -> bytes:
    """The bytes of a file the engine wrote. Refused (UnsafePathError) if it is a symlink, if
    it or its directory can be written by group/others, or if its owner is neither the
    reader, root, nor the directory's owner (root reads an engine user's run directory)."""
    path = os.fspath(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UnsafePathError(f"{path} is a symlink; refusing to read it") from None
        raise
    try:
        st = os.fstat(fd)
        dst = os.stat(os.path.dirname(os.path.abspath(path)))
        if st.st_uid not in (0, os.geteuid(), dst.st_uid) or stat.S_IMODE(st.st_mode) & 0o022 \
                or stat.S_IMODE(dst.st_mode) & 0o022:
            raise UnsafePathError(f"{_describe(path, st)} (directory owner {_owner(dst.st_uid)}, "
                                  f"mode {stat.S_IMODE(dst.st_mode):04o}): another user could have "
                                  f"written it; refusing to read it")
        chunks = []
        while True:
            b = os.read(fd, 1 << 20)
            if not b:
                return b"".join(chunks)
            chunks.append(b)
    finally:
        os.close(fd)
