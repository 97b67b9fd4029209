"""The cluster's ruleset in the control plane (docs/CLUSTER.md, "Control plane"): the value of
the control key ``ruleset`` and the rule files in the JetStream object store ``risk_engine_rules``.

    ruleset   {"label": "payments@7+...", "hash": H, "files": [{"name", "sha256", "size",
               "object"}, ...], "by": NODE, "time_ns": T}

Each file is one object named ``rf.<sha256 of its bytes>`` (content-addressed: writing the same
file twice writes the same object). ``name`` is the file's base name (the compiler names rule
locations and the kernel's cache key by it, so every node compiles the same kernel), ``hash``
the SHA-256 of the canonical JSON of ``[[name, sha256], ...]`` in load order: a ruleset's
identity, the same on every node, computed from what a node serves as from the value.

Whoever can write to the NATS servers can write the key and the objects, so a node checks the
value completely (``check_value``: keys, types, names, sizes, the hash recomputed) and every
object it fetches (``fetch_files``: present, its size, nats' own digest, the SHA-256 the value
names, UTF-8) before anything reaches the compiler; the compiler then reads the text as the
project's rule language only (YAML's safe loader, the AST checks of rules/), never code.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
from dataclasses import dataclass

import nats.errors
import nats.js.errors as jserr

from engine.admin_request import MAX_FILES
from engine.cluster.jsopen import open_object_store
from rules.loader import MAX_RULE_FILE_BYTES

KEY = "ruleset"
BUCKET = "risk_engine_rules"
MAX_LABEL_CHARS = 1024
GET_TIMEOUT_S = 30.0             # nats-py's object get waits on its chunks without a bound
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_HEX = re.compile(r"[0-9a-f]{64}")
_KEYS = {"label", "hash", "files", "by", "time_ns"}
_FILE_KEYS = {"name", "sha256", "size", "object"}


class RulesetObjectError(RuntimeError):
    """A rule file object is missing, corrupt or not the one the value names."""


@dataclass(frozen=True)
class RuleFileRef:
    name: str
    sha256: str
    size: int
    object: str


@dataclass(frozen=True)
class RulesetValue:
    label: str
    hash: str
    files: tuple[RuleFileRef, ...]
    by: str
    time_ns: int


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def object_name(sha256: str) -> str:
    return f"rf.{sha256}"


def content_hash(pairs) -> str:
    """The ruleset's identity: SHA-256 of [[base name, sha256 of the bytes], ...] in load order."""
    return hashlib.sha256(json.dumps([[n, s] for n, s in pairs], separators=(",", ":")).encode()).hexdigest()


def spec_hash(spec: dict) -> str:
    """The content hash of a generation spec (engine.reload): its files' base names with the
    SHA-256 of the bytes compiled (``sha256`` once published, ``texts`` before)."""
    shas = spec.get("sha256") or [sha256_text(t) for t in spec.get("texts", ())]
    return content_hash(zip((os.path.basename(f) for f in spec["origin_files"]), shas))


def make_value(label: str, files) -> dict:
    """The value for (base name, text) pairs; the caller adds ``by`` and ``time_ns``. Raises
    ValueError when two files share a base name (a node stores them side by side)."""
    refs = []
    for name, text in files:
        if not _NAME.fullmatch(name):
            raise ValueError(f"{name[:80]!r}: a rule file's base name must be 1-128 of "
                             f"A-Z a-z 0-9 . _ - (not starting with .)")
        sha = sha256_text(text)
        refs.append({"name": name, "sha256": sha, "size": len(text.encode()), "object": object_name(sha)})
    names = [r["name"] for r in refs]
    if len(set(names)) != len(names):
        raise ValueError(f"two rule files named {next(n for n in names if names.count(n) > 1)!r}: "
                         f"the cluster's ruleset names its files by base name")
    return {"label": label, "files": refs, "hash": content_hash((r["name"], r["sha256"]) for r in refs)}


