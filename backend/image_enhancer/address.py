"""Where the backend listens: the default address and the one parser of `HOST:PORT` and `unix:PATH`.

Standard library only: the installers load this file by path before the project's environment exists;
everything else reaches it through `image_enhancer.wire`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

DEFAULT_ADDRESS = "127.0.0.1:50051"


class AddressError(ValueError):
    """An address that is neither HOST:PORT nor unix:PATH."""


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
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise AddressError(f"address {text!r} must be HOST:PORT or unix:PATH (e.g. {DEFAULT_ADDRESS})")
    return Address(host, int(port))
