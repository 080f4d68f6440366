"""Registry addresses as people type them, and the default ports.

Below both the command line and the user interfaces, so each can read an address the same
way without importing the other.
"""

from __future__ import annotations

from p2pchat.protocol.messages import valid_host

DEFAULT_TCP_PORT = 15600
DEFAULT_UDP_PORT = 15500


class AddressError(ValueError):
    """A host or port that cannot be used; the message is one sentence for people."""


def parse_port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise AddressError(f"not a port number: {text!r}") from None
    if not 0 <= value < 65536:
        raise AddressError("ports are 0-65535")
    return value


def parse_address(text: str, default_port: int = DEFAULT_TCP_PORT) -> tuple[str, int]:
    """``HOST``, ``HOST:PORT`` or ``[V6]:PORT``; an empty host means 127.0.0.1."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":") or str(default_port)
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, str(default_port)
    host = host or "127.0.0.1"
    if not valid_host(host):
        raise AddressError(f"not a host name or address: {host!r}")
    return host, parse_port(port)


def format_address(host: str, port: int) -> str:
    """The inverse of ``parse_address``: IPv6 literals in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
