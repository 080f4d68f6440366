"""The life of one peer link as an explicit state machine (after h11's ``_state.py``).

Every frame a link receives, and every outside event (connected, vouched, closed), is looked
up in one table of allowed transitions. Anything not in the table is a protocol error, so an
illegal frame in a state has exactly one error path, and the handshake can be read off the
table instead of from flags spread over the code.

::

    dialer                                        acceptor
    DIALING --connected (TLS, our certificate)--> AWAIT_HELLO  (knows the dialer by now)
    HELLO_SENT  (sent peer_hello: version, nonce)     |  peer_hello
        |  peer_welcome (certificate, signature)      v  (sends peer_welcome)
        v  (both checked)                           OPEN
      OPEN
    any state --closed--> CLOSED
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from p2pchat.peer.links import LinkView
from p2pchat.protocol.framing import LineFramer
from p2pchat.protocol.messages import (
    DirectAck,
    DirectMessage,
    Graft,
    IHave,
    MeshRooms,
    PeerError,
    PeerHello,
    PeerWelcome,
    Prune,
    RoomMessage,
    SyncBatch,
    SyncDigest,
    SyncRequest,
    SyncSummary,
)


class LinkState(enum.Enum):
    DIALING = "dialing"
    """We asked for a TCP connection; nothing sent yet."""
    HELLO_SENT = "hello_sent"
    """Dialer: ``peer_hello`` sent; the acceptor's ``peer_welcome`` (its proof) due."""
    AWAIT_HELLO = "await_hello"
    """Acceptor: connected (the dialer's certificate checked); its ``peer_hello`` due."""
    OPEN = "open"
    CLOSED = "closed"


class LinkEvent(enum.Enum):
    """Outside events; frames are their own events (their type)."""

    CONNECTED = "connected"
    CLOSED = "closed"


Trigger = LinkEvent | type

_OPEN_FRAMES = (
    RoomMessage,
    DirectMessage,
    DirectAck,
    MeshRooms,
    PeerError,
    IHave,
    Graft,
    Prune,
    SyncDigest,
    SyncSummary,
    SyncRequest,
    SyncBatch,
)

TRANSITIONS: dict[tuple[LinkState, Trigger], LinkState] = {
    (LinkState.DIALING, LinkEvent.CONNECTED): LinkState.HELLO_SENT,
    (LinkState.HELLO_SENT, PeerWelcome): LinkState.OPEN,
    (LinkState.AWAIT_HELLO, PeerHello): LinkState.OPEN,
    **{(LinkState.OPEN, frame): LinkState.OPEN for frame in _OPEN_FRAMES},
    **{(state, LinkEvent.CLOSED): LinkState.CLOSED for state in LinkState},
}
"""Every allowed (state, trigger) and the state it leads to."""


class LinkProtocolError(Exception):
    """A trigger that the link's state does not allow."""


def next_state(state: LinkState, trigger: Trigger) -> LinkState:
    """The state ``trigger`` leads to; raises LinkProtocolError if it is not allowed."""
    try:
        return TRANSITIONS[state, trigger]
    except KeyError:
        name = trigger.value if isinstance(trigger, LinkEvent) else trigger.__name__
        raise LinkProtocolError(f"{name} is not allowed in state {state.value}") from None


@dataclass(slots=True, eq=False)
class Link:
    """One connection with another peer, in any state."""

    id: int
    dialed: bool
    nonce: str
    """What the other side must prove its session for (see ``link_proof``)."""
    state: LinkState
    expect: str | None = None
    """Dialer: whom we dialed."""
    peer: str | None = None
    """Who the other side is: from its certificate (acceptor) or whom we dialed, until OPEN
    proves it; a link is in ``PeerCore.links`` by this name once OPEN."""
    peer_key: bytes | None = None
    """The other side's key, from its certificate."""
    framer: LineFramer = field(default_factory=LineFramer)
    view: LinkView = field(default_factory=LinkView)
    declared: frozenset[str] = frozenset()
    declaring: list[str] = field(default_factory=list)
    """The parts of an announcement split over several ``mesh`` frames, until the last."""
    """Rooms the other side announced; those it is an online member of count (``view.theirs``)."""
    pinned_until: float = 0.0
    established: float = 0.0
    deadline: float = float("inf")
    """By when it must be OPEN (handshake and dial timeouts)."""
    bad_frames: int = 0
    bad_signatures: int = 0

    def advance(self, trigger: Trigger) -> None:
        self.state = next_state(self.state, trigger)

    @property
    def is_open(self) -> bool:
        return self.state is LinkState.OPEN

    @property
    def is_closed(self) -> bool:
        return self.state is LinkState.CLOSED
