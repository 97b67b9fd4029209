"""Import cycles among the repository's modules, read from the source with ast (nothing is
imported). Two graphs: the imports a module runs when it is loaded (module level, including
inside top-level ``if``/``try``; not under ``if TYPE_CHECKING``), and those plus the imports
inside functions, which hide a cycle from readers and tools without removing it.

    python -m tests.test_imports        # prints every cycle of both graphs

bench/ has no cycle in either graph. Elsewhere the cycles known today are listed in
KNOWN_CYCLES (issue 21 removes them): a new cycle, or a known one that grows, fails; a known
one that is gone fails too, so that its entry is deleted.
"""
from __future__ import annotations

import ast
import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("shm", "engine", "ingress", "rules", "bpf", "bench", "tests")

# The modules of each import cycle (strongly connected component) outside bench/ in the
# graph with function-level imports: issue 21 removes them. Every edge of these is an import
# inside a function. Delete an entry when its cycle is gone.
KNOWN_CYCLES: tuple[frozenset, ...] = ()


def module_files(root: Path = REPO, packages=PACKAGES) -> dict[str, Path]:
    """module name -> file, for every .py file under ``packages``."""
    out = {}
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.Module):
    """(node, at_module_level) for every import statement of a module."""
    def walk(node, top: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, top
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                yield from walk(ast.Module(body=child.orelse, type_ignores=[]), top)
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                yield from walk(child, False)
            else:
                yield from walk(child, top)
    yield from walk(tree, True)


def _resolve(name: str, node, is_package: bool, modules) -> list[str]:
    """The modules of ours that an import statement in module ``name`` loads."""
    if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
        return [_ours(t, modules) for t in targets if _ours(t, modules)]
    base = node.module or ""
    if node.level:
        pkg = name.split(".") if is_package else name.split(".")[:-1]
        pkg = pkg[:len(pkg) - (node.level - 1)]
        base = ".".join(pkg + ([base] if base else []))
    out = []
    for a in node.names:
        full = f"{base}.{a.name}" if base else a.name
        if full in modules:                      # from pkg import module
            out.append(full)
        elif _ours(base, modules):               # from module import name
            out.append(_ours(base, modules))
    return out


def _ours(name: str, modules) -> str | None:
    """``name`` or its closest enclosing module that is ours (a dotted name may continue
    into a module's attributes), else None."""
    parts = name.split(".")
    while parts:
        if ".".join(parts) in modules:
            return ".".join(parts)
        parts.pop()
    return None


def import_graph(root: Path = REPO, packages=PACKAGES, function_level: bool = True) -> dict[str, set]:
    """module -> the modules of ours it imports (at module level; also inside functions when
    ``function_level``)."""
    files = module_files(root, packages)
    graph: dict[str, set] = {m: set() for m in files}
    for mod, path in files.items():
        tree = ast.parse(path.read_bytes(), str(path))
        for node, top in _imports(tree):
            if top or function_level:
                graph[mod].update(t for t in _resolve(mod, node, path.name == "__init__.py", files)
                                  if t != mod)
    return graph


def cycles(graph: dict[str, set]) -> list[frozenset]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set = set()
    stack: list = []
    out = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = set()
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.add(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(frozenset(comp))
    return out


def one_cycle(graph: dict[str, set], comp: frozenset) -> list[str]:
    """A shortest import path from the component's first module back to itself."""
    start = min(comp)
    prev = {start: None}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & comp):
                if w == start:
                    path = [v]
                    while prev[path[-1]] is not None:
                        path.append(prev[path[-1]])
                    return list(reversed(path)) + [start]
                if w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    raise ValueError(f"{sorted(comp)} is not a cycle")


def describe(graph: dict[str, set], comps) -> str:
    return "\n".join(f"{len(c)} modules, e.g. {' -> '.join(one_cycle(graph, c))}: {sorted(c)}"
                     for c in comps)


# --- the repository ------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def repo_graph(function_level: bool = True) -> dict[str, set]:
    """import_graph of this checkout, read once per run (3-4 s each on a loaded machine)."""
    return import_graph(function_level=function_level)


def test_no_module_level_import_cycle_anywhere():
    graph = repo_graph(function_level=False)
    assert len(graph) > 100 and sum(map(len, graph.values())) > 300    # it read the tree
    found = cycles(graph)
    assert not found, "import cycles among module-level imports:\n" + describe(graph, found)


def test_bench_has_no_import_cycle_even_through_imports_inside_functions():
    graph = repo_graph()
    found = [c for c in cycles(graph) if any(m.split(".")[0] == "bench" for m in c)]
    assert not found, "import cycles through bench/:\n" + describe(graph, found)


def test_nothing_outside_tests_imports_tests():
    """tests/ is not installed: bench/ (the one EngineProcess, the one event generator) and the
    product sit below it; tests may import them, never the reverse."""
    graph = repo_graph()
    assert any(m.startswith("bench.") for m in graph)
    bad = {m: sorted(t for t in ts if t.split(".")[0] == "tests")
           for m, ts in graph.items() if m.split(".")[0] != "tests"}
    bad = {m: ts for m, ts in bad.items() if ts}
    assert not bad, f"imports of tests/ from outside it: {bad}"


def test_no_import_cycle_but_the_known_ones_of_issue_21():
    graph = repo_graph()
    found = [c for c in cycles(graph) if not any(m.split(".")[0] == "bench" for m in c)]
    new = [c for c in found if c not in KNOWN_CYCLES]
    gone = [c for c in KNOWN_CYCLES if c not in found]
    assert not new, "import cycles not in KNOWN_CYCLES:\n" + describe(graph, new)
    assert not gone, f"gone (or changed): delete from KNOWN_CYCLES: {[sorted(c) for c in gone]}"


def test_the_layer_contract_holds():
    """.importlinter: bench -> engine -> rules | ingress | bpf -> shm, one way only (imports
    inside functions count). Run by hand: `lint-imports` from the repository root."""
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert exe, "lint-imports not found: pip install -e '.[test]' installs import-linter"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run([exe, "--no-cache"], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=240)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "Contracts: 2 kept, 0 broken." in r.stdout, r.stdout[-2000:]


def unexplained_function_imports(root: Path = REPO, packages=PACKAGES) -> list[str]:
    """``path:line`` of every import inside a function (not under ``if TYPE_CHECKING``) with
    no reason beside it: a comment on its line, or on the line before it, or (for a block of
    imports) on the block's first import."""
    out = []
    for path in module_files(root, packages).values():
        text = path.read_text()
        lines = text.splitlines()
        explained_ends: set = set()          # last lines of function-level imports with a reason
        nodes = sorted((n for n, top in _imports(ast.parse(text, str(path))) if not top),
                       key=lambda n: n.lineno)
        for node in nodes:
            first, last = lines[node.lineno - 1], lines[node.end_lineno - 1]
            before = lines[node.lineno - 2].strip() if node.lineno > 1 else ""
            if "#" in first or "#" in last or before.startswith("#") or \
                    node.lineno - 1 in explained_ends:
                explained_ends.add(node.end_lineno)
            else:
                out.append(f"{path.relative_to(root)}:{node.lineno}")
    return out


def test_every_import_inside_a_function_says_why():
    """Issue 21: an import inside a function only where it saves start-up time (or would
    otherwise make a cycle), with a one-line reason; every other import sits at the top."""
    bad = unexplained_function_imports(packages=("shm", "engine", "ingress", "rules", "bpf", "bench"))
    assert not bad, ("imports inside functions without a reason (hoist them to the module's top, "
                     "or say why on the line or the line before):\n" + "\n".join(bad))


# --- the checker itself --------------------------------------------------------------------

def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


def test_finds_a_cycle_hidden_inside_a_function(tmp_path):
    """The shape bench/ had: latency -> overload -> soak -> latency, every edge inside a
    function."""
    root = _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/latency.py": "def run():\n    from pkg import overload\n",
        "pkg/overload.py": "def main():\n    from pkg.soak import engine_memory\n",
        "pkg/soak.py": "import os\n\ndef run():\n    from pkg.latency import run_client_id_base\n",
        "pkg/other.py": "from . import latency\n",
    })
    assert cycles(import_graph(root, ("pkg",), function_level=False)) == []
    graph = import_graph(root, ("pkg",))
    assert cycles(graph) == [frozenset({"pkg.latency", "pkg.overload", "pkg.soak"})]
    assert one_cycle(graph, cycles(graph)[0]) == ["pkg.latency", "pkg.overload", "pkg.soak",
                                                  "pkg.latency"]


