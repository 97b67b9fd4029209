"""README.md and docs/*.md name only what exists: every repository path they mention, every
test they cite by ``file::name``, every ``risk-engine`` subcommand they show."""
from __future__ import annotations

import glob
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# a path into one of the repository's top-level folders, not part of a longer path or a URL
_PATH = re.compile(r"(?<![\w./~$-])((?:engine|ingress|shm|rules|bpf|bench|scripts|tests|docs|deploy|\.ci)"
                   r"/(?:[\w/*.{}-]*[\w*/])?)(?:::(\w+))?")
_UP = re.compile(r"(?<![\w.])\.\./([\w./-]*\w)")     # ../x: from a top-level folder, e.g. in a config
_ABSOLUTE = re.compile(r"(?<![\w.])/work/[\w./-]+")     # this machine's checkouts, not the repository
_BARE_MD = re.compile(r"(?<![\w./-])([\w-]+\.md)\b")          # README.md, DURABILITY.md
_LINK = re.compile(r"\]\(([^)#:\s]+)(?:#[^)]*)?\)")                   # a relative markdown link
_CODE = re.compile(r"```.*?```|`[^`\n]+`", re.S)
_SUBCOMMAND = re.compile(r"(?<![\w.-])risk-engine ([a-z][a-z-]*)\b")


def _refs(text: str) -> list[tuple[str, str | None]]:
    """(path, test name or None) for each path-like reference: one whose last part names a
    file (an extension or a glob) or a folder (a trailing slash). Words like engine/echo
    (a ratio) are not paths."""
    out = []
    for m in _PATH.finditer(text):
        path, name = m.group(1).rstrip("*"), m.group(2)     # not markdown's closing **
        last = path.rstrip("/").rsplit("/", 1)[-1]
        if "__pycache__" in path:                     # made at run time, not in a checkout
            continue
        if path.endswith("/") or "." in last or "*" in last:
            out.append((path.rstrip("."), name))
    return out


def _exists(path: str) -> bool:
    if "*" in path or "{" in path:
        pattern = re.sub(r"\{[^}]*\}", "*", path)
        return bool(glob.glob(str(ROOT / pattern)))
    return (ROOT / path).exists()


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_path_a_doc_names_is_in_the_repository(doc: Path):
    text = doc.read_text()
    missing = sorted({p for p, _ in _refs(text) if not _exists(p)}
                     | {m for m in _LINK.findall(text) if not (doc.parent / m).exists()}
                     | {f"../{m}" for m in _UP.findall(text) if not (ROOT / m).exists()}
                     | set(_ABSOLUTE.findall(text))
                     | {m for m in _BARE_MD.findall(text)
                        if not (ROOT / m).exists() and not (ROOT / "docs" / m).exists()})
    assert not missing, f"doc={doc.relative_to(ROOT)} names paths not in the repository: {missing}"
    missing_tests = sorted({f"{p}::{n}" for p, n in _refs(text)
                            if n and _exists(p) and not (ROOT / p).is_dir()
                            and not re.search(rf"\bdef {n}\b", (ROOT / p).read_text())})
    assert not missing_tests, f"doc={doc.relative_to(ROOT)} cites tests that do not exist: {missing_tests}"


def test_the_path_finder_sees_references_and_skips_ratios():
    refs = _refs("see `engine/journal.py:39`, docs/BENCH.md, tests/ingress/test_codec_*.py, "
                 "bench/, tests/x.py::test_y and **engine/echo** 0.68x; /run/risk-engine/re.sock")
    assert refs == [("engine/journal.py", None), ("docs/BENCH.md", None),
                    ("tests/ingress/test_codec_*.py", None), ("bench/", None), ("tests/x.py", "test_y")]


def _subcommands() -> set[str]:
    out = subprocess.run([sys.executable, "-m", "engine.cli", "--help"], cwd=ROOT, check=True,
                         capture_output=True, text=True, timeout=120).stdout
    listed = re.search(r"\{([a-z,-]+)\}", out)        # argparse's "{serve,status,...}" form
    if listed:
        return set(listed.group(1).split(","))
    # the metavar form: one "    name   help" line per subcommand under "positional arguments"
    return set(re.findall(r"^ {4}([a-z][a-z-]*)(?:\s|$)", out, re.M))


def test_every_risk_engine_subcommand_a_doc_shows_exists():
    known = _subcommands()
    assert {"serve", "check", "explain"} <= known, f"could not read the subcommands from --help: {known}"
    unknown = {}
    for doc in DOCS:
        for code in _CODE.findall(doc.read_text()):
            code = "\n".join(ln for ln in code.splitlines() if not ln.lstrip().startswith("#"))
            for cmd in _SUBCOMMAND.findall(code):
                if cmd not in known:
                    unknown.setdefault(doc.name, set()).add(cmd)
    assert not unknown, f"subcommands not in `risk-engine --help`: {unknown}"


def test_the_readme_client_example_sends_a_valid_event_of_the_default_schema():
    """The README's example was run against `risk-engine serve`; this keeps its event in step
    with the bundled schema (every field, each value accepted by the client's own checks)."""
    from ingress.client import ClientCodec, load_schema
    code = re.search(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    assert len(code.strip().splitlines()) <= 10, "the README promises a 10-line example"
    setup = code[:code.index("with Client(")]          # the imports and the event, no socket
    ns: dict = {}
    exec(compile(setup, "README.md", "exec"), ns)
    schema = load_schema(None)
    assert set(ns["event"]) == set(schema.dtype.names)
    recs = ClientCodec(schema, "binary", None).records([ns["event"]])
    assert len(recs) == 1 and recs["account_id"][0] == ns["event"]["account_id"]
