"""`risk-engine check` and `risk-engine test-rules`, in process, on the shipped examples."""
from __future__ import annotations

from pathlib import Path

from engine.cli import main
from shm.runtime.config import load_config

EXAMPLES = Path(__file__).resolve().parents[2] / "rules" / "examples"


def test_default_config_loads_the_example_packs_of_100_rules(capsys):
    files = load_config(None).rules.files
    assert [Path(f).name for f in files][:2] == ["payments.yaml", "pretrade.yaml"]  # + velocity packs
    assert main(["check", "--no-kernel"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("ok: payments@7+pretrade@3")
    assert int(line.split(": ")[2].split()[0]) >= 100


def test_check_compiles_and_reports_errors(write_rules, kernel_cache, capsys):
    good = write_rules("ruleset: g\nversion: 1\nrules:\n  - {id: a, when: 'qty > 1'}\n", "g.yaml")
    assert main(["check", "--rules", good, "--cache-dir", str(kernel_cache)]) == 0
    assert "ok: g@1: 1 rules (1 enforce, 0 shadow), kernel k_" in capsys.readouterr().out
    bad = write_rules("ruleset: b\nversion: 1\nrules:\n  - {id: x, when: 'qty > 1 and foo'}\n"
                      "  - {id: c, when: \"country == 'NG'\"}\n", "b.yaml")
    assert main(["check", "--rules", good, bad, "--no-kernel"]) == 1
    cap = capsys.readouterr()
    assert cap.out.splitlines() == [
        f"{bad}:4:32: rule x: unknown name 'foo' (not a field, constant, feature or list)",
        f"{bad}:5:31: rule c: str literal 'NG' compared with bytes2 field country: write b'NG'",
    ]
    assert "2 errors; ruleset refused" in cap.err


def test_example_cases_pass(kernel_cache, capsys):
    for pack in ("payments", "pretrade"):
        rc = main(["test-rules", "--rules", str(EXAMPLES / f"{pack}.yaml"),
                   "--cases", str(EXAMPLES / f"{pack}_cases.yaml"), "--cache-dir", str(kernel_cache)])
        out = capsys.readouterr().out
        assert rc == 0, out
        assert "FAIL" not in out and out.count("PASS  ") >= 15


def test_failing_case_exits_1(write_rules, kernel_cache, capsys):
    rules = write_rules("ruleset: g\nversion: 1\nrules:\n  - {id: a, when: 'qty > 1', action: block, score: 5}\n", "g.yaml")
    cases = write_rules("cases:\n  - {name: ok, event: {qty: 2}, expect: {action: block, score: 5, fired: [a]}}\n"
                        "  - {name: wrong, event: {qty: 0}, expect: {action: block, fired: [a]}}\n", "c.yaml")
    assert main(["test-rules", "--rules", rules, "--cases", cases, "--cache-dir", str(kernel_cache)]) == 1
    out = capsys.readouterr().out
    assert "PASS  c.yaml: ok" in out and "FAIL  c.yaml: wrong" in out
    assert "action: expected block, got allow" in out and "fired: missing a" in out
    assert "PASS: 1/2" in out and "FAIL: 1/2" in out


def test_a_kernel_cache_another_user_can_write_is_refused(write_rules, tmp_path, capsys):
    """The cache holds generated modules and Numba's (pickled) cache index, both loaded as
    code: a directory group/others can write, or one owned by another user, is refused."""
    import os
    good = write_rules("ruleset: g\nversion: 1\nrules:\n  - {id: a, when: 'qty > 1'}\n", "g.yaml")
    shared = tmp_path / "shared-cache"
    shared.mkdir()
    os.chmod(shared, 0o777)
    assert main(["check", "--rules", good, "--cache-dir", str(shared)]) == 2
    err = capsys.readouterr().err
    assert "kernel cache" in err and str(shared) in err
    assert list(shared.iterdir()) == []           # nothing written, nothing imported from it
    if os.geteuid() == 0:
        os.chmod(shared, 0o700)
        os.chown(shared, 65534, 65534)            # owned by nobody
        assert main(["check", "--rules", good, "--cache-dir", str(shared)]) == 2
        assert "kernel cache" in capsys.readouterr().err
    fresh = tmp_path / "a" / "fresh-cache"
    assert main(["check", "--rules", good, "--cache-dir", str(fresh)]) == 0
    assert (fresh.stat().st_mode & 0o777) == 0o700