def test_reads_relative_dotted_and_type_checking_imports(tmp_path):
    root = _write(tmp_path, {
        "pkg/__init__.py": "from .a import X\n",
        "pkg/a.py": "import pkg.sub.b as b\nX = 1\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/b.py": ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import c\n"
                         "try:\n    from ..a import X\nexcept ImportError:\n    X = 0\n"),
        "pkg/c.py": "from pkg.sub import b\n",
    })
    graph = import_graph(root, ("pkg",), function_level=False)
    assert graph == {"pkg": {"pkg.a"}, "pkg.a": {"pkg.sub.b"}, "pkg.sub": set(),
                     "pkg.sub.b": {"pkg.a"}, "pkg.c": {"pkg.sub.b"}}
    assert cycles(graph) == [frozenset({"pkg.a", "pkg.sub.b"})]


def test_finds_an_import_inside_a_function_without_a_reason(tmp_path):
    root = _write(tmp_path, {
        "pkg/__init__.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import json\n",
        "pkg/a.py": ("import os\n\ndef f():\n    import sys\n    return sys\n\n"
                     "def g():\n    # lazy: a reason\n    import json\n    import re\n"
                     "    x = 1\n    import math\n    return x\n\n"
                     "def h():\n    from os import (path,\n                    sep)   # lazy: why\n"
                     "    import csv  # lazy: why\n"),
    })
    assert unexplained_function_imports(tmp_path, ("pkg",)) == ["pkg/a.py:4", "pkg/a.py:12"]


def main() -> int:
    for label, fl in (("module-level imports", False), ("with imports inside functions", True)):
        graph = import_graph(function_level=fl)
        found = cycles(graph)
        print(f"{label}: {len(graph)} modules, {len(found)} cycle(s)")
        if found:
            print(describe(graph, found))
    return 0


if __name__ == "__main__":
    sys.exit(main())
