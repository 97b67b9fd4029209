"""Attach, detach and find the enforcement program on an interface: XDP (generic mode) or a
TC clsact ingress filter (direct action), through libbpf's C API (libbpf.so.1, which
Debian's bcc depends on) called with ctypes, so no pyroute2 or tc binary is needed.

XDP programs and TC filters attached this way stay attached when the process dies: a stop
detaches them, and ``remove_leftover`` at the next start removes one a crashed run left
(recognised by its program name on the interface, our XDP slot or our TC priority/handle,
and by no live process holding a descriptor of it: the engine that loaded it keeps one).
One enforcing engine per interface: a second one's start finds the first's program held
and refuses to attach (HookError), never detaching a live engine's enforcement.
"""
from __future__ import annotations

import ctypes
import errno
import os
import socket

XDP_PROG_NAME, TC_PROG_NAME = "xdp_enforce", "tc_enforce"   # the C function names
XDP_FLAGS_UPDATE_IF_NOEXIST, XDP_FLAGS_SKB_MODE = 1 << 0, 1 << 1
BPF_TC_INGRESS = 1 << 0
TC_PRIORITY, TC_HANDLE = 0xC23, 0xE23     # ours on clsact ingress; any other filter is left alone
_PROG_INFO_NAME_OFFSET, _PROG_INFO_BYTES = 64, 80   # struct bpf_prog_info: name[16] at 64


class HookError(RuntimeError):
    """Attach/detach failed; the message is one line naming interface and cause."""


class _TcHook(ctypes.Structure):
    _fields_ = [("sz", ctypes.c_size_t), ("ifindex", ctypes.c_int), ("attach_point", ctypes.c_int),
                ("parent", ctypes.c_uint32)]


class _TcOpts(ctypes.Structure):
    _fields_ = [("sz", ctypes.c_size_t), ("prog_fd", ctypes.c_int), ("flags", ctypes.c_uint32),
                ("prog_id", ctypes.c_uint32), ("handle", ctypes.c_uint32),
                ("priority", ctypes.c_uint32)]


_lib = None


def _libbpf():
    global _lib
    if _lib is None:
        _lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
    return _lib


def ifindex(ifname: str) -> int:
    try:
        return socket.if_nametoindex(ifname)
    except OSError:
        raise HookError(f"interface={ifname!r}: no such interface in this network namespace") from None


def _hook(idx: int) -> _TcHook:
    return _TcHook(ctypes.sizeof(_TcHook), idx, BPF_TC_INGRESS, 0)


def _opts(fd: int = 0) -> _TcOpts:
    return _TcOpts(ctypes.sizeof(_TcOpts), fd, 0, 0, TC_HANDLE, TC_PRIORITY)


def prog_name(prog_id: int) -> str:
    """The name of loaded program ``prog_id`` ('' if it is gone)."""
    lib = _libbpf()
    fd = lib.bpf_prog_get_fd_by_id(ctypes.c_uint32(prog_id))
    if fd < 0:
        return ""
    try:
        info = ctypes.create_string_buffer(_PROG_INFO_BYTES)
        n = ctypes.c_uint32(_PROG_INFO_BYTES)
        if lib.bpf_obj_get_info_by_fd(fd, info, ctypes.byref(n)) != 0:
            return ""
        return info.raw[_PROG_INFO_NAME_OFFSET:_PROG_INFO_NAME_OFFSET + 16].split(b"\0")[0].decode()
    finally:
        os.close(fd)


def xdp_prog_id(ifname: str) -> int:
    """Id of the XDP program on ``ifname`` (any mode), 0 if none."""
    pid = ctypes.c_uint32(0)
    rc = _libbpf().bpf_xdp_query_id(ifindex(ifname), 0, ctypes.byref(pid))
    if rc < 0 and rc != -errno.ENOENT:
        raise HookError(f"interface={ifname!r}: XDP query failed: {os.strerror(-rc)}")
    return pid.value


def tc_prog_id(ifname: str) -> int:
    """Id of the program in our TC slot (priority/handle) on ``ifname`` ingress, 0 if none."""
    o, lib = _opts(), _libbpf()
    lib.libbpf_set_print.restype = ctypes.c_void_p
    lib.libbpf_set_print.argtypes = [ctypes.c_void_p]
    old = lib.libbpf_set_print(None)     # an empty slot is the usual answer, not a warning
    try:
        rc = lib.bpf_tc_query(ctypes.byref(_hook(ifindex(ifname))), ctypes.byref(o))
    finally:
        lib.libbpf_set_print(old)
    return o.prog_id if rc == 0 else 0


