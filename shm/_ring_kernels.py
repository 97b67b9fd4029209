"""Compiled position arithmetic of OneToOneRing: every ordered load and store of the ring.

Each kernel takes the ring header as an int64 array (see shm.layout for the fields) and does
one step of the protocol in one Numba call. ``_try_publish`` copies the payload itself (numpy's
structured-array assignment costs 4-50 us per batch here, a compiled loop 1-2 us). After
``try_claim`` the caller writes slots in place (e.g. a rule kernel, or numpy) and then calls
``_publish``: that write is an opaque call that has returned before the publishing kernel
runs, so no compiler can move it across the release store, and x86-64 (TSO) keeps stores in
order. x86-64 only: on a weaker CPU those caller-side writes would need their own barrier.

Fields that only one side writes ("own" fields: the producer's PRODUCER_POSITION and cached
consumer position, the consumer's CONSUMER_POSITION and cached producer position, counters)
are read by that side with plain loads: a process always sees its own stores.

These kernels can also be called from other @njit code (e.g. a worker loop in Numba).
"""
from __future__ import annotations

from numba import njit

from shm.atomics import compare_and_swap, fence_seq_cst, load_acquire, store_release
from shm.layout import (CAPACITY_WORD, LAYOUT_VERSION_WORD, MAGIC_WORD, SLOT_DTYPE_HASH_WORD,
                        SLOT_SIZE_WORD, CONSUMER_CACHED_PRODUCER_WORD, CONSUMER_POSITION_WORD,
                        CONSUMER_SLEEP_COUNT_WORD, CONSUMER_SLEEPING_WORD,
                        PRODUCER_CACHED_CONSUMER_WORD, PRODUCER_DOORBELL_COUNT_WORD,
                        PRODUCER_FULL_COUNT_WORD, PRODUCER_POSITION_WORD)


@njit(cache=True)
def _claim_position(hdr, n, capacity):
    """Producer: the position at which ``n`` free slots start, or -1 if the ring is full (counted)."""
    pos = hdr[PRODUCER_POSITION_WORD]                 # own field
    cached = hdr[PRODUCER_CACHED_CONSUMER_WORD]       # own field
    if pos + n - cached > capacity:
        # acquire: pairs with the consumer's release store in _release; the consumer's reads
        # of the slots it released happened before we overwrite them. Read only when the
        # cached copy says full, so the consumer's line is not pulled over on every publish.
        cached = load_acquire(hdr, CONSUMER_POSITION_WORD)
        hdr[PRODUCER_CACHED_CONSUMER_WORD] = cached
        if pos + n - cached > capacity:
            hdr[PRODUCER_FULL_COUNT_WORD] += 1
            return -1
    return pos


@njit(cache=True)
def _publish(hdr, new_pos):
    """Producer: make slots up to ``new_pos`` visible; returns 1 if the doorbell must be rung."""
    # release: the slot payload written before this call is visible no later than the new
    # position (pairs with the consumer's acquire load in _readable / _prepare_sleep).
    store_release(hdr, PRODUCER_POSITION_WORD, new_pos)
    # full fence: x86 may let the load below pass the store above (store->load reordering);
    # the fence forbids it. Pairs with the fence in _prepare_sleep (Dekker): either we see
    # the sleeping flag, or the consumer's re-check sees our new position. No lost wake-up.
    fence_seq_cst()
    # acquire: observe the consumer's flag after our position store is globally visible.
    if load_acquire(hdr, CONSUMER_SLEEPING_WORD) != 0:
        # seq_cst CAS 1 -> 0: exactly one ring per sleep, so a semaphore count stays bounded.
        if compare_and_swap(hdr, CONSUMER_SLEEPING_WORD, 1, 0) == 1:
            hdr[PRODUCER_DOORBELL_COUNT_WORD] += 1
            return 1
    return 0


@njit(cache=True)
def _try_publish(hdr, slots, records, capacity):
    """Producer: copy all ``records`` into free slots and publish them, or nothing.

    Returns -1 if they do not fit (counted), 0 when published, 1 when published and the
    consumer sleeps (the caller rings the doorbell). ``records`` has the slots' dtype.
    """
    n = records.shape[0]
    pos = _claim_position(hdr, n, capacity)
    if pos < 0:
        return -1
    mask = capacity - 1
    for j in range(n):
        slots[(pos + j) & mask] = records[j]
    # _publish's release store keeps these slot stores before the new position (the
    # compiler may not sink a store below a release store).
    return _publish(hdr, pos + n)


