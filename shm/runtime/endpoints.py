"""Bind addresses parsed the way libzmq (and an HTTP server) will read them, so a config check
judges what will actually be bound, never a prefix of the string.

ZeroMQ endpoints: ``ipc://PATH``, ``inproc://NAME``, ``tcp://[SOURCE;]HOST:PORT`` where HOST
is an IPv4 address (any form getaddrinfo takes: ``0``, ``127.1``), ``[IPv6]``, ``*``, a
network interface name (libzmq tries those first when binding) or a host name, and PORT a
number or ``*``. libzmq splits ``SOURCE;DEST`` at the last ``;`` and binds DEST, so
``tcp://127.0.0.1:1;0.0.0.0:5699`` binds every interface: a bind endpoint with ``;`` is refused.

Metrics addresses are ``HOST:PORT`` (``[IPv6]:PORT`` for IPv6).
"""
from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Callable

Resolver = Callable[[str], list[str]]


class EndpointError(ValueError):
    """An address that cannot be parsed, or is not allowed where it is used."""


@dataclass(frozen=True)
class Endpoint:
    transport: str                 # tcp | ipc | inproc | http
    host: str = ""                 # as written, without [] (tcp/http)
    port: int | None = None        # None: '*' (an ephemeral port)
    path: str = ""                 # ipc path / inproc name
    kind: str = ""                 # ip | wildcard | interface | name (tcp/http)
    addresses: tuple[str, ...] = ()   # what HOST resolves to (tcp/http)

    @property
    def local_only(self) -> bool:
        """True only when nothing outside this machine can reach what gets bound."""
        if self.transport in ("ipc", "inproc"):
            return True
        if self.kind in ("wildcard", "interface") or not self.addresses:
            return False
        return all(_is_loopback(a) for a in self.addresses)


def _is_loopback(addr: str) -> bool:
    ip = ipaddress.ip_address(addr.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def resolve(host: str) -> list[str]:
    """Every address ``host`` resolves to (getaddrinfo, as libzmq and http.server do)."""
    try:
        infos = socket.getaddrinfo(host, None, socket.AF_UNSPEC, socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise EndpointError(f"host {host!r} does not resolve: {e}") from None
    return sorted({i[4][0] for i in infos})


def _interfaces() -> set[str]:
    try:
        return {name for _, name in socket.if_nameindex()}
    except OSError:
        return set()


def _host_port(text: str, what: str, allow_star_port: bool) -> tuple[str, int | None, bool]:
    """'HOST:PORT' or '[V6]:PORT' -> (host, port or None for '*', bracketed)."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1:end + 2] != ":":
            raise EndpointError(f"{what}: expected [IPv6]:PORT, got {text!r}")
        host, port_s, bracketed = text[1:end], text[end + 2:], True
    else:
        host, sep, port_s = text.rpartition(":")
        if not sep:
            raise EndpointError(f"{what}: expected HOST:PORT, got {text!r}")
        if ":" in host:
            raise EndpointError(f"{what}: an IPv6 address goes in brackets ([::1]:PORT), got {text!r}")
        bracketed = False
    if not host:
        raise EndpointError(f"{what}: no host in {text!r}")
    if port_s == "*" and allow_star_port:
        return host, None, bracketed
    if not port_s.isascii() or not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
        raise EndpointError(f"{what}: port must be a number in [0, 65535]"
                            f"{' or *' if allow_star_port else ''}, got {port_s!r}")
    return host, int(port_s), bracketed


def _judge_host(host: str, bracketed: bool, what: str, interfaces: bool, resolver: Resolver) -> tuple[str, tuple]:
    if bracketed:
        try:
            ip = ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            raise EndpointError(f"{what}: [{host}] is not an IPv6 address") from None
        return ("wildcard" if ip.is_unspecified else "ip"), (str(ip),)
    if host == "*":
        return "wildcard", ()
    if interfaces and host in _interfaces():     # libzmq binds an interface name first
        return "interface", ()
    try:
        ip = ipaddress.IPv4Address(host)
        return ("wildcard" if ip.is_unspecified else "ip"), (str(ip),)
    except ValueError:
        pass
    try:
        addrs = tuple(resolver(host))
    except EndpointError as e:
        raise EndpointError(f"{what}: {e}") from None
    if any(ipaddress.ip_address(a.split("%", 1)[0]).is_unspecified for a in addrs):
        return "wildcard", addrs
    return "name", addrs


def parse_zmq_bind(text: str, what: str = "bind", resolver: Resolver = resolve) -> Endpoint:
    """A ZeroMQ endpoint to bind. Raises EndpointError naming ``what`` and the problem."""
    if not isinstance(text, str) or not text or not text.isprintable():
        raise EndpointError(f"{what}: must be a printable endpoint string, got {text!r}")
    transport, sep, rest = text.partition("://")
    if not sep or transport not in ("tcp", "ipc", "inproc"):
        raise EndpointError(f"{what}: transport must be tcp://, ipc:// or inproc://, got {text!r}")
    if not rest:
        raise EndpointError(f"{what}: nothing after {transport}:// in {text!r}")
    if transport in ("ipc", "inproc"):
        return Endpoint(transport, path=rest)
    if ";" in rest:
        raise EndpointError(f"{what}: {text!r} has a 'source;' part: libzmq would bind what "
                            f"follows the ';' (here {rest.rsplit(';', 1)[1]!r}); give one address")
    host, port, bracketed = _host_port(rest, what, allow_star_port=True)
    kind, addrs = _judge_host(host, bracketed, what, True, resolver)
    return Endpoint("tcp", host=host, port=port, kind=kind, addresses=addrs)


def parse_host_port(text: str, what: str = "bind", resolver: Resolver = resolve) -> Endpoint:
    """An HTTP listen address HOST:PORT or [IPv6]:PORT (http.server resolves HOST)."""
    if not isinstance(text, str) or not text or not text.isprintable() or "/" in text or ";" in text:
        raise EndpointError(f"{what}: must be HOST:PORT, got {text!r}")
    host, port, bracketed = _host_port(text, what, allow_star_port=False)
    if host == "*":
        raise EndpointError(f"{what}: '*' is not a host here; use 0.0.0.0 to listen everywhere")
    kind, addrs = _judge_host(host, bracketed, what, False, resolver)
    return Endpoint("http", host=host, port=port, kind=kind, addresses=addrs)
