"""What the peer core asks its shell to do. Plain records: the shell only carries them out."""

from __future__ import annotations

from dataclasses import dataclass

from p2pchat.peer.events import CommandError, PeerEvent


@dataclass(frozen=True, slots=True)
class Dial:
    """Open a TCP connection to ``host:port`` for link ``link``; report ``link_connected``
    or ``link_failed``."""

    link: int
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class SendLink:
    """Write ``data`` (whole frames) on link ``link``."""

    link: int
    data: bytes


@dataclass(frozen=True, slots=True)
class CloseLink:
    """Close link ``link``: after flushing what was queued, or at once when ``abort``."""

    link: int
    abort: bool = False


@dataclass(frozen=True, slots=True)
class ConnectRegistry:
    """Open the registry connection; report ``registry_connected`` or ``registry_failed``.

    ``identity``: the user whose certificate to show in TLS (to ``resume``), if any."""

    host: str
    port: int
    identity: str | None = None


@dataclass(frozen=True, slots=True)
class SaveCertificate:
    """Keep the registry's new certificate for ``username`` (DER) beside its key, and show it
    from now on (in links we dial, and to the registry)."""

    username: str
    der: bytes


@dataclass(frozen=True, slots=True)
class SendRegistry:
    data: bytes


@dataclass(frozen=True, slots=True)
class CloseRegistry:
    abort: bool = False


@dataclass(frozen=True, slots=True)
class SendDatagram:
    """A UDP datagram (the heartbeat) to ``host:port``."""

    host: str
    port: int
    data: bytes


@dataclass(frozen=True, slots=True)
class SaveBlocked:
    """Keep the list of users ``username`` blocks (it is given back at the next login)."""

    username: str
    blocked: list[str]


@dataclass(frozen=True, slots=True)
class Show:
    """An event for the user interface."""

    event: PeerEvent


@dataclass(frozen=True, slots=True)
class Done:
    """Command ``command`` finished: with ``value``, or failed with ``error``."""

    command: int
    value: object = None
    error: CommandError | None = None


Action = (
    Dial
    | SendLink
    | CloseLink
    | ConnectRegistry
    | SendRegistry
    | CloseRegistry
    | SendDatagram
    | SaveCertificate
    | SaveBlocked
    | Show
    | Done
)
