"""Rules that block a source, the parts that need no kernel (the kernel's: tests/bpf): which
fired rules make a worker publish a decision's list with a ttl, and which request's sender
the ingress would block for a ring token (docs/EBPF.md, "Rules that block a source")."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from engine.autoblock import block_rules
from ingress import _fast_kernels as K
from ingress.autoblock import BLOCKED, NO_PEER, AutoBlock
from rules.kernel_fired import any_masked
from shm.ipv6 import peer_key
from shm.tokens import fast_token


def test_only_enforce_rules_with_block_source_count():
    rs = SimpleNamespace(modes=("enforce", "shadow", "enforce") + ("enforce",) * 64,
                         block_ttl_ms=(0, 5000, 2000) + (0,) * 63 + (9000,))
    ttl, mask, blocking = block_rules(rs, 2)
    assert blocking and ttl[[0, 1, 2, 66]].tolist() == [0, 0, 2000, 9000]     # shadow: none
    assert mask.tolist() == [1 << 2, 1 << 2]
    bits = np.zeros((3, 2), np.uint64)
    nfired = np.zeros(3, np.uint16)
    bits[0, 0] = 1 << 1                       # the shadow rule fired: nothing to block
    assert not any_masked(bits, nfired, mask, 3)
    bits[1, 1] = 1 << 2                       # rule 66 fired, but the row was not decided
    assert not any_masked(bits, nfired, mask, 3)
    nfired[1] = 1
    assert any_masked(bits, nfired, mask, 3) and not any_masked(bits, nfired, mask, 1)
    assert block_rules(SimpleNamespace(modes=("enforce",), block_ttl_ms=(0,)), 1)[2] is False


def test_the_sender_of_a_live_fast_row_or_a_pending_request():
    """A fast token names its row and sequence: only a row still holding that request gives
    its sender; without a map (fd -1) nothing is written and the block counts no_peer."""
    cells = np.zeros(4, np.int64)
    ab = AutoBlock((-1, -1), cells)
    ft = np.zeros((4, K.FT_WORDS), np.int64)
    ft[2:, K.SEQ] = 77
    v4, v6 = peer_key("10.0.0.1"), peer_key("fd00:ee::2")
    peer = np.zeros((4, 2), np.uint64)                      # compiled: zmqc.PEER's two words
    peer[2], peer[3] = divmod(v4, 1 << 64), divmod(v6, 1 << 64)
    compiled = SimpleNamespace(ft=ft, peer=peer, compiled=True)
    python = SimpleNamespace(ft=ft, peers=[0, 0, v6, v4], compiled=False)
    written = []
    ab.fired = lambda peer, ttl: written.append((peer, ttl)) or True
    for fast in (compiled, python):
        ab.decision(int(fast_token(77, 2)), 2000, fast, {})
        ab.decision(int(fast_token(77, 3)), 2000, fast, {})
        ab.decision(int(fast_token(76, 2)), 2000, fast, {})      # answered already
    ab.decision(5 << 16, 3000, compiled, {5: SimpleNamespace(peer=v6)})
    ab.decision(6 << 16, 3000, compiled, {})                     # no such request
    assert written == [(v4, 2000), (v6, 2000), (0, 2000), (v6, 2000), (v4, 2000), (0, 2000),
                       (v6, 3000), (0, 3000)]
    del ab.fired
    assert ab.fired(v4, 2000) is False and cells[NO_PEER] == 1 and cells[BLOCKED] == 0
