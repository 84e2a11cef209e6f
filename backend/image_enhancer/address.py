"""Where the backend listens: the default address and the one parser of `HOST:PORT` and `unix:PATH`;
and where a client sends calls: one such address, or several backends behind one gRPC target
(`dns:///NAME:PORT`, `ipv4:A:P,B:P`, `ipv6:[A]:P,[B]:P`; gRPC's own naming syntax).

Standard library only: the installers load this file by path before the project's environment exists;
everything else reaches it through `image_enhancer.wire`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

DEFAULT_ADDRESS = "127.0.0.1:50051"


# Target schemes whose endpoints gRPC balances over (round_robin); each names its endpoints with a port.
BALANCED_SCHEMES = ("dns", "ipv4", "ipv6")


class AddressError(ValueError):
    """An address that is neither HOST:PORT nor unix:PATH (nor, for clients, a gRPC target list)."""


@dataclass(frozen=True)
class Address:
    host: str  # "" for a Unix socket
    port: int | None  # None for a Unix socket; 0 asks the system for a free port
    unix_path: str | None = None

    @property
    def is_local(self) -> bool:
        """True for Unix sockets and loopback hosts (127.0.0.0/8, ::1, localhost)."""
        if self.unix_path is not None or self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:  # a host name: it may resolve to any interface
            return False


def parse_address(text: str) -> Address:
    """`host:port`, `[v6]:port` or `unix:PATH` (also `unix:///abs/path`); AddressError otherwise."""
    if text.startswith("unix:"):
        path = text[len("unix:") :].removeprefix("//")
        if not path:
            raise AddressError(f"address {text!r} names no socket file; expected unix:PATH")
        return Address("", None, path)
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not _plausible_host(host) or not port.isdigit() or int(port) > 65535:
        raise AddressError(f"address {text!r} must be HOST:PORT or unix:PATH (e.g. {DEFAULT_ADDRESS})")
    return Address(host, int(port))


def _plausible_host(host: str) -> bool:
    """A name or an IP literal: no separators of other syntaxes (a gRPC target list, a URL)."""
    if not host or any(c in host for c in ",/ \t"):
        return False
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return False
    return True


@dataclass(frozen=True)
class Target:
    """Where a client sends calls. `scheme` is "" for one plain address (HOST:PORT or unix:PATH, the
    backend's own `--address` syntax), else one of BALANCED_SCHEMES: `endpoints` are then the listed
    addresses (ipv4/ipv6) or the one name to resolve (dns), and `text` is the target as gRPC spells it."""

    text: str
    scheme: str
    endpoints: tuple[Address, ...]

    @property
    def balanced(self) -> bool:
        return self.scheme != ""


def parse_target(text: str) -> Target:
    """A client's target: `dns:///NAME:PORT` (also `dns:NAME:PORT`, or `dns://DNS-SERVER/NAME:PORT`, whose
    server only grpcio's resolver honours), `ipv4:A:P[,B:P...]`, `ipv6:[A]:P[,[B]:P...]`, or one address
    for `parse_address`. AddressError otherwise."""
    scheme, colon, rest = text.partition(":")
    if not colon or scheme not in BALANCED_SCHEMES or rest.isdigit():  # a host named "dns", say
        return Target(text, "", (parse_address(text),))
    if scheme == "dns":
        if rest.startswith("//"):
            _authority, slash, rest = rest[2:].partition("/")
            if not slash:
                rest = ""
        return Target(text, scheme, (_endpoint(text, rest),))
    endpoints = tuple(_endpoint(text, item) for item in rest.split(","))
    version = 4 if scheme == "ipv4" else 6
    for endpoint in endpoints:
        try:
            literal = ipaddress.ip_address(endpoint.host)
        except ValueError:
            literal = None
        if literal is None or literal.version != version:
            raise AddressError(f"target {text!r}: {endpoint.host!r} is not an IPv{version} address")
    return Target(text, scheme, endpoints)


def _endpoint(target: str, text: str) -> Address:
    try:
        address = parse_address(text)
    except AddressError:
        address = None
    if address is None or address.unix_path is not None:
        raise AddressError(
            f"target {target!r} must be dns:///NAME:PORT, ipv4:A:PORT,B:PORT or ipv6:[A]:PORT,[B]:PORT "
            f"(or one HOST:PORT or unix:PATH)"
        )
    return address
