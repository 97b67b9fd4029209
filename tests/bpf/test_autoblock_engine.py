"""Rules that block a source in a real engine on both receive paths and both families (issue
23; root + bcc, see conftest; the checks: tests/bpf/autoblock.py).

The engine binds ``tcp://[::]:port`` (dual stack: an IPv4 client's Peer-Address reads
``::ffff:a.b.c.d``) in the server namespace of a veth pair made here (bench/netns.py;
addresses only inside those namespaces) and enforces on that veth, once with
``ingress.compiled_loop`` on and once off. The IPv4 checks on the compiled path also run in
``make test`` on test_enforce_engine.py's engine; this module starts two more engines (slow).
"""
from __future__ import annotations

import pytest
import yaml

from bench.engine_proc import EngineProcess
from bench.netns import VethPair
from tests.bpf.autoblock import AUTOBLOCK_RULES, FAMILIES, blocks_until_ttl, lift_before_ttl
from tests.bpf.conftest import require_ebpf

pytestmark = pytest.mark.slow    # two engine starts (a bcc and Numba compile each): make test-slow


@pytest.fixture(scope="module")
def net():
    require_ebpf()
    with VethPair() as n:
        yield n


@pytest.fixture(scope="module", params=[pytest.param(True, id="compiled"), pytest.param(False, id="python")])
def engine(request, net, tmp_path_factory):
    """One engine per receive path; pytest ends one before it starts the next (module scope),
    so only one program is on the veth at a time."""
    tmp = tmp_path_factory.mktemp("autoblock")
    eng = EngineProcess(tmp, workers=1, metrics=True, prefix=tuple(net.exec_prefix(net.server_ns)),
                        overrides={"workers": {"standby": False},
                                   "ingress": {"compiled_loop": request.param},
                                   "lists": {"blocked_ips": {"type": "ipv4", "capacity": 4}},
                                   "enforce": {"mode": "xdp", "interface": net.server_if,
                                               "lists": ["blocked_ips"]}})
    eng.raw["ingress"]["bind"] = f"tcp://[::]:{eng.port}"        # both families, one socket
    rules = tmp / "autoblock.yaml"
    rules.write_text(AUTOBLOCK_RULES)                            # ttl 2 s and 10 min
    eng.raw["rules"]["files"].append(str(rules))
    eng.config_path.write_text(yaml.safe_dump(eng.raw, sort_keys=False))
    with eng:
        yield eng


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_block_source_rule_blocks_the_sender_until_its_ttl(net, engine, family):
    blocks_until_ttl(net, engine, family)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_an_operator_lifts_a_block_before_its_ttl(net, engine, family):
    lift_before_ttl(net, engine, family)
