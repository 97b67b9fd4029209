"""A wheel of this checkout, installed (not editable) into a fresh venv, works from a directory
outside the checkout: `risk-engine --version`, `check` on the example rules, `test-rules`, and
`serve` answering one request with a rule's decision.

Slow (marked ``slow``: `make test-slow`, which .ci/run runs after `make test`): it builds the wheel, installs its dependencies
into the new venv (from pip's cache or the package registry, pinned to the versions this
interpreter runs) and compiles every kernel cold: 1-3 minutes when quiet, more under load.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from bench.engine_proc import REPO, EngineProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

STEP_TIMEOUT_S = 900       # one pip install or one cold compile, on a loaded machine
# what the code opens beside itself once installed (shm/runtime/config.py, default.yaml, bpf/loader.py)
DATA_FILES = ("engine/default.yaml", "rules/examples/payments.yaml", "rules/examples/blocked_ips.txt",
              "bpf/program.c", "bench/batched_4f.yaml")


def setup_version() -> str:
    return re.search(r'\bversion="([^"]+)"', (REPO / "setup.py").read_text()).group(1)


def run(cmd, cwd, env=None, timeout_s=STEP_TIMEOUT_S) -> subprocess.CompletedProcess:
    p = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=timeout_s)
    assert p.returncode == 0, f"{cmd} exited {p.returncode}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


def build_wheel(tmp: Path) -> Path:
    """pip wheel of a copy of setup.py and every top-level package, tests/ included (a build
    writes build/ and *.egg-info beside setup.py: not into the tree other runs use). No build
    isolation: the build backend is the setuptools this interpreter has (no network)."""
    src = tmp / "src"
    src.mkdir()
    shutil.copy2(REPO / "setup.py", src)
    for d in REPO.iterdir():
        if (d / "__init__.py").exists():
            shutil.copytree(d, src / d.name, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp / "dist"
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", out, src], cwd=tmp)
    (wheel,) = out.glob("risk_engine-*.whl")
    return wheel


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    wheel = build_wheel(tmp)
    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", venv], cwd=tmp)
    # the dependencies at the versions the rest of the suite runs on
    pins = run([sys.executable, "-m", "pip", "freeze", "--exclude-editable"], cwd=tmp).stdout
    (tmp / "constraints.txt").write_text(pins)
    run([venv / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check",
         "-c", tmp / "constraints.txt", wheel], cwd=tmp)
    venv = venv.resolve()
    elsewhere = tmp / "elsewhere"          # cwd: nothing of the checkout on sys.path
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "RISK_ENGINE_CACHE",
                        "RISK_ENGINE_RUN_ROOT", "NUMBA_CACHE_DIR")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
               RISK_ENGINE_CACHE=str(tmp / "kernels"), RISK_ENGINE_RUN_ROOT=str(tmp / "run"))
    yield {"wheel": wheel, "venv": venv, "exe": venv / "bin" / "risk-engine", "cwd": elsewhere,
           "env": env, "tmp": tmp}
    shutil.rmtree(venv)                    # hundreds of MB (numba, llvmlite, numpy)


def venv_python(installed, code: str, *args) -> str:
    return run([installed["venv"] / "bin" / "python", "-c", code, *args], cwd=installed["cwd"],
               env=installed["env"]).stdout


def test_the_wheel_holds_every_package_and_data_file_and_no_tests(installed):
    names = zipfile.ZipFile(installed["wheel"]).namelist()
    for pkg in ("engine", "shm/features", "ingress", "shm", "rules", "bpf", "bench"):
        assert f"{pkg}/__init__.py" in names, pkg
    for f in DATA_FILES:
        assert f in names, f
    assert not [n for n in names if n.startswith("tests/")]


def test_installed_copy_is_what_runs_and_its_cache_sweep_stays_in_site_packages(installed):
    out = json.loads(venv_python(installed, (
        "import json, engine, shm.features, rules, bench; from shm import jitcache; "
        "print(json.dumps({'engine': engine.__file__, 'root': str(jitcache.ROOT), "
        "'sweep': jitcache.sweep_dirs(jitcache.ROOT), "
        "'stamp': (jitcache.ROOT / jitcache.STAMP).exists()}))")))
    site = Path(out["root"])
    assert site.name == "site-packages" and site.is_relative_to(installed["venv"])
    assert Path(out["engine"]).is_relative_to(site)
    # in site-packages a top-level tests/ is another project's: never swept
    assert "tests" not in out["sweep"] and "engine" in out["sweep"]
    assert out["stamp"]                    # the sweep recorded its digest where it can write


def test_version_comes_from_the_package_metadata(installed):
    out = run([installed["exe"], "--version"], cwd=installed["cwd"], env=installed["env"]).stdout
    assert out.strip() == f"risk-engine {setup_version()}"


def test_check_and_test_rules_on_the_installed_examples(installed):
    env, cwd = installed["env"], installed["cwd"]
    exe = installed["exe"]
    out = run([exe, "check"], cwd=cwd, env=env).stdout          # the bundled config's rules
    assert out.startswith("ok: payments@") and "pretrade@" in out, out
    examples = Path(venv_python(installed, "import rules, pathlib; "
                                "print(pathlib.Path(rules.__file__).parent / 'examples')").strip())
    run([exe, "test-rules", "--rules", examples / "payments.yaml",
         "--cases", examples / "payments_cases.yaml"], cwd=cwd, env=env)


CLIENT = """
import json, sys
from shm.runtime.config import load_config
from ingress.client import Client
schema = load_config(sys.argv[2]).schema
event = {f.name: False if f.kind == "bool" else 0 for f in schema.fields}
event.update(country="KP", currency="USD", amount=120.0, ts_ms=1_700_000_000_000)
with Client(sys.argv[1], schema, timeout_ms=60_000, retries=0, transport="json",
            deadline_ms=30_000) as c:          # a first request on a loaded machine: no TIMEOUT
    d = c.evaluate(event)
print(json.dumps({"action": d.action, "rules": list(d.rules), "error": d.error}))
"""


def test_serve_answers_a_request_with_a_rules_decision(installed):
    """The installed `risk-engine serve` on its bundled config (journal, snapshots, run
    directory and kernel cache in temporary directories), one event from a sanctioned
    country sent with the installed client."""
    raw = json.loads(venv_python(installed, "import json; from shm.runtime.config import portable_raw; "
                                 "print(json.dumps(portable_raw()))"))
    assert all(Path(f).is_relative_to(installed["venv"]) for f in raw["rules"]["files"])
    with EngineProcess(installed["tmp"], workers=1, raw=raw, command=(str(installed["exe"]),),
                       cwd=installed["cwd"], env=installed["env"],
                       ready_timeout_s=STEP_TIMEOUT_S) as eng:
        out = venv_python(installed, CLIENT, eng.endpoint, str(eng.config_path))
    d = json.loads(out)
    assert d["action"] == "block" and "sanctioned_country" in d["rules"] and d["error"] is None, d
