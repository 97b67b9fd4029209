"""When and how a journal writer's appended records reach the disk, and its other disk work
off the append path (JournalWriter's part that the housekeeping thread calls).

fsync policies (docs/DURABILITY.md): ``batch`` syncs in the append (engine.journal);
``interval_ms`` by ``maybe_sync`` on the appender's idle path, or ``sync_appended`` from the
housekeeping thread (engine.journal_housekeeper); ``none`` never. ``publish_pending`` makes a
background rotation's predecessor durable before its successor gets its final name;
``housekeep`` pre-faults pages ahead, zero-fills the next segment, unmaps rotated segments,
applies retention.
"""
from __future__ import annotations

import ctypes
import mmap
import os
import time

from shm.journal_format import HEADER_SIZE, fsync_dir, fsync_path

_MS_SYNC = 4
try:
    # through ctypes, which releases the GIL (mmap.flush holds it): the housekeeping thread's
    # interval sync must not stop the worker's main thread while the disk writes
    _msync = ctypes.CDLL(None, use_errno=True).msync
    _msync.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
except (OSError, AttributeError):
    _msync = None
_MADV_POPULATE_WRITE = 23                     # Linux >= 5.14
try:
    # through ctypes, which releases the GIL: a populate that waits on the file system (ext4's
    # page_mkwrite under a journal commit) must not hold up the worker's main thread
    _madvise = ctypes.CDLL(None, use_errno=True).madvise
    _madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
except (OSError, AttributeError):
    _madvise = None


