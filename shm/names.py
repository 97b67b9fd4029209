"""Every name an engine instance gives a shared-memory segment or semaphore: the one place
that spells them. A full name is

    /risk-engine.<instance>.<owner_pid>.<role>

``instance`` is the config's ``instance`` (1-16 letters/digits), ``owner_pid`` the pid of the
supervisor that created it (it owns the lifetime: it unlinks on clean shutdown), ``role`` one
of the names below. On Linux a segment shows up as ``/dev/shm/risk-engine.<instance>.<pid>.<role>``
and a posix_ipc semaphore as ``/dev/shm/sem.risk-engine.<instance>.<pid>.<role>``, so
``shm.segment.reclaim_stale`` finds both after a crash.

    role                      what                                              created by
    control                   the control block (shm.control)                   supervisor
    req<w> resp<w> fired<w>   worker w's request, response and fired rings      shm.rings
    reqbell<w>                worker w's request doorbell (a semaphore)         shm.rings
    ft_<name> fl_<name>       a feature table, list, account-state table, and   shm.featurestore
    st_<name> fs_control      the features' control array: the array's kernel
                              argument name (shm.features.featureset)
    ownership                 a cluster node's OwnershipTable                   engine.cluster.node
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

PREFIX = "risk-engine"
_INSTANCE_RE = re.compile(r"^[A-Za-z0-9]{1,16}$")
_ROLE_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_FULL_RE = re.compile(r"^/?" + re.escape(PREFIX) + r"\.([A-Za-z0-9]{1,16})\.([0-9]+)\.([A-Za-z0-9_-]{1,64})$")
_FEATURE_RE = re.compile(r"^(?:(?:ft|fl|st)_[A-Za-z0-9_]+|fs_control)$")

CONTROL = "control"


class SegmentError(OSError):
    """A segment could not be named, created, opened or checked; the message names key=value."""


def segment_name(instance: str, role: str, owner_pid: int | None = None) -> str:
    """Full POSIX name ``/risk-engine.<instance>.<owner_pid>.<role>`` (owner defaults to this pid)."""
    if not isinstance(instance, str) or not _INSTANCE_RE.match(instance):
        raise SegmentError(f"instance={instance!r}: must be 1-16 letters/digits")
    if not isinstance(role, str) or not _ROLE_RE.match(role):
        raise SegmentError(f"name={role!r}: must be 1-64 of [A-Za-z0-9_-]")
    pid = os.getpid() if owner_pid is None else int(owner_pid)
    if pid <= 0:
        raise SegmentError(f"owner_pid={owner_pid!r}: must be a positive pid")
    return f"/{PREFIX}.{instance}.{pid}.{role}"


@dataclass(frozen=True)
class NameParts:
    instance: str
    owner_pid: int
    name: str


def parse_name(full_name: str) -> NameParts | None:
    """Split a full name (with or without the leading '/'); None if it is not one of ours."""
    m = _FULL_RE.match(full_name)
    return NameParts(m.group(1), int(m.group(2)), m.group(3)) if m else None


def request_ring(w: int) -> str:
    return f"req{w}"


def response_ring(w: int) -> str:
    return f"resp{w}"


def fired_ring(w: int) -> str:
    return f"fired{w}"


def request_bell(w: int) -> str:
    return f"reqbell{w}"


def fired_ring_name(response_name: str, w: int) -> str:
    """Worker ``w``'s fired ring's full name, next to its response ring's (the plan lists the
    request, response and doorbell names per worker; this one is derived)."""
    parts = parse_name(response_name)
    if parts is None or parts.name != response_ring(w):
        raise ValueError(f"response ring name={response_name!r}: not the full name of "
                         f"role {response_ring(w)!r}")
    return segment_name(parts.instance, fired_ring(w), parts.owner_pid)


def feature_array(arg: str) -> str:
    """The role of a feature array's segment: its kernel argument name (module doc)."""
    if not isinstance(arg, str) or not _FEATURE_RE.match(arg):
        raise SegmentError(f"feature array={arg!r}: not ft_/fl_/st_<name> or fs_control")
    return arg
