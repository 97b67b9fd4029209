"""`risk-engine --version`: setup.py's version, read from the installed metadata, or from
setup.py itself in a checkout that was never installed (tests/test_packaging.py checks an
installed wheel)."""
from __future__ import annotations

import re
import subprocess
import sys

from bench.engine_proc import REPO

SETUP_VERSION = re.search(r'\bversion="([^"]+)"', (REPO / "setup.py").read_text()).group(1)


def test_version_option_prints_the_version_and_exits_0():
    p = subprocess.run([sys.executable, "-m", "engine.cli", "--version"], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert re.fullmatch(rf"risk-engine {re.escape(SETUP_VERSION)}( \(source checkout, not installed\))?\n",
                        p.stdout), p.stdout


def test_a_checkout_without_metadata_reads_setup_py(tmp_path):
    """A copy of the checkout's sources with no metadata beside them (`make`'s editable
    install leaves risk_engine.egg-info in the checkout itself), run with -S: no
    site-packages either (engine.cli needs only the standard library)."""
    import shutil
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.nbi", "*.nbc")
    for pkg in ("engine", "shm"):
        shutil.copytree(REPO / pkg, tmp_path / pkg, ignore=skip)
    shutil.copy(REPO / "setup.py", tmp_path / "setup.py")
    p = subprocess.run([sys.executable, "-S", "-c", "from engine.cli import version; print(version())"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout == f"{SETUP_VERSION} (source checkout, not installed)\n"