def attach_xdp(ifname: str, fd: int) -> None:
    """Generic (SKB) mode, only if no XDP program is there: never replaces another one."""
    rc = _libbpf().bpf_xdp_attach(ifindex(ifname), fd, XDP_FLAGS_UPDATE_IF_NOEXIST | XDP_FLAGS_SKB_MODE, None)
    if rc < 0:
        other = xdp_prog_id(ifname) if rc == -errno.EBUSY or rc == -errno.EEXIST else 0
        why = f"another XDP program (id {other}, {prog_name(other)!r}) is attached" if other \
            else os.strerror(-rc)
        raise HookError(f"interface={ifname!r}: XDP attach failed: {why}")


def detach_xdp(ifname: str) -> None:
    rc = _libbpf().bpf_xdp_detach(ifindex(ifname), XDP_FLAGS_SKB_MODE, None)
    if rc < 0:
        raise HookError(f"interface={ifname!r}: XDP detach failed: {os.strerror(-rc)}")


def attach_tc(ifname: str, fd: int) -> bool:
    """Our filter on clsact ingress (the qdisc made if missing); True if we made the qdisc."""
    lib, hook = _libbpf(), _hook(ifindex(ifname))
    rc = lib.bpf_tc_hook_create(ctypes.byref(hook))
    if rc < 0 and rc != -errno.EEXIST:
        raise HookError(f"interface={ifname!r}: clsact qdisc failed: {os.strerror(-rc)}")
    made = rc == 0
    rc = lib.bpf_tc_attach(ctypes.byref(hook), ctypes.byref(_opts(fd)))
    if rc < 0:
        if made:
            _destroy_qdisc(ifname)
        raise HookError(f"interface={ifname!r}: TC attach failed: {os.strerror(-rc)}")
    return made


def detach_tc(ifname: str, remove_qdisc: bool) -> None:
    lib, hook = _libbpf(), _hook(ifindex(ifname))
    rc = lib.bpf_tc_detach(ctypes.byref(hook), ctypes.byref(_opts()))
    if rc < 0 and rc != -errno.ENOENT:
        raise HookError(f"interface={ifname!r}: TC detach failed: {os.strerror(-rc)}")
    if remove_qdisc:
        _destroy_qdisc(ifname)


def _destroy_qdisc(ifname: str) -> None:
    hook = _TcHook(ctypes.sizeof(_TcHook), ifindex(ifname), BPF_TC_INGRESS | (1 << 1), 0)
    _libbpf().bpf_tc_hook_destroy(ctypes.byref(hook))


def holders(prog_id: int) -> list[int]:
    """Pids of the other live processes holding a descriptor of program ``prog_id`` (their
    /proc/PID/fdinfo names it: ``prog_id:``); those this process cannot read are not seen."""
    want, me, pids = f"\nprog_id:\t{prog_id}\n", os.getpid(), []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            fds = os.listdir(f"/proc/{name}/fdinfo")
        except OSError:                     # gone, or not ours to read
            continue
        for fd in fds:
            try:
                with open(f"/proc/{name}/fdinfo/{fd}") as f:
                    if want in f.read():
                        pids.append(int(name))
                        break
            except OSError:
                continue
    return pids


def _ours_left(ifname: str, prog_id: int, name: str, what: str) -> bool:
    """Is ``prog_id`` our program (by ``name``) with no live holder? Raises HookError if a
    live process holds it: another engine enforces on ``ifname``."""
    if not prog_id or prog_name(prog_id) != name:
        return False
    pids = holders(prog_id)
    if pids:
        raise HookError(f"interface={ifname!r}: the {what} of a running engine (program id "
                        f"{prog_id}, held by pid {', '.join(map(str, pids))}) is attached: one "
                        f"enforcing engine per interface")
    return True


def remove_leftover(ifname: str) -> list[str]:
    """Detach an enforcement program a previous run left on ``ifname`` (it died without
    detaching: no process holds the program any more); returns what was removed, one line
    each. Other programs are left alone; a live engine's raises HookError."""
    removed = []
    xid = xdp_prog_id(ifname)
    if _ours_left(ifname, xid, XDP_PROG_NAME, "XDP program"):
        detach_xdp(ifname)
        removed.append(f"removed a leftover XDP program (id {xid}) from interface={ifname!r}")
    tid = tc_prog_id(ifname)
    if _ours_left(ifname, tid, TC_PROG_NAME, "TC filter"):
        detach_tc(ifname, remove_qdisc=False)
        removed.append(f"removed a leftover TC filter (id {tid}) from interface={ifname!r}")
    return removed
