"""Admin requests validated completely before anything is applied or logged.

``parse_request`` turns one frame into a dict or raises AdminError: at most
MAX_REQUEST_BYTES of UTF-8, JSON nesting at most MAX_DEPTH deep (checked on the raw bytes
before json.loads, so 100k ``[`` cannot recurse), no duplicate keys, no NaN/Infinity, a
top-level object with a string ``cmd``. ``check_args`` then applies the command's argument
schema: unknown keys refused, exact types (an int is never a bool or a float), bounded
sizes. Checks that need the engine (a list or state that exists, a key in its field's
range, a file inside the allowed directories: ``allowed_file``) are the commands' own, and
also run before ``admin_state.log_change``.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Callable

import numpy as np

MAX_REQUEST_BYTES = 1 << 20
MAX_DEPTH = 4                      # {"values": [..]} is depth 2; nothing needs more
MAX_NAME_CHARS = 64
MAX_PATH_CHARS = 4096
MAX_FILES = 64
MAX_VALUE_CHARS = 256
MAX_MESSAGE_CHARS = 2000           # an error reply's message is cut here

_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_OPEN = np.zeros(256, np.int8)
_OPEN[[ord("["), ord("{")]] = 1
_OPEN[[ord("]"), ord("}")]] = -1


class AdminError(Exception):
    """A refused admin request: ``code`` is stable (docs/DEPLOY.md), the message short."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def json_depth(raw: bytes) -> int:
    """The deepest bracket nesting of a JSON text, strings skipped (no recursion)."""
    skeleton = np.frombuffer(_STRINGS.sub(b'""', raw), np.uint8)
    if skeleton.size == 0:
        return 0
    return int(np.cumsum(_OPEN[skeleton], dtype=np.int64).max(initial=0))


def _no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise AdminError("BAD_REQUEST", f"duplicate key {k[:MAX_NAME_CHARS]!r}")
        out[k] = v
    return out


def _no_constant(name):
    raise AdminError("BAD_REQUEST", f"{name} is not a JSON number")


def parse_request(raw: bytes) -> dict:
    if len(raw) > MAX_REQUEST_BYTES:
        raise AdminError("BAD_REQUEST", f"request of {len(raw)} bytes over {MAX_REQUEST_BYTES}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise AdminError("BAD_REQUEST", f"not UTF-8 (byte {e.start})") from None
    depth = json_depth(raw)
    if depth > MAX_DEPTH:
        raise AdminError("BAD_REQUEST", f"JSON nested {depth} deep, at most {MAX_DEPTH}")
    try:
        req = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except ValueError as e:
        raise AdminError("BAD_REQUEST", f"invalid JSON: {str(e)[:200]}") from None
    if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
        raise AdminError("BAD_REQUEST", 'expected a JSON object with a string "cmd"')
    return req


# --- argument schemas: key -> (check, required) ----------------------------------------------

Check = Callable[[str, Any], Any]


def _bad(key: str, want: str, v) -> AdminError:
    return AdminError("BAD_ARGUMENT", f"{key}: must be {want}, got {type(v).__name__}")


def string(max_chars: int) -> Check:
    def check(key, v):
        if not isinstance(v, str):
            raise _bad(key, "a string", v)
        if not 0 < len(v) <= max_chars or not v.isprintable():
            raise AdminError("BAD_ARGUMENT", f"{key}: 1-{max_chars} printable characters")
        return v
    return check


def boolean(key, v):
    if not isinstance(v, bool):
        raise _bad(key, "true or false", v)
    return v


def one_of(*choices: str) -> Check:
    def check(key, v):
        if not isinstance(v, str) or v not in choices:
            raise AdminError("BAD_ARGUMENT", f"{key}: one of {', '.join(choices)}")
        return v
    return check


def integer(lo: int, hi: int) -> Check:
    """An exact integer in [lo, hi] (never a bool or a float)."""
    def check(key, v):
        if isinstance(v, bool) or not isinstance(v, int):
            raise _bad(key, "an integer", v)
        if not lo <= v <= hi:
            raise AdminError("BAD_ARGUMENT", f"{key}: must be in [{lo}, {hi}]")
        return v
    return check


def int_or_string(key, v):
    """An exact integer (never bool or float) or a string: a key or list value; the range is
    the field's, checked by the command."""
    if isinstance(v, bool) or not isinstance(v, (int, str)):
        raise _bad(key, "an integer or a string", v)
    if isinstance(v, str) and (not 0 < len(v) <= MAX_VALUE_CHARS or not _utf8(v)):
        raise AdminError("BAD_ARGUMENT", f"{key}: 1-{MAX_VALUE_CHARS} characters of valid text")
    return v


def _utf8(s: str) -> bool:
    try:
        s.encode()
        return True
    except UnicodeEncodeError:         # a lone surrogate (JSON "\ud800")
        return False


def list_of(item: Check, max_items: int) -> Check:
    def check(key, v):
        if not isinstance(v, list):
            raise _bad(key, "a list", v)
        if len(v) > max_items:
            raise AdminError("BAD_ARGUMENT", f"{key}: at most {max_items} items, got {len(v)}")
        return [item(f"{key}[{i}]", x) for i, x in enumerate(v)]
    return check


NAME = string(MAX_NAME_CHARS)
PATH = string(MAX_PATH_CHARS)
NO_ARGS: dict = {}


def check_args(req: dict, schema: dict) -> dict:
    """The request's arguments (``cmd`` excluded) checked against ``schema``."""
    args = {}
    for key in req:
        if key != "cmd" and key not in schema:
            allowed = ", ".join(sorted(schema)) or "none"
            raise AdminError("BAD_ARGUMENT", f"unknown argument {key[:MAX_NAME_CHARS]!r} for "
                                             f"{req['cmd'][:MAX_NAME_CHARS]!r} (allowed: {allowed})")
    for key, (check, required) in schema.items():
        if key in req:
            args[key] = check(key, req[key])
        elif required:
            raise AdminError("BAD_ARGUMENT", f"{key}: required")
    return args


def allowed_file(path: str, roots: list[str], what: str) -> str:
    """``path`` resolved (symlinks followed) if it lies inside one of ``roots``; else
    FILE_NOT_ALLOWED. The path is not echoed back in full."""
    if not roots:
        raise AdminError("FILE_NOT_ALLOWED", f"{what}: no directory allows files here")
    real = os.path.realpath(path)
    for root in roots:
        if os.path.commonpath([real, root]) == root:
            return real
    raise AdminError("FILE_NOT_ALLOWED", f"{what}: only files under {', '.join(roots)} may be named")
