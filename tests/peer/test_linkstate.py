"""The link state machine's table: the handshake is the only way to OPEN."""

from __future__ import annotations

import pytest

from p2pchat.peer.linkstate import (
    TRANSITIONS,
    LinkEvent,
    LinkProtocolError,
    LinkState,
    next_state,
)
from p2pchat.protocol.messages import (
    DirectAck,
    DirectMessage,
    MeshRooms,
    PeerError,
    PeerHello,
    PeerWelcome,
    RoomMessage,
)

FRAMES: list[type] = [
    PeerHello,
    PeerWelcome,
    MeshRooms,
    DirectMessage,
    DirectAck,
    RoomMessage,
    PeerError,
]
TRIGGERS: list[LinkEvent | type] = [*LinkEvent, *FRAMES]


def test_the_dialer_and_the_acceptor_each_reach_open_by_the_handshake_only() -> None:
    dialer = LinkState.DIALING
    for trigger in (LinkEvent.CONNECTED, PeerWelcome):
        dialer = next_state(dialer, trigger)
    acceptor = LinkState.AWAIT_HELLO
    for trigger in (PeerHello,):
        acceptor = next_state(acceptor, trigger)
    assert dialer is acceptor is LinkState.OPEN


@pytest.mark.parametrize("state", list(LinkState))
@pytest.mark.parametrize("trigger", TRIGGERS, ids=lambda t: getattr(t, "__name__", str(t)))
def test_every_trigger_outside_the_table_is_one_clear_error(
    state: LinkState, trigger: LinkEvent | type
) -> None:
    if (state, trigger) in TRANSITIONS:
        assert isinstance(next_state(state, trigger), LinkState)
        return
    with pytest.raises(LinkProtocolError, match=f"not allowed in state {state.value}"):
        next_state(state, trigger)


def test_chat_frames_are_allowed_only_on_open_links() -> None:
    chat = [MeshRooms, DirectMessage, DirectAck, RoomMessage]
    for state in LinkState:
        for frame in chat:
            assert ((state, frame) in TRANSITIONS) == (state is LinkState.OPEN)


def test_any_state_can_close_and_nothing_leaves_closed_but_closing_again() -> None:
    for state in LinkState:
        assert next_state(state, LinkEvent.CLOSED) is LinkState.CLOSED
    assert [t for (s, t) in TRANSITIONS if s is LinkState.CLOSED] == [LinkEvent.CLOSED]