class WriterSync:
    """JournalWriter's sync policy and housekeeping. Every method here either touches no byte
    the appender writes or holds ``_hk_lock``, which rotation takes: safe from a second thread.
    The state it uses is created in JournalWriter.__init__."""

    def on_idle(self, now_monotonic_ns: int | None = None, budget_bytes: int = 256 << 10,
                prefault_bytes: int = 1 << 20, sync: bool = True) -> bool:
        """Idle-path hook for a writer without a housekeeping thread: ``maybe_sync``, then
        ``housekeep`` (page faults, rotation's file work and unmapping leave the append
        path). Returns True if it did any work. ``sync=False`` when another thread fsyncs."""
        did = self.maybe_sync(now_monotonic_ns) if sync else False
        return self.housekeep(budget_bytes, prefault_bytes) or did

    def housekeep(self, budget_bytes: int = 256 << 10, prefault_bytes: int = 1 << 20) -> bool:
        """The journal's file-system work apart from appending: pre-fault the pages of the
        next ``prefault_bytes`` of the segment; zero-fill up to ``budget_bytes`` of the next
        segment (from the moment this one opens, so that rotation, on the appending thread,
        finds it done); unmap rotated segments; apply retention. Safe to
        call from a second thread while another appends (engine.worker.JournalHousekeeper):
        every step either touches no byte the appender writes (the prefault is
        MADV_POPULATE_WRITE, which changes no content) or holds the lock that rotation
        takes. Returns True if it did any work."""
        did = self._unmap_retired()
        with self._hk_lock:
            retention, self._retention_due = self._retention_due, False
        if retention:
            self._apply_retention()
            did = True
        if prefault_bytes and self._prefault(prefault_bytes):
            did = True
        n = self._next
        if n is None or not n.sealed:
            fd = -1
            with self._hk_lock:
                if self._mm is not None:          # (closed meanwhile: nothing to prepare)
                    n = self._next or self._open_next(self._first + self._cap)
                    if n.durable:
                        self._prepare(budget_bytes, n.first, sync=False)
                    else:                         # the header's fsync first, while no zero
                        fd = os.dup(n.fd)         # page is dirty (rotation may close n.fd)
            if fd >= 0:
                try:                              # outside the lock that rotation takes: an
                    os.fsync(fd)                  # fsync waited seconds under disk pressure,
                finally:                          # and so did the worker, for the lock
                    os.close(fd)
                n.durable = True                  # (publish_pending reads it if rotated since)
            did = True
        return did

    def sync_appended(self) -> bool:
        """From the housekeeping thread (fsync=interval_ms): make the records appended to the
        current segment since its last call durable, with an msync(MS_SYNC) of their byte
        range. Not fsync: the zero-filled pages past the records are dirty, and an fsync
        would write them now and again once records fill them. The map stays valid during
        the call: a rotation retires it and only this thread unmaps retired maps. The
        predecessor's last records are synced at publication (publish_pending). True if it
        synced."""
        with self._hk_lock:
            mm, addr, pos = self._mm, self._raw_addr, self._pos
            if mm is None:
                return False
            if self._appended_map is not mm:      # a new segment: from its first record
                self._appended_map, self._appended_synced = mm, 0
            done = self._appended_synced
        if pos <= done:
            return False
        page = mmap.PAGESIZE                  # from 0 the first time: the header's page too,
        lo = (HEADER_SIZE + done * self._rs) // page * page if done else 0   # if not durable
        hi = HEADER_SIZE + pos * self._rs
        if _msync is None:
            mm.flush(lo, hi - lo)
        elif _msync(addr + lo, hi - lo, _MS_SYNC) != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"journal {self._path}: msync: {os.strerror(e)}")
        with self._hk_lock:
            if self._appended_map is mm:
                self._appended_synced = max(self._appended_synced, pos)
        return True

    def maybe_sync(self, now_monotonic_ns: int | None = None) -> bool:
        """Idle-path hook for fsync=interval_ms: msync if dirty and the interval passed."""
        if self._dirty_hi <= self._dirty_lo or self.config.fsync != "interval_ms":
            return False
        t = time.monotonic_ns() if now_monotonic_ns is None else now_monotonic_ns
        if t - self._last_sync_ns < self._interval_ns:
            return False
        self.sync(t)
        return True

    def sync(self, now_monotonic_ns: int | None = None) -> None:
        """msync the records written since the last sync (any policy); call before a snapshot."""
        if self._dirty_hi > self._dirty_lo:
            lo = (HEADER_SIZE + self._dirty_lo * self._rs) // mmap.PAGESIZE * mmap.PAGESIZE
            hi = HEADER_SIZE + self._dirty_hi * self._rs
            self._mm.flush(lo, hi - lo)
            self.syncs += 1
        self._dirty_lo = self._dirty_hi = self._pos
        self._last_sync_ns = time.monotonic_ns() if now_monotonic_ns is None else now_monotonic_ns

    def publish_pending(self) -> bool:
        """Publish the segment a background rotation switched to: make its predecessor and its
        own header durable (fsync, unless fsync=none), rename the ``.tmp`` to its final name,
        fsync the directory.
        A segment is thus never published before its predecessor is durable, so a hole cannot
        span published segments. Called every round by the housekeeping thread, by the next
        rotation if the thread is behind, and by close. True if it published one."""
        with self._pub_lock:
            with self._hk_lock:
                job = self._unpublished
            if job is None:
                return False
            before, path, nxt = job
            if self.config.fsync != "none":
                fsync_path(before)
                if nxt is None or not nxt.durable:   # its header too: a rotation may have
                    fsync_path(path + ".tmp")        # left that fsync to this thread
            os.rename(path + ".tmp", path)
            if self.config.fsync != "none":
                fsync_dir(self.directory)
            with self._hk_lock:
                self._unpublished = None
                if self._path == path + ".tmp":
                    self._path = path
                # retention keeps the newest published segment while its successor is not
                # (its header names that successor): with this one published, it may go
                self._retention_due = True
            self.publications += 1
            return True


    def _prefault(self, ahead_bytes: int) -> bool:
        """Fault in, writable, each page from the append position to ahead_bytes beyond it.

        The first store to a clean page of a shared file mapping faults, and ext4's fault
        handler (page_mkwrite) updates the file time through its own journal, which waits
        for a running commit under disk load: ms-scale (once 478 ms) stalls inside
        append_batch here. MADV_POPULATE_WRITE takes those faults without changing a byte,
        so it is safe beside the appender; where it is missing, a zero is stored into each
        page past the committed records (only without a housekeeping thread, i.e. when the
        appender itself calls on_idle)."""
        with self._hk_lock:
            mm, raw, addr, pos = self._mm, self._raw, self._raw_addr, self._pos
            done = self._prefaulted
        if mm is None or raw is None:
            return False
        page = mmap.PAGESIZE
        end = HEADER_SIZE + pos * self._rs                # first byte past committed data
        if done - end >= ahead_bytes // 2:                # enough ahead: refill by halves
            return False
        lo = max(done, end)
        hi = min(len(raw), end + ahead_bytes)
        if lo >= hi:
            return False
        start = lo // page * page
        if _madvise is None or _madvise(addr + start, hi - start, _MADV_POPULATE_WRITE) != 0:
            if self.background:                       # called by the housekeeping thread:
                return False                          # stores are only safe from the appender
            raw[lo] = 0                               # never below `end`: committed bytes
            nxt = (lo // page + 1) * page
            if nxt < hi:
                raw[nxt:hi:page] = 0
        with self._hk_lock:
            if self._mm is mm:                        # not rotated away meanwhile
                self._prefaulted = max(self._prefaulted, hi)
        return True

    def _mark_dirty(self, lo: int, hi: int) -> None:
        if self._dirty_hi <= self._dirty_lo:
            self._dirty_lo = lo
        self._dirty_hi = hi

    def _unmap_retired(self) -> bool:
        """munmap the maps of rotated-away segments (taken under the lock, closed outside it);
        True if there were any."""
        with self._hk_lock:
            retired, self._retired = self._retired, []
        for mm in retired:
            mm.close()
        return bool(retired)