def check_value(doc) -> RulesetValue:
    """The value of the ``ruleset`` key checked completely. Raises ValueError saying why."""
    if not isinstance(doc, dict) or set(doc) - _KEYS or not {"label", "hash", "files"} <= set(doc):
        raise ValueError(f"not a ruleset value: keys {sorted(doc)[:8] if isinstance(doc, dict) else type(doc).__name__}")
    label, files = doc["label"], doc["files"]
    if not isinstance(label, str) or not 0 < len(label) <= MAX_LABEL_CHARS or not label.isprintable():
        raise ValueError(f"label: 1-{MAX_LABEL_CHARS} printable characters")
    if not isinstance(files, list) or not 0 < len(files) <= MAX_FILES:
        raise ValueError(f"files: a list of 1-{MAX_FILES} files")
    refs = []
    for i, f in enumerate(files):
        if not isinstance(f, dict) or set(f) != _FILE_KEYS:
            raise ValueError(f"files[{i}]: an object with {', '.join(sorted(_FILE_KEYS))}")
        name, sha, size, obj = f["name"], f["sha256"], f["size"], f["object"]
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError(f"files[{i}].name: not a plain file name: {str(name)[:80]!r}")
        if not isinstance(sha, str) or not _HEX.fullmatch(sha):
            raise ValueError(f"files[{i}].sha256: not a SHA-256 hex digest")
        if type(size) is not int or not 0 <= size <= MAX_RULE_FILE_BYTES:
            raise ValueError(f"files[{i}].size: an integer in [0, {MAX_RULE_FILE_BYTES}]")
        if obj != object_name(sha):
            raise ValueError(f"files[{i}].object: must be {object_name(sha)}")
        refs.append(RuleFileRef(name, sha, size, obj))
    if len({r.name for r in refs}) != len(refs):
        raise ValueError("files: two files with the same name")
    h = content_hash((r.name, r.sha256) for r in refs)
    if doc["hash"] != h:
        raise ValueError(f"hash: {str(doc['hash'])[:64]!r} is not the files' content hash {h}")
    by, t = doc.get("by", ""), doc.get("time_ns", 0)
    if not isinstance(by, str) or len(by) > 64 or type(t) is not int:
        raise ValueError("by: a node name; time_ns: an integer")
    return RulesetValue(label, h, tuple(refs), by, t)


async def open_store(js, replicas: int):
    """The rule file object store, created when missing, once its stream has a leader."""
    return await open_object_store(js, BUCKET, replicas, "risk-engine rule files", GET_TIMEOUT_S)


async def put_files(store, files, timeout_s: float = GET_TIMEOUT_S) -> None:
    """Store (base name, text) pairs as their objects (the same bytes under the same name)."""
    for _name, text in files:
        data = text.encode()
        name = object_name(hashlib.sha256(data).hexdigest())
        await asyncio.wait_for(store.put(name, data), timeout_s)


async def fetch_files(store, value: RulesetValue, timeout_s: float = GET_TIMEOUT_S) -> list[tuple[str, str]]:
    """(name, text) of every file of ``value``, each checked against the value. Raises
    RulesetObjectError naming the object and what is wrong."""
    out = []
    for r in value.files:
        bad = f"object {r.object} ({r.name})"
        try:
            info = await asyncio.wait_for(store.get_info(r.object), timeout_s)
        except jserr.NotFoundError:
            raise RulesetObjectError(f"{bad}: missing from bucket {BUCKET}") from None
        if info.size != r.size:
            raise RulesetObjectError(f"{bad}: {info.size} bytes, the ruleset value says {r.size}")
        try:
            res = await asyncio.wait_for(store.get(r.object), timeout_s)
        except jserr.DigestMismatchError:
            raise RulesetObjectError(f"{bad}: fails the object store's SHA-256 digest") from None
        except jserr.NotFoundError:
            raise RulesetObjectError(f"{bad}: missing from bucket {BUCKET}") from None
        except (asyncio.TimeoutError, nats.errors.TimeoutError):
            raise RulesetObjectError(f"{bad}: not delivered within {timeout_s:g} s") from None
        data = bytes(res.data or b"")
        if len(data) != r.size or hashlib.sha256(data).hexdigest() != r.sha256:
            raise RulesetObjectError(f"{bad}: its bytes are not the file the ruleset value names "
                                     f"(SHA-256 {hashlib.sha256(data).hexdigest()[:16]}..., size {len(data)})")
        try:
            out.append((r.name, data.decode("utf-8")))
        except UnicodeDecodeError as e:
            raise RulesetObjectError(f"{bad}: not UTF-8 (byte {e.start})") from None
    return out
