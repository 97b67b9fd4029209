"""The credentials of the cluster's NATS connections (``cluster.credentials``, docs/CLUSTER.md
"Authentication"): a small JSON file ``{"user": NAME, "password": SECRET}``, the user and
password nats-py sends in its CONNECT (``nats.connect(user=, password=)``) and the servers'
``authorization`` block checks.

The file is checked completely whenever it is read (the config check, then each connect): a
regular file (not a symlink, FIFO or device), owned by the engine's user, mode 0600 or
narrower (no group/other bit: another user reading it is a user writing the control plane),
at most MAX_BYTES, UTF-8 JSON holding exactly those two keys. Errors are ConfigErrors naming
``cluster.credentials``; none quotes the file's content, so no secret reaches a log.
``auth_options(path)`` is the one place every engine-side connection gets its options from.
"""
from __future__ import annotations

import ipaddress
import json
import os
import re
import stat
from dataclasses import dataclass, field

from shm.runtime.config_types import ConfigError
from shm.runtime.securedir import write_private_file

KEY = "cluster.credentials"
MAX_BYTES = 4096
PASSWORD_CHARS = (16, 512)
_USER = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
_PASSWORD = re.compile(r"[\x21-\x7e]+")      # printable ASCII, no space: survives any config quoting


@dataclass(frozen=True)
class NatsCredentials:
    user: str
    password: str = field(repr=False)        # repr(), logs and tracebacks never show it

    def connect_options(self) -> dict:
        return {"user": self.user, "password": self.password}


def _open(path: str, key: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        if os.path.islink(path):
            raise ConfigError(key, f"{path} is a symlink: name the file itself") from None
        raise ConfigError(key, f"{path}: cannot open: {e.strerror}") from None


def _check_fd(fd: int, path: str, key: str) -> None:
    st = os.fstat(fd)
    mode = stat.S_IMODE(st.st_mode)
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(key, f"{path} is not a regular file")
    if st.st_uid != os.geteuid():
        raise ConfigError(key, f"{path} is owned by uid {st.st_uid}, not the engine's user "
                               f"(uid {os.geteuid()})")
    if mode & 0o077:
        raise ConfigError(key, f"{path} has mode {mode:04o}: group/other bits must be clear, it "
                               f"holds a secret (chmod 600 {path})")
    if st.st_size > MAX_BYTES:
        raise ConfigError(key, f"{path} is {st.st_size} bytes, over the limit of {MAX_BYTES}")


def _parse(data: bytes, path: str, key: str) -> NatsCredentials:
    shape = f'{path} must be JSON {{"user": NAME, "password": SECRET}}'
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ConfigError(key, f"{shape}: it is not UTF-8 JSON") from None
    if not isinstance(doc, dict) or set(doc) != {"user", "password"}:
        got = sorted(doc) if isinstance(doc, dict) else type(doc).__name__
        raise ConfigError(key, f"{shape} and nothing else, got {got}")
    user, password = doc["user"], doc["password"]
    if not isinstance(user, str) or not _USER.fullmatch(user):
        raise ConfigError(key, f"{path}: user must be 1-64 letters, digits or '_.@-'")
    lo, hi = PASSWORD_CHARS
    if not isinstance(password, str) or not lo <= len(password) <= hi or not _PASSWORD.fullmatch(password):
        raise ConfigError(key, f"{path}: password must be {lo}-{hi} printable ASCII characters "
                               f"without spaces")       # its value is not quoted: a secret
    return NatsCredentials(user, password)


def read_credentials(path: str, key: str = KEY) -> NatsCredentials:
    """The checked credentials in ``path`` (module doc); ConfigError naming ``key`` otherwise."""
    fd = _open(path, key)
    try:
        _check_fd(fd, path, key)
        data = os.read(fd, MAX_BYTES + 1)
    except OSError as e:
        raise ConfigError(key, f"{path}: cannot read: {e.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_BYTES:
        raise ConfigError(key, f"{path} grew over the limit of {MAX_BYTES} bytes while read")
    return _parse(data, path, key)


def auth_options(path: str | None) -> dict:
    """nats.connect keyword arguments for the credentials file ``path`` (None or "": none)."""
    return read_credentials(path).connect_options() if path else {}


def write_credentials(path, user: str, password: str) -> None:
    """A credentials file, 0600, replaced atomically: what NatsCluster hands nodes and clients."""
    write_private_file(path, json.dumps({"user": user, "password": password}).encode())


def is_loopback(host: str) -> bool:
    """``host`` (a URL's hostname) names this machine only: localhost, 127.0.0.0/8 or ::1."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False                         # a DNS name: it may resolve anywhere
