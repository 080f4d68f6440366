"""What a peer node tells its user interface. UIs consume these and never touch sockets."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RoomText:
    """A room message to show: ``Message from {sender} at {room}: {text}``."""

    room: str
    sender: str
    text: str
    ts: float
    mine: bool = False
    history: bool = False
    """It came by catch-up, or from the local history: said while we were away."""
    late: bool = False
    """It arrived after later messages of its sender were shown."""


@dataclass(frozen=True, slots=True)
class DirectText:
    """A direct message to show: ``Message from {sender}: {text}``.

    ``peer`` is the other side of the conversation (the recipient when ``mine``).
    """

    sender: str
    text: str
    ts: float
    peer: str
    mine: bool = False


@dataclass(frozen=True, slots=True)
class DirectUpdate:
    """One of our direct messages changed state after ``/msg`` had answered: ``delivered``
    (it was queued, or its acknowledgement came late) or ``failed`` (``reason`` says why;
    ``/resend`` queues it again, same id)."""

    id: str
    peer: str
    text: str
    ts: float
    state: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Notice:
    """Something nobody asked for but the user should know: joins, links, the registry."""

    text: str
    room: str | None = None


@dataclass(frozen=True, slots=True)
class RoomsChanged:
    """Room membership or presence changed; a UI may refresh its room and member lists."""

    room: str | None = None


@dataclass(frozen=True, slots=True)
class Status:
    """The status line: registry reachability, login, link count, last heartbeat."""

    registry: bool
    username: str | None
    links: int
    last_heartbeat: float | None = None


PeerEvent = RoomText | DirectText | DirectUpdate | Notice | RoomsChanged | Status


class CommandError(Exception):
    """A user command failed; the message is one sentence for people."""
