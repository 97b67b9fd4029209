"""Rules that block a source (``block_source``): the supervisor's side. The ingress writes the
kernel's ``autoblk`` (IPv4) and ``autoblk6`` (IPv6) maps (ingress.autoblock) through the
descriptors it inherits from here; the supervisor switches the ingress's sender capture on
while the serving ruleset has such a rule and enforcement runs, shows the blocks in force
(``admin list-show name=auto-blocked``) and lifts one before its expiry (``admin
autoblock-remove``: engine.admin_state; a map delete, so the next packet is judged without it).
"""
from __future__ import annotations

import time

import numpy as np

from shm.ipv6 import format_peer

AUTO_LIST = "auto-blocked"  # list-show's name for them: no configured list can have a "-"


def block_rules(ruleset, words: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """The worker's view of a ruleset's enforce rules with block_source: ttl ms per rule
    index (0: none; ``64 * words`` long), the bit mask of them over the fired bits, any."""
    ttl = np.zeros(64 * words, np.int64)
    for i, (t, m) in enumerate(zip(getattr(ruleset, "block_ttl_ms", ()), ruleset.modes)):
        ttl[i] = t if m == "enforce" else 0
    return ttl, np.packbits(ttl > 0, bitorder="little").view(np.uint64), bool(ttl.any())


def autoblock_fds(enforcement) -> tuple[int, int]:
    """The kernel maps of rule-blocked sources (IPv4, IPv6), for the ingress to inherit; -1, -1
    without them."""
    if enforcement is None or enforcement.stopped or enforcement.enforcer.bpf is None:
        return -1, -1
    return enforcement.enforcer.auto_fds()


def capture_peers(sup) -> None:
    """At start and after every reload: the ingress reads each request's sender only while an
    enforce rule of the serving ruleset has block_source and enforcement runs. Such a rule
    without enforcement is accepted (the ruleset does not depend on the host) with one line."""
    rs = sup.rulesets.ruleset
    ids = [i for i, t, m in zip(rs.rule_ids, getattr(rs, "block_ttl_ms", ()), rs.modes)
           if t and m == "enforce"]
    cells = sup.block.view("ingress.autoblock")
    cells[0] = int(bool(ids) and sup.enforcement is not None)
    if sup.enforcement is not None:
        sup.enforcement.auto_cells = cells          # risk_enforce_auto_blocks_total
    if ids and sup.enforcement is None:
        why = "enforce.mode is off" if sup.cfg.enforce.mode == "off" else "enforcement is not running"
        sup.log(f"risk-engine: rules {', '.join(ids[:5])} have block_source but {why}: no source "
                f"is blocked")


def auto_show(enforcement) -> dict:
    """list-show auto-blocked: the blocks in force, soonest expiry first, with the seconds left."""
    now = time.monotonic_ns()
    wall = time.time_ns() - now
    rows = [] if enforcement is None or enforcement.stopped else enforcement.enforcer.auto_entries(now)
    return {"name": AUTO_LIST, "count": len(rows), "enforced": enforcement is not None,
            "values": [format_peer(a) for a, _ in rows],
            "expires": [{"source": format_peer(a), "expires_in_s": round((e - now) / 1e9, 3),
                         "expires_at_ns": e + wall} for a, e in rows]}


def lift(enforcement, sources: list[int]) -> list[int]:
    """Remove the rule blocks of ``sources`` (shm.ipv6.peer_key) from the kernel's maps now;
    returns those that were in force (the others were not blocked, or had expired)."""
    if enforcement is None or enforcement.stopped or enforcement.enforcer.bpf is None:
        return []
    return [s for s in sources if enforcement.enforcer.auto_lift(s)]
