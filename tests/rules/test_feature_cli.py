"""check and test-rules with the config's features: the velocity/throttle example packs and
their history case files, under a config = the default + rules/examples/features_block.yaml
(the block the default config is to declare)."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from engine.cli import main

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "rules" / "examples"
PACKS = ("payments.yaml", "pretrade.yaml", "payments_velocity.yaml", "pretrade_throttle.yaml")


@pytest.fixture(scope="module")
def feature_config(tmp_path_factory) -> str:
    raw = yaml.safe_load((REPO / "engine" / "default.yaml").read_text())
    block = yaml.safe_load((EXAMPLES / "features_block.yaml").read_text())
    block["lists"]["blocked_ips"]["file"] = str(EXAMPLES / "blocked_ips.txt")
    raw.update(block)
    raw["rules"]["files"] = [str(EXAMPLES / f) for f in PACKS]
    p = tmp_path_factory.mktemp("cfg") / "with_features.yaml"
    p.write_text(yaml.safe_dump(raw))
    return str(p)


@pytest.fixture(scope="module")
def no_features_config(tmp_path_factory) -> str:
    raw = yaml.safe_load((REPO / "engine" / "default.yaml").read_text())
    for k in ("features", "lists", "state"):
        raw.pop(k, None)
    raw["rules"]["files"] = [str(EXAMPLES / f) for f in PACKS[:2]]
    p = tmp_path_factory.mktemp("cfg") / "without_features.yaml"
    p.write_text(yaml.safe_dump(raw, sort_keys=False))
    return str(p)


def test_check_knows_the_config_features(feature_config, no_features_config, capsys):
    assert main(["check", "--config", feature_config, "--no-kernel"]) == 0
    assert "payments_velocity@1+pretrade_throttle@1" in capsys.readouterr().out
    # without the features block the velocity pack is refused with positions
    assert main(["check", "--config", no_features_config, "--rules", str(EXAMPLES / "pretrade_throttle.yaml"),
                 "--no-kernel"]) == 1
    out = capsys.readouterr().out
    assert f"{EXAMPLES / 'pretrade_throttle.yaml'}:8:34: rule order_rate_throttle: unknown name 'orders_1s'" in out


@pytest.mark.parametrize("pack", ["payments_velocity", "pretrade_throttle"])
def test_history_cases_pass(pack, feature_config, kernel_cache, capsys):
    rc = main(["test-rules", "--config", feature_config, "--rules", str(EXAMPLES / f"{pack}.yaml"),
               "--cases", str(EXAMPLES / f"{pack}_cases.yaml"), "--cache-dir", str(kernel_cache)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "FAIL" not in out and "PASS: " in out


def test_failing_history_case_is_reported(feature_config, kernel_cache, tmp_path, capsys):
    cases = tmp_path / "c.yaml"
    cases.write_text("defaults: {instrument_id: 5, account_id: 1, side: 2}\ncases:\n"
                     "  - name: wrong\n    history: [{event: {}, repeat: 25, every_ms: 1}]\n"
                     "    event: {}\n    expect: {action: allow}\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("cases:\n  - name: bad_state\n    state: {account_state: {1: FROZEN}}\n    event: {}\n")
    rc = main(["test-rules", "--config", feature_config, "--rules", str(EXAMPLES / "pretrade_throttle.yaml"),
               "--cases", str(cases), str(bad), "--cache-dir", str(kernel_cache)])
    out = capsys.readouterr().out
    assert rc == 1
    assert "FAIL  c.yaml: wrong" in out and "action: expected allow, got block" in out
    assert "state.account_state.1='FROZEN'" in out
