"""Nothing missed, with the real programs: history after being away, direct messages that wait
(across the sender's restart), and join-then-speak scripts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.e2e.procs import LinePeer, Registry, start_peer, start_registry
from tests.e2e.test_peer_process import PW, logged_in, until_all_hear


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[Registry]:
    reg = await start_registry(tmp_path / "r.db")
    yield reg
    await reg.stop()


def shown(peer: LinePeer, prefix: str) -> list[str]:
    return [line for line in peer.lines if line.startswith(prefix)]


async def back(registry: Registry, name: str) -> LinePeer:
    """``name`` starts the program again on this machine and logs in."""
    peer = await start_peer(registry.port)
    await peer.ok(f"/login {name} {PW}")
    return peer


async def until_shown(peer: LinePeer, wanted: list[str], timeout: float = 15.0) -> None:
    """Read ``peer``'s lines until each of ``wanted`` has been printed, in any order."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not set(wanted) <= set(peer.lines):
        await peer.expect(".", max(0.01, deadline - loop.time()))


async def test_a_member_away_during_n_messages_sees_each_once_after_login(
    registry: Registry,
) -> None:
    alice = await logged_in(registry, "alice")
    bob = await logged_in(registry, "bob")
    await alice.ok("/create lobby")
    await alice.ok("/add lobby bob")
    await until_all_hear(alice, [bob])
    assert await bob.quit() == 0
    said = [f"said while bob was away {k}" for k in range(12)]
    for text in said:
        await alice.ok(f"/say lobby {text}")
    bob = await back(registry, "bob")  # a new process: the same history on this machine
    await until_shown(bob, [f"Message from alice at lobby: {text}" for text in said])
    assert await bob.quit() == 0
    lines = bob.lines
    assert lines.index("* history of lobby") < lines.index(
        f"Message from alice at lobby: {said[0]}"
    )
    caught = [line for line in shown(bob, "Message from") if "away" in line]
    assert caught == [f"Message from alice at lobby: {text}" for text in said]  # once, in order
    rows, _ = await alice.command("/history lobby 3")
    assert [r.split(" ", 3)[-1] for r in rows] == [f"alice: {t}" for t in said[-3:]]
    await alice.quit()


async def test_a_direct_message_to_someone_offline_waits_across_the_senders_restart(
    registry: Registry,
) -> None:
    bob = await logged_in(registry, "bob")
    assert await bob.quit() == 0
    alice = await logged_in(registry, "alice")
    result = await alice.ok("/msg bob are you there?")
    assert result == "ok: queued for bob; they are offline"
    rows, result = await alice.command("/outbox")
    assert result == "ok: 1 direct message not yet delivered"
    assert rows == ["  to bob, queued: are you there?"]
    assert await alice.quit() == 0
    alice = await back(registry, "alice")  # the outbox is in alice's history file
    bob = await back(registry, "bob")
    assert await bob.expect("^Message from alice") == "Message from alice: are you there?"
    assert await alice.expect(r"^\* delivered to bob") == "* delivered to bob: are you there?"
    rows, result = await alice.command("/outbox")
    assert (rows, result) == ([], "ok: 0 direct messages not yet delivered")
    assert await alice.quit() == 0
    assert await bob.quit() == 0
    assert shown(bob, "Message from") == ["Message from alice: are you there?"]  # once


async def test_join_then_speak_scripts_are_heard_by_every_member(registry: Registry) -> None:
    members = {n: await logged_in(registry, n) for n in ("m1", "m2", "m3")}
    await members["m1"].ok("/create open")
    for n in ("m2", "m3"):
        await members[n].ok("/join open")
    await until_all_hear(members["m1"], [members["m2"], members["m3"]], room="open")
    joiners = [await start_peer(registry.port) for _ in range(5)]
    for k, joiner in enumerate(joiners):
        await joiner.ok(f"/register j{k} {PW}")
        await joiner.ok(f"/login j{k} {PW}")
    for k, joiner in enumerate(joiners):  # each script sent at once, not waiting for answers
        await joiner.send(f"/join open\n/say open burst {k}\n/leave open")
    for joiner in joiners:
        await joiner.expect(r"^ok: left open$")
    heard = [f"Message from j{k} at open: burst {k}" for k in range(len(joiners))]
    for member in members.values():
        await until_shown(member, heard)
    for peer in [*members.values(), *joiners]:
        assert await peer.quit() == 0
    for member in members.values():
        assert sorted(shown(member, "Message from j")) == heard  # each once
