"""POSIX shared-memory segments (posix_ipc + mmap), named so that a dead instance can be reclaimed.

Naming: every segment and semaphore of an engine is called
``/risk-engine.<instance>.<owner_pid>.<role>`` (shm.names spells every name).
``reclaim_stale(instance)`` unlinks every segment and semaphore of that instance whose owner
pid is no longer alive, and never one whose owner is alive.

Memory placement: ``ftruncate`` gives sparse pages; a page is allocated on the NUMA node of
the CPU that first touches it. Call ``Segment.prefault()`` from the process that will use the
memory (after it is pinned) so the pages are node-local. ``create(..., reserve=True)``
allocates every page at creation instead (in the creating process's node): for memory that
must never fault for want of space later.
"""
from __future__ import annotations

import mmap
import os

import numpy as np
import posix_ipc

from shm.names import PREFIX, NameParts, SegmentError, parse_name, segment_name

SHM_DIR = "/dev/shm"
_MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)   # Linux >= 5.14
_PAGE_BYTES = mmap.PAGESIZE


class Segment:
    """One mapped POSIX shared-memory segment. Create with ``create`` or ``attach``.

    ``buf`` is the mmap; ``array(dtype, offset_bytes, count)`` gives numpy views over it.
    ``close()`` unmaps (this process only); ``unlink()`` removes the name (all processes keep
    their mappings until they close).
    """

    def __init__(self, name: str, mm: mmap.mmap, size: int, created: bool):
        self.name = name
        self.buf = mm
        self.size = size
        self.created = created

    @classmethod
    def create(cls, instance: str, name: str, size_bytes: int, owner_pid: int | None = None,
               reserve: bool = False) -> "Segment":
        """Create a new zero-filled segment; fails if the name exists (stale? see reclaim_stale).

        ``reserve``: allocate every page now (posix_fallocate). Without it the segment is
        sparse, and a page that tmpfs cannot back when it is first written raises SIGBUS in
        whichever process writes it; with it a segment that does not fit fails here, with
        a SegmentError, and no later write can fault for want of memory."""
        full = segment_name(instance, name, owner_pid)
        if size_bytes <= 0:
            raise SegmentError(f"size_bytes={size_bytes}: must be positive")
        try:
            shm = posix_ipc.SharedMemory(full, posix_ipc.O_CREX, mode=0o600, size=size_bytes)
        except posix_ipc.ExistentialError:
            raise SegmentError(f"name={full!r}: segment already exists") from None
        try:
            if reserve:
                try:
                    os.posix_fallocate(shm.fd, 0, size_bytes)
                except OSError as e:
                    raise SegmentError(f"name={full!r} size={size_bytes}: cannot reserve "
                                       f"{size_bytes / 2**20:.1f} MiB of shared memory "
                                       f"({e.strerror})") from None
            mm = mmap.mmap(shm.fd, size_bytes)
        except BaseException:
            posix_ipc.unlink_shared_memory(full)
            raise
        finally:
            shm.close_fd()
        return cls(full, mm, size_bytes, True)

    @classmethod
    def attach(cls, full_name: str) -> "Segment":
        """Map an existing segment by its full name; raises SegmentError if it does not exist."""
        if parse_name(full_name) is None:
            raise SegmentError(f"name={full_name!r}: not a {PREFIX} segment name "
                               f"(/{PREFIX}.<instance>.<pid>.<name>)")
        full = full_name if full_name.startswith("/") else "/" + full_name
        try:
            shm = posix_ipc.SharedMemory(full)
        except posix_ipc.ExistentialError:
            raise SegmentError(f"name={full!r}: no such segment") from None
        try:
            if shm.size <= 0:
                raise SegmentError(f"name={full!r} size={shm.size}: empty segment")
            mm = mmap.mmap(shm.fd, shm.size)
        finally:
            shm.close_fd()
        return cls(full, mm, len(mm), False)

    def array(self, dtype, offset_bytes: int = 0, count: int | None = None) -> np.ndarray:
        """A numpy view of ``count`` items of ``dtype`` starting at ``offset_bytes``."""
        dt = np.dtype(dtype)
        if count is None:
            count = (self.size - offset_bytes) // dt.itemsize
        if offset_bytes < 0 or offset_bytes + count * dt.itemsize > self.size:
            raise SegmentError(f"name={self.name!r} offset_bytes={offset_bytes} count={count} "
                               f"itemsize={dt.itemsize}: beyond segment size {self.size}")
        # frombuffer holds a buffer export, so close() refuses (instead of leaving a view
        # over unmapped memory, which would crash on access) while this view lives.
        return np.frombuffer(self.buf, dt, count, offset_bytes)

    def prefault(self, offset_bytes: int = 0, size_bytes: int | None = None) -> None:
        """Allocate the pages of a range now, in this process (first touch decides the NUMA node).

        Uses madvise(MADV_POPULATE_WRITE), which allocates writable pages without changing
        their contents; on kernels without it, reads one byte per page (a shmem read fault
        allocates the page too). Either way safe at any time, on live data too (a restarted
        worker maps rings and feature tables that hold requests and state).
        """
        end = self.size if size_bytes is None else offset_bytes + size_bytes
        start = offset_bytes - offset_bytes % _PAGE_BYTES
        try:
            self.buf.madvise(_MADV_POPULATE_WRITE, start, end - start)
        except (OSError, ValueError):
            view = self.array(np.uint8, offset_bytes, end - offset_bytes)
            int(view[::_PAGE_BYTES].sum())
            del view

    def close(self) -> bool:
        """Unmap. Returns False while numpy views over the buffer are still alive: the mapping
        then stays valid and is unmapped when the last view and this object are collected."""
        if self.buf is None:
            return True
        try:
            self.buf.close()
        except BufferError:
            return False
        self.buf = None
        return True

    def unlink(self) -> None:
        """Remove the name from /dev/shm (idempotent). Mappings stay valid until closed."""
        unlink_segment(self.name)


