"""Each message sent is shown at once where it goes, with its state; a slow or failed one holds
back nothing, and a key sends the failed ones again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
from textual.pilot import Pilot

from p2pchat.peer.directs import DirectSent
from p2pchat.peer.events import CommandError, DirectText, PeerEvent
from p2pchat.peer.node import PeerConfig, PeerNode
from p2pchat.registry.server import RegistryServer
from p2pchat.ui.tui import AutoLogin, ChatApp
from p2pchat.ui.tui import app as app_module
from tests.ui.harness import (
    PASSWORD,
    Peer,
    PeerFactory,
    alice_with_bob,
    auto,
    burst,
    logged_in,
    make_app,
    running,
    settle,
    write,
)


class GatedNode(PeerNode):
    """A peer whose direct messages wait for the test to let them go, or fail when told."""

    def __init__(self, config: PeerConfig, on_event: Callable[[PeerEvent], None]) -> None:
        super().__init__(config, on_event)
        self.gates: dict[str, asyncio.Event] = {}
        self.refuse: set[str] = set()

    async def send_direct(self, username: str, text: str) -> DirectSent:
        gate = self.gates.get(text)
        if gate is not None:
            await gate.wait()
        if text in self.refuse:
            raise CommandError(f"{username} did not acknowledge the message")
        return await super().send_direct(username, text)


def got(bob: Peer) -> list[str]:
    return [e.text for e in bob.events if isinstance(e, DirectText) and e.sender == "alice"]


@asynccontextmanager
async def alice_talking_to_bob(
    registry: RegistryServer, peer: PeerFactory
) -> AsyncIterator[tuple[Peer, ChatApp, Pilot[int], GatedNode]]:
    bob = await peer("bob", room="lobby", create=True)
    app = make_app(registry, autologin=auto("alice"), node_factory=GatedNode)
    async with running(app) as pilot:
        await logged_in(pilot, app)
        await write(pilot, "/msg bob hello")
        await bob.until(lambda: got(bob) == ["hello"])
        await pilot.press("alt+3")  # @bob: its number came with it
        assert app.convs.current == "@bob"
        assert isinstance(app.node, GatedNode)
        yield bob, app, pilot, app.node


async def test_a_slow_message_holds_back_nothing(
    registry: RegistryServer, peer: PeerFactory
) -> None:
    async with alice_talking_to_bob(registry, peer) as (bob, app, pilot, node):
        node.gates["slow one"] = gate = asyncio.Event()
        await write(pilot, "slow one")
        await write(pilot, "quick one")
        await bob.until(lambda: "quick one" in got(bob))  # not waiting for the slow one
        await settle(pilot, lambda: "12:00 alice: quick one ✓✓" in app.lines())
        lines = app.lines()
        # both shown at once, in the order typed, each with its own state
        assert lines.index("12:00 alice: slow one …") < lines.index("12:00 alice: quick one ✓✓")
        gate.set()
        await settle(pilot, lambda: "12:00 alice: slow one ✓✓" in app.lines())
        assert got(bob) == ["hello", "quick one", "slow one"]


async def test_a_failed_message_stays_and_goes_again_with_a_key(
    registry: RegistryServer, peer: PeerFactory
) -> None:
    async with alice_talking_to_bob(registry, peer) as (bob, app, pilot, node):
        node.refuse.add("are you there?")
        await write(pilot, "are you there?")
        failed = (
            "12:00 alice: are you there? ✗ bob did not acknowledge the message; ^R sends it again"
        )
        await settle(pilot, lambda: failed in app.lines())
        await write(pilot, "after it")
        await bob.until(lambda: "after it" in got(bob))
        node.refuse.clear()
        await pilot.press("ctrl+r")
        await bob.until(lambda: "are you there?" in got(bob))
        await settle(pilot, lambda: "12:00 alice: are you there? ✓✓" in app.lines())
        lines = app.lines()
        assert lines.index("12:00 alice: are you there? ✓✓") < lines.index(
            "12:00 alice: after it ✓✓"
        )  # sent again in its place, not copied below


async def test_room_messages_show_when_handed_to_the_mesh(
    registry: RegistryServer, peer: PeerFactory
) -> None:
    bob = await peer("bob", room="lobby", create=True)
    await bob.node.logout()
    app = make_app(registry, autologin=auto("alice"))
    async with running(app) as pilot:
        await logged_in(pilot, app)
        await write(pilot, "anyone?")  # alone in the room
        await settle(pilot, lambda: "12:00 alice: anyone? ✓ (nobody linked now)" in app.lines())


async def test_messages_on_their_way_are_bounded(
    registry: RegistryServer, peer: PeerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app_module, "MAX_SENDING", 3)
    async with alice_talking_to_bob(registry, peer) as (bob, app, pilot, node):
        gate = asyncio.Event()
        for i in range(4):
            node.gates[f"held {i}"] = gate
        burst(app, "".join(f"held {i}\n" for i in range(4)))
        too_many = "12:00 alice: held 3 ✗ too many messages still on their way; ^R sends it again"
        await settle(pilot, lambda: too_many in app.lines())
        assert app.lines()[-4:-1] == [f"12:00 alice: held {i} …" for i in range(3)]
        gate.set()
        await settle(pilot, lambda: "12:00 alice: held 2 ✓✓" in app.lines())
        await pilot.press("ctrl+r")  # room again: it goes
        await bob.until(lambda: "held 3" in got(bob))


async def test_a_message_to_someone_offline_is_queued_then_shown_delivered_in_place(
    registry: RegistryServer, peer: PeerFactory
) -> None:
    async with alice_talking_to_bob(registry, peer) as (bob, app, pilot, node):
        await bob.node.logout()
        await write(pilot, "see you later")
        queued = "12:00 alice: see you later ⧗ queued: they are offline"
        await settle(pilot, lambda: queued in app.lines())
        await write(pilot, "and this")
        await settle(
            pilot, lambda: "12:00 alice: and this ⧗ queued: they are offline" in app.lines()
        )
        await bob.node.login("bob", PASSWORD)  # lobby's mesh links them: both go at once
        await bob.until(lambda: got(bob) == ["hello", "see you later", "and this"])
        await settle(pilot, lambda: "12:00 alice: see you later ✓✓" in app.lines())
        await settle(pilot, lambda: "12:00 alice: and this ✓✓" in app.lines())
        assert node.outbox() == []


async def test_a_room_shows_its_history_when_it_opens_also_after_a_restart(
    registry: RegistryServer, peer: PeerFactory
) -> None:
    async with alice_with_bob(registry, peer) as (bob, app, pilot):
        for k in range(3):
            await bob.node.say("lobby", f"before the restart {k}")
        await settle(pilot, lambda: "12:00 bob: before the restart 2" in app.lines("lobby"))
    again = make_app(registry, autologin=AutoLogin("alice", PASSWORD, register=False, room=None))
    async with running(again) as pilot:
        await logged_in(pilot, again)
        lines = again.lines("lobby")
        kept = [f"12:00 bob: before the restart {k}" for k in range(3)]
        assert [line for line in lines if "before the restart" in line] == kept  # once each
        await write(pilot, "/history lobby 2")
        await settle(pilot, lambda: "-- the last 2 messages of lobby" in again.lines("lobby"))
