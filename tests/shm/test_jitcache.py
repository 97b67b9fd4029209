"""shm.jitcache: Numba caches built from older sources are swept before anything loads them."""
import subprocess
import sys
import textwrap

from shm import jitcache


def _touch(path, text=""):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_sweeps_only_when_a_compiled_source_changes(tmp_path):
    src = _touch(tmp_path / "pkg" / "a.py", "from numba import njit\n")
    plain = _touch(tmp_path / "pkg" / "cli.py", "print('no compiled code here')\n")
    caches = [_touch(tmp_path / "pkg" / "__pycache__" / "a.f-1.py311.nbi"),
              _touch(tmp_path / "pkg" / "__pycache__" / "a.f-1.py311.1.nbc"),
              _touch(tmp_path / "tests" / "__pycache__" / "t.g-3.py311.nbi")]
    pyc = _touch(tmp_path / "pkg" / "__pycache__" / "a.cpython-311.pyc")
    sweep = lambda: jitcache.invalidate_stale(tmp_path, ("pkg",), ("pkg", "tests"))  # noqa: E731
    assert sweep() == 3                          # no digest recorded yet: nothing is trusted
    assert not any(c.exists() for c in caches) and pyc.exists()
    caches = [_touch(c) for c in caches]
    assert sweep() == 0 and all(c.exists() for c in caches)
    plain.write_text("print('still no compiled code')\n")
    assert sweep() == 0                          # not a file compiled code comes from
    src.write_text("from numba import njit\nX = 2\n")
    assert sweep() == 3 and not any(c.exists() for c in caches)


def test_a_cached_caller_sees_its_changed_callee(tmp_path):
    """The hazard itself, with real Numba: a cached function keeps the code it inlined from
    another file after that file changes, until the sweep removes its cache."""
    pkg = tmp_path / "pkgx"
    _touch(pkg / "__init__.py")
    helper = _touch(pkg / "helper.py", "from numba import njit\n\n@njit(inline='always')\ndef h():\n    return 1\n")
    _touch(pkg / "user.py", textwrap.dedent("""\
        from numba import njit
        from pkgx.helper import h

        @njit(cache=True)
        def f():
            return h()
        """))

    def run():
        p = subprocess.run([sys.executable, "-c", "import pkgx.user as u; print(u.f())"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        return int(p.stdout)

    assert run() == 1
    helper.write_text(helper.read_text().replace("return 1", "return 2"))
    assert run() == 1                            # stale: user.py did not change
    assert jitcache.invalidate_stale(tmp_path, ("pkgx",), ("pkgx",)) > 0
    assert run() == 2


def test_tests_dir_is_swept_only_in_a_source_checkout(tmp_path):
    """In a checkout (setup.py beside the packages) the test suite's caches go too; an
    installed copy lives in site-packages, whose top-level tests/ is someone else's."""
    _touch(tmp_path / "shm" / "a.py", "from numba import njit\n")
    theirs = _touch(tmp_path / "tests" / "__pycache__" / "other.f-1.py311.nbi")
    ours = _touch(tmp_path / "bench" / "__pycache__" / "features._run-9.py311.nbi")
    assert jitcache.invalidate_stale(tmp_path) == 1 and theirs.exists() and not ours.exists()
    _touch(tmp_path / "setup.py")
    _touch(tmp_path / "shm" / "a.py", "from numba import njit\nX = 1\n")
    assert jitcache.invalidate_stale(tmp_path) == 1 and not theirs.exists()
    assert "tests" in jitcache.sweep_dirs(jitcache.ROOT)     # this checkout


def test_a_layout_change_sweeps_the_kernels_that_froze_its_offsets(tmp_path):
    """Kernels compile the layout modules' ints in as literals (shm.descriptor): the ring
    header, the slots and the descriptor itself count as compiled sources though they hold
    no Numba code, so changing an offset there recompiles the cached kernels."""
    root = jitcache.ROOT
    for rel in ("shm/descriptor.py", "shm/layout.py", "shm/types.py"):
        _touch(tmp_path / rel, (root / rel).read_text())
    before = jitcache.sources_digest(tmp_path, ("shm",))
    for rel in ("shm/descriptor.py", "shm/layout.py", "shm/types.py"):
        path = tmp_path / rel
        path.write_text(path.read_text() + "\nX = 1\n")
        after = jitcache.sources_digest(tmp_path, ("shm",))
        assert after != before, f"{rel} is not hashed with the compiled sources"
        before = after
