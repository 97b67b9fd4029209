"""`risk-engine --version`: setup.py's version, read from the installed metadata, or from
setup.py itself in a checkout that was never installed (tests/test_packaging.py checks an
installed wheel)."""
from __future__ import annotations

import re
import subprocess
import sys

from tests.engine.engine_proc import REPO

SETUP_VERSION = re.search(r'\bversion="([^"]+)"', (REPO / "setup.py").read_text()).group(1)


def test_version_option_prints_the_version_and_exits_0():
    p = subprocess.run([sys.executable, "-m", "engine.cli", "--version"], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert re.fullmatch(rf"risk-engine {re.escape(SETUP_VERSION)}( \(source checkout, not installed\))?\n",
                        p.stdout), p.stdout


def test_a_checkout_without_metadata_reads_setup_py():
    """-S: no site-packages, so no installed metadata of any risk-engine (engine.cli needs
    only the standard library)."""
    p = subprocess.run([sys.executable, "-S", "-c", "from engine.cli import version; print(version())"],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout == f"{SETUP_VERSION} (source checkout, not installed)\n"