def memory_room() -> tuple[int, int]:
    """(bytes free in /dev/shm, MemAvailable bytes); -1 for what cannot be read."""
    try:
        st = os.statvfs(SHM_DIR)
        shm_free = st.f_bavail * st.f_frsize
    except OSError:
        shm_free = -1
    avail = -1
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    return shm_free, avail


def check_room(shared: dict, private: dict) -> None:
    """Refuse (SegmentError) to start something whose fixed allocations, ``shared`` bytes in
    /dev/shm and ``private`` bytes of process memory (each a dict: what -> bytes), this
    machine does not have now: refused here it is an error message at start; found out later
    it is SIGBUS in a worker or the OOM killer."""
    shm_free, avail = memory_room()
    mib = 2 ** 20
    need_shm, need_priv = sum(shared.values()), sum(private.values())

    def parts(d: dict) -> str:
        return ", ".join(f"{k} {v / mib:.0f} MiB" for k, v in sorted(d.items(), key=lambda kv: -kv[1]) if v)
    if shm_free >= 0 and need_shm > shm_free:
        raise SegmentError(f"need {need_shm / mib:.0f} MiB of shared memory ({parts(shared)}), "
                           f"{SHM_DIR} has {shm_free / mib:.0f} MiB free")
    if avail >= 0 and need_shm + need_priv > avail:
        raise SegmentError(f"need {need_shm / mib:.0f} MiB of shared memory ({parts(shared)}) and "
                           f"{need_priv / mib:.0f} MiB of process memory ({parts(private)}), the "
                           f"machine has {avail / mib:.0f} MiB available (MemAvailable)")


def unlink_segment(full_name: str) -> bool:
    """Unlink a segment by full name; False if it was already gone."""
    try:
        posix_ipc.unlink_shared_memory(full_name if full_name.startswith("/") else "/" + full_name)
        return True
    except posix_ipc.ExistentialError:
        return False


def unlink_semaphore(full_name: str) -> bool:
    """Unlink a named semaphore by full name; False if it was already gone."""
    try:
        posix_ipc.unlink_semaphore(full_name if full_name.startswith("/") else "/" + full_name)
        return True
    except posix_ipc.ExistentialError:
        return False


def pid_alive(pid: int) -> bool:
    """True if a process with this pid exists (signal 0 succeeds or is not permitted)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def list_names(instance: str | None = None) -> list[tuple[str, str, NameParts]]:
    """(kind, full_name, parts) for every segment ('shm') and semaphore ('sem') of ours in /dev/shm."""
    out = []
    try:
        entries = sorted(os.listdir(SHM_DIR))
    except FileNotFoundError:
        return out
    for entry in entries:
        kind, base = ("sem", entry[4:]) if entry.startswith("sem.") else ("shm", entry)
        parts = parse_name(base)
        if parts is None or (instance is not None and parts.instance != instance):
            continue
        out.append((kind, "/" + base, parts))
    return out


def _unlink_where(instance: str, owned_by) -> list[str]:
    """Unlink every segment and semaphore of ``instance`` whose owner pid passes ``owned_by``."""
    removed = []
    for kind, full, parts in list_names(instance):
        if not owned_by(parts.owner_pid):
            continue
        if kind == "shm" and unlink_segment(full):
            removed.append(full)
        elif kind == "sem" and unlink_semaphore(full):
            removed.append("sem:" + full)
    return removed


def reclaim_stale(instance: str) -> list[str]:
    """Unlink every segment and semaphore of ``instance`` whose owner pid is dead.

    Returns the full names removed (semaphores as ``sem:/risk-engine...``). Entries of a live
    owner are never touched (a reused pid keeps its entries: safe, they are reclaimed later).
    """
    segment_name(instance, "x", 1)   # validates instance
    return _unlink_where(instance, lambda pid: not pid_alive(pid))


def unlink_owned(instance: str, owner_pid: int | None = None) -> list[str]:
    """Unlink every segment and semaphore of ``instance`` owned by ``owner_pid`` (default: this
    process). For a clean shutdown, after the rings were unlinked one by one: catches leftovers."""
    pid = os.getpid() if owner_pid is None else owner_pid
    return _unlink_where(instance, lambda p: p == pid)
