"""shm.tokens: the request token's bit layout, packed and unpacked by compiled code the way
the ingress's kernels do, against plain-integer arithmetic."""
from __future__ import annotations

import numpy as np
import pytest
from numba import njit

from shm import tokens as T
from shm.runtime.config import ConfigError, parse_config


@njit(cache=False)
def _fast_roundtrip(seq, row):
    tok = T.fast_token(seq, row)
    return tok, T.is_fast(tok) != 0, T.token_seq(tok), T.token_index(tok)


@njit(cache=False)
def _general_unpack(tok):
    return T.is_fast(tok) != 0, T.general_seq(tok), T.token_seq(tok), T.token_index(tok)


LAST_SEQ = ((T.EPOCHS - 1) << T.EPOCH_SHIFT) + (1 << T.EPOCH_SHIFT) - 1     # the largest sequence


@pytest.mark.parametrize("seq,index", [(1, 0), (T.first_sequence(5) + 123, 7), (LAST_SEQ, T.INDEX_MASK)])
def test_both_paths_tokens_round_trip(seq, index):
    tok, fast, s, i = _fast_roundtrip(np.int64(seq), np.int64(index))
    assert int(tok) == T.FAST_BIT | seq << T.INDEX_BITS | index
    assert (fast, s, i) == (True, seq, index)
    general = (seq << T.INDEX_BITS) + index                # what the general path stages
    assert general < T.FAST_BIT                            # never mistaken for a fast token
    assert _general_unpack(np.uint64(general)) == (False, seq, seq, index)


def test_the_bit_layout_is_plain_ints():
    """Numba compiles a module-level int in as a literal."""
    for n in ("INDEX_BITS", "INDEX_SPAN", "INDEX_MASK", "SEQ_BITS", "SEQ_MASK", "FAST_BIT", "EPOCH_SHIFT", "EPOCHS"):
        assert type(getattr(T, n)) is int, n


def test_sequences_of_every_epoch_stay_below_the_fast_bit():
    assert T.SEQ_BITS + T.INDEX_BITS == 63 and T.FAST_BIT == 1 << 63
    firsts = [T.first_sequence(e) for e in range(T.EPOCHS)]
    assert firsts[0] == 1 and firsts[5] == (5 << 40) + 1
    assert len(set(firsts)) == T.EPOCHS and max(firsts) <= LAST_SEQ <= T.SEQ_MASK
    assert T.first_sequence(T.EPOCHS + 5) == firsts[5]     # the epoch wraps, never overflows


def test_a_request_never_has_more_events_than_the_token_can_index():
    schema = {"schema": {"shard_key": "a", "fields": {"a": "u64"}}}
    cfg = parse_config({**schema, "ingress": {"max_batch": T.INDEX_SPAN}})
    assert cfg.ingress.max_batch == T.INDEX_SPAN
    with pytest.raises(ConfigError, match="max_batch"):
        parse_config({**schema, "ingress": {"max_batch": T.INDEX_SPAN + 1}})