@njit(cache=True)
def _readable(hdr, max_n):
    """Consumer: ``(position, n)``: ``n <= max_n`` slots from ``position`` are readable."""
    pos = hdr[CONSUMER_POSITION_WORD]                 # own field
    cached = hdr[CONSUMER_CACHED_PRODUCER_WORD]       # own field
    if cached == pos:
        # acquire: pairs with the producer's release store in _publish; slot reads after
        # this load see the payload. Re-read only when the cached copy says empty.
        cached = load_acquire(hdr, PRODUCER_POSITION_WORD)
        hdr[CONSUMER_CACHED_PRODUCER_WORD] = cached
    n = cached - pos
    if n > max_n:
        n = max_n
    return pos, n


@njit(cache=True)
def _available(hdr):
    """Consumer: readable slots now (always re-reads the producer position)."""
    # acquire: pairs with the producer's release store in _publish.
    cached = load_acquire(hdr, PRODUCER_POSITION_WORD)
    hdr[CONSUMER_CACHED_PRODUCER_WORD] = cached
    return cached - hdr[CONSUMER_POSITION_WORD]


@njit(cache=True)
def _release(hdr, n):
    """Consumer: hand ``n`` read slots back to the producer."""
    # release: our reads of those slots complete before the producer can see them free and
    # overwrite them (pairs with the acquire load in _claim_position).
    store_release(hdr, CONSUMER_POSITION_WORD, hdr[CONSUMER_POSITION_WORD] + n)


@njit(cache=True)
def _occupancy(hdr):
    """Any process: slots published and not yet released (a monitoring snapshot)."""
    # acquire both: observe positions written by the two other processes. The consumer
    # position is read first so the difference is never negative.
    cons = load_acquire(hdr, CONSUMER_POSITION_WORD)
    return load_acquire(hdr, PRODUCER_POSITION_WORD) - cons


@njit(cache=True)
def _prepare_sleep(hdr):
    """Consumer: raise the sleeping flag; True if the ring is still empty (safe to sleep).

    On False the flag is lowered again and data is readable.
    """
    # release store of the flag, then a full fence so the store is globally visible before
    # the position load below (x86 store->load); pairs with the fence in _publish.
    store_release(hdr, CONSUMER_SLEEPING_WORD, 1)
    fence_seq_cst()
    # acquire: pairs with the producer's release store in _publish.
    prod = load_acquire(hdr, PRODUCER_POSITION_WORD)
    hdr[CONSUMER_CACHED_PRODUCER_WORD] = prod
    if prod != hdr[CONSUMER_POSITION_WORD]:
        store_release(hdr, CONSUMER_SLEEPING_WORD, 0)   # release: just lowering our own flag
        return False
    hdr[CONSUMER_SLEEP_COUNT_WORD] += 1
    return True


@njit(cache=True)
def _end_sleep(hdr):
    """Consumer: lower the sleeping flag (the producer may already have, by its CAS)."""
    # release: ordered after everything the consumer did before waking; producer's next
    # publish then sees 0 and skips the doorbell.
    store_release(hdr, CONSUMER_SLEEPING_WORD, 0)


@njit(cache=True)
def _init_header(hdr, capacity, slot_size, dtype_hash, version, magic):
    """Creator: fill a zeroed header; MAGIC goes last with a release store."""
    hdr[LAYOUT_VERSION_WORD] = version
    hdr[CAPACITY_WORD] = capacity
    hdr[SLOT_SIZE_WORD] = slot_size
    hdr[SLOT_DTYPE_HASH_WORD] = dtype_hash
    # release: an attacher that acquire-loads MAGIC sees every field above.
    store_release(hdr, MAGIC_WORD, magic)


@njit(cache=True)
def _load_acquire_word(hdr, word):
    """Any process: acquire load of one header word (pairs with a release store of that word)."""
    return load_acquire(hdr, word)
