"""The enforce: section (issue 23) checked completely with the rest of the config: every error
at once with its key path, did-you-mean for unknown keys and list names; the bundled config
has it off; a checked config survives the supervisor's hand-off round trip."""
import subprocess
import sys
from pathlib import Path

import pytest

from shm.runtime.config import config_to_raw, load_config, parse_config
from shm.runtime.config_check import ConfigErrors
from shm.runtime.config_types import ConfigError, EnforceConfig

REPO = Path(__file__).resolve().parents[2]


def _cfg(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return load_config(p)


def test_bundled_config_has_enforcement_off():
    e = load_config().enforce
    assert e == EnforceConfig()     # no list named: a file with its own lists: still checks
    assert e.mode == "off" and e.interface == "auto" and not e.required


def test_every_enforce_error_in_one_pass(tmp_path):
    with pytest.raises(ConfigErrors) as e:
        _cfg(tmp_path, "enforce: {mode: xpd, interface: 'eth/0', lists: [blocked_ip, blocked_ips, blocked_ips],\n"
                       "          ports: [0, 5555], requird: true, required: 1}\n")
    text = str(e.value)
    assert text.startswith("7 errors:"), text
    for line in ("enforce.requird: unknown key; did you mean 'required'?",
                 "enforce.mode: must be one of off, xdp, tc, got 'xpd'",
                 "enforce.interface: must be auto or an interface name",
                 "enforce.lists[0]: no list 'blocked_ip' in lists:; did you mean 'blocked_ips'?",
                 "enforce.lists[2]: 'blocked_ips' is named twice",
                 "enforce.ports: must be a list of at most 64 TCP ports 1..65535, got [0, 5555]",
                 "enforce.required: must be true or false, got 1"):
        assert line in text, (line, text)


def test_a_bare_off_is_explained():
    with pytest.raises(ConfigError, match="quote it: 'off'"):
        parse_config({**_raw(), "enforce": {"mode": False}})


def _raw():
    from shm.runtime.config import portable_raw
    return portable_raw()


@pytest.mark.parametrize("enforce,bind,key,why", [
    ({"mode": "xdp", "lists": []}, "tcp://127.0.0.1:5555", "enforce.lists", "needs at least one list"),
    ({"mode": "tc", "lists": ["blocked_ips"]}, "tcp://127.0.0.1:*", "enforce.ports", "no fixed TCP port"),
    ({"mode": "tc", "lists": ["blocked_ips"]}, "ipc:///tmp/x.sock", "enforce.ports", "no fixed TCP port"),
    ({"mode": "xdp", "lists": ["blocked_ips"], "ports": [5555]}, "tcp://0.0.0.0:5555",
     "enforce.interface", "is not one address: name the interface"),
    ({"mode": "xdp", "lists": ["names"]}, "tcp://127.0.0.1:5555", "enforce.lists[0]",
     "list 'names' is of type bytes8; the kernel takes ipv4, u32, cidr4, cidr6 lists"),
])
def test_what_an_enabled_mode_needs(enforce, bind, key, why):
    raw = _raw()
    raw["ingress"]["bind"] = bind
    raw["lists"]["names"] = {"type": "bytes8"}
    with pytest.raises(ConfigError) as e:
        parse_config({**raw, "enforce": enforce})
    assert f"{key}: " in str(e.value) and why in str(e.value), str(e.value)


def test_a_valid_section_round_trips(tmp_path):
    c = _cfg(tmp_path, "lists: {nets: {type: cidr4}, blocked_ips: {type: ipv4}}\n"
                       "enforce: {mode: tc, interface: veth0, lists: [blocked_ips, nets], ports: [7000, 5555],\n"
                       "          required: true}\n")
    assert c.enforce == EnforceConfig("tc", "veth0", ("blocked_ips", "nets"), (5555, 7000), True)
    assert parse_config(config_to_raw(c), c.path) == c
    ok = _cfg(tmp_path, "enforce: {mode: xdp, lists: [blocked_ips]}\n")   # the bundled list
    assert ok.enforce == EnforceConfig("xdp", "auto", ("blocked_ips",), (), False)
    with pytest.raises(ConfigError, match="enforce.lists: mode xdp needs at least one list"):
        _cfg(tmp_path, "enforce: {mode: xdp}\n")


def test_an_ipv6_front_door_and_a_cidr6_list_can_be_enforced(tmp_path):
    """The kernel program judges IPv6 too: auto finds the interface holding an IPv6 bind
    address at start (engine.enforcement.resolve_interface), so the config takes it."""
    c = _cfg(tmp_path, "ingress: {bind: 'tcp://[fd00::1]:5555'}\nlists: {nets6: {type: cidr6}}\n"
                       "enforce: {mode: xdp, lists: [nets6]}\n")
    assert c.enforce == EnforceConfig("xdp", "auto", ("nets6",), (), False)


def test_config_check_lists_enforce_errors(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("enforce: {mode: xdp, lists: [blocked_ipz]}\n")
    out = subprocess.run([sys.executable, "-m", "engine.cli", "config", "--check", "--config", str(p)],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "enforce.lists[0]: no list 'blocked_ipz' in lists:; did you mean 'blocked_ips'?" in out.stderr
