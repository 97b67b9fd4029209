"""check_ebpf() on fake trees (every reason), and the sidecar's exit contract without root."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bpf.availability import TRACEPOINTS, Exit, check_ebpf

ROOT = Path(__file__).resolve().parents[2]


def _tree(tmp_path: Path, headers=True, tracefs=True, missing_tp=None) -> tuple[str, str]:
    bcc = tmp_path / "site" / "bcc"
    bcc.mkdir(parents=True)
    (bcc / "__init__.py").write_text("")
    (bcc / "libbcc.py").write_text("")
    if headers:
        (tmp_path / "lib/modules/6.18.0-test/build/include").mkdir(parents=True)
    if tracefs:
        for tp in TRACEPOINTS:
            if tp != missing_tp:
                (tmp_path / "sys/kernel/tracing/events" / tp).mkdir(parents=True)
    return str(tmp_path), str(bcc / "__init__.py")


def _check(root, origin, euid=0):
    return check_ebpf(root=root, euid=euid, release="6.18.0-test", bcc_origin=origin)


def test_all_present(tmp_path):
    assert _check(*_tree(tmp_path)) is None


@pytest.mark.parametrize("case, code, words", [
    ("not_root", Exit.NOT_ROOT, "not root"),
    ("no_bcc", Exit.NO_BCC, "bcc not found"),
    ("pypi_bcc", Exit.NO_BCC, "not Debian"),
    ("no_headers", Exit.NO_HEADERS, "kernel headers"),
    ("no_tracefs", Exit.NO_TRACEFS, "tracefs not mounted"),
    ("no_tracepoint", Exit.NO_TRACEFS, "tracepoint=sock/sock_recv_length"),
])
def test_each_missing_precondition(tmp_path, case, code, words):
    root, origin = _tree(tmp_path, headers=case != "no_headers", tracefs=case != "no_tracefs",
                         missing_tp="sock/sock_recv_length" if case == "no_tracepoint" else None)
    if case == "pypi_bcc":
        os.unlink(os.path.join(os.path.dirname(origin), "libbcc.py"))
    got = _check(root, None if case == "no_bcc" else origin, euid=1000 if case == "not_root" else 0)
    assert got is not None and got.code == code and words in got.reason
    assert "\n" not in got.reason


def test_packet_programs_need_no_tracefs(tmp_path):
    """Enforcement (XDP/TC) checks root, bcc and headers, not tracefs: it attaches no
    tracepoint, and a machine without tracefs can still enforce."""
    root, origin = _tree(tmp_path, tracefs=False)
    assert check_ebpf(root=root, euid=0, release="6.18.0-test", bcc_origin=origin, tracepoints=False) is None
    got = check_ebpf(root=root, euid=1000, release="6.18.0-test", bcc_origin=origin, tracepoints=False)
    assert got.code == Exit.NOT_ROOT


def _as_unprivileged(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    if not shutil.which("setpriv"):
        pytest.skip("setpriv (util-linux) needed to drop root")
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] + cmd


def test_sidecar_without_root_exits_3_with_one_line():
    cmd = _as_unprivileged([sys.executable, "-m", "bpf.sidecar", "--port", "5555",
                            "--metrics", "127.0.0.1:0"])
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
    assert p.returncode == Exit.NOT_ROOT, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("risk-engine sidecar: ebpf unavailable: not root")
    assert p.stdout == ""


def test_cli_bad_arguments_exit_2():
    p = subprocess.run([sys.executable, "-m", "engine.cli", "sidecar", "--port", "0"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == Exit.USAGE
    assert "port=0" in p.stderr


def test_port_of_bind():
    from bpf.spawn import SidecarUnavailable, port_of_bind
    assert port_of_bind("tcp://127.0.0.1:5555") == 5555
    assert port_of_bind("tcp://[::1]:6000") == 6000
    for bad in ("ipc:///tmp/x.sock", "tcp://127.0.0.1:*", "tcp://127.0.0.1:0", "5555"):
        with pytest.raises(SidecarUnavailable) as e:
            port_of_bind(bad)
        assert e.value.code == Exit.USAGE


def test_start_sidecar_reports_failure_as_exception():
    """No root: the availability reason; root: a bad metrics address (exit 2 from the child)."""
    from bpf.spawn import SidecarUnavailable, start_sidecar
    with pytest.raises(SidecarUnavailable) as e:
        start_sidecar(5555, metrics="no-port-here")
    missing = check_ebpf()
    if missing is not None:
        assert e.value.code == missing.code and str(e.value) == missing.reason
    else:
        assert e.value.code == Exit.USAGE and "metrics='no-port-here'" in str(e.value)
