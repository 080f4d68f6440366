"""Many real peers in one event loop on 127.0.0.1: delivery, repair, registry loss, bad input."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from collections.abc import AsyncIterator

import pytest

from p2pchat.peer.events import CommandError
from p2pchat.peer.mesh import mesh_graph
from p2pchat.protocol.messages import (
    MAX_TEXT,
    PROTOCOL_VERSION,
    DirectMessage,
    MeshRooms,
    PeerHello,
    RoomMessage,
    encode,
)
from p2pchat.registry.core import RegistryConfig
from p2pchat.registry.passwords import Passwords
from p2pchat.registry.server import RegistryServer
from p2pchat.store import SqliteStore
from p2pchat.trust import tls
from p2pchat.trust.certs import Authority
from tests.peer.harness import PW, Swarm, raw_link

ROOM = "lobby"


@pytest.fixture
async def swarm(registry: RegistryServer) -> AsyncIterator[Swarm]:
    swarm = Swarm(registry.port)
    yield swarm
    await swarm.close()


async def room_of(swarm: Swarm, names: list[str], room: str = ROOM) -> None:
    """Everyone in ``names`` logged in and a member of ``room`` (the first one owns it)."""
    for name in names:
        if name not in swarm.peers:
            await swarm.add(name)
    owner = swarm.peers[names[0]].node
    await owner.create_room(room)
    for name in names[1:]:
        await owner.add_member(room, name)
    await swarm.wait_mesh(room, names)


async def test_every_online_member_gets_every_message_exactly_once(swarm: Swarm) -> None:
    members = [f"m{i:02d}" for i in range(24)]
    outsiders = ["o1", "o2", "o3"]
    for name in outsiders:
        await swarm.add(name)
    await swarm.add("sleeper", login=True)
    await room_of(swarm, [*members, "sleeper"])
    await swarm.peers["sleeper"].node.logout()  # a member who is offline
    online = members
    await swarm.wait_mesh(ROOM, online)

    senders = online[::3]
    for sender in senders:
        await swarm.peers[sender].node.say(ROOM, f"hello from {sender}")
    for sender in senders:
        others = [m for m in online if m != sender]
        await swarm.wait_delivered(ROOM, sender, f"hello from {sender}", others)

    counts = swarm.counts(ROOM)
    for name in online:
        expected = {(s, f"hello from {s}"): 1 for s in senders if s != name}
        assert dict(counts[name]) == expected, name
    for name in [*outsiders, "sleeper"]:
        assert not swarm.peers[name].room_texts(), name
    for name in online:  # bounded mesh: the sender does not link to every member
        node = swarm.peers[name].node
        assert len(node.mesh_links(ROOM)) <= 6
        assert node.core.router is not None
        assert node.core.router.payloads_out <= 6 * len(senders) + 6 * (len(online) - len(senders))
    # links made while the room grew, and needed by neither end now, are closed soon after
    await swarm.changes.until(
        lambda: all(len(swarm.peers[n].node.core.links) <= 6 for n in online), timeout=5
    )


async def test_links_stay_bounded_and_one_link_serves_every_shared_room(swarm: Swarm) -> None:
    names = [f"p{i}" for i in range(12)]
    await room_of(swarm, names, "one")
    await room_of(swarm, names, "two")
    for name in names:
        node = swarm.peers[name].node
        # the same mesh in both rooms: the same links
        assert sorted(node.mesh_links("one")) == sorted(node.mesh_links("two"))
        assert len(node.mesh_links("one")) <= 6
    await swarm.peers["p5"].node.say("two", "in two")
    await swarm.wait_delivered("two", "p5", "in two", [n for n in names if n != "p5"])


async def test_a_crashed_relay_is_routed_around(swarm: Swarm) -> None:
    names = [f"r{i:02d}" for i in range(16)]
    await room_of(swarm, names)
    graph = mesh_graph(names)
    victim = "r05"
    assert len(graph[victim]) >= 2  # it relays for others
    swarm.peers[victim].node.abort()
    rest = [n for n in names if n != victim]
    await swarm.wait_mesh(ROOM, rest, timeout=3.0)  # repaired within a couple of seconds
    for sender in ("r04", "r06", "r00"):
        await swarm.peers[sender].node.say(ROOM, f"after the crash, {sender}")
        receivers = [n for n in rest if n != sender]
        await swarm.wait_delivered(ROOM, sender, f"after the crash, {sender}", receivers)
    for name in rest:
        counts = swarm.counts(ROOM)[name]
        assert all(n == 1 for n in counts.values()), (name, counts)
    assert any("r05" in text for text in swarm.peers["r04"].notices())
    await swarm.changes.until(
        lambda: "mesh of lobby repaired" in swarm.peers["r04"].notices(), timeout=3
    )


async def test_a_member_who_comes_online_or_is_added_gets_later_messages(swarm: Swarm) -> None:
    names = ["ann", "ben", "cat", "dan"]
    await room_of(swarm, names)
    late = await swarm.add("eve", login=False)
    await swarm.peers["ann"].node.add_member(ROOM, "eve")
    await swarm.peers["ann"].node.say(ROOM, "before eve")
    await swarm.wait_delivered(ROOM, "ann", "before eve", ["ben", "cat", "dan"])
    await late.node.login("eve", PW)
    await swarm.wait_mesh(ROOM, [*names, "eve"], timeout=2.0)
    await swarm.peers["ben"].node.say(ROOM, "welcome eve")
    await swarm.wait_delivered(ROOM, "ben", "welcome eve", ["ann", "cat", "dan", "eve"])
    # said while eve was offline, but after she was added: caught up, once, as history
    await swarm.changes.until(lambda: late.got(ROOM, "ann", "before eve") == 1)
    [caught] = [t for t in late.room_texts(ROOM) if t.text == "before eve"]
    assert caught.history

    newcomer = await swarm.add("fay")
    await swarm.peers["eve"].node.add_member(ROOM, "fay")
    await swarm.wait_mesh(ROOM, [*names, "eve", "fay"], timeout=2.0)
    await swarm.peers["cat"].node.say(ROOM, "hi fay")
    await swarm.wait_delivered(ROOM, "cat", "hi fay", ["fay"])
    assert any("added you to lobby" in n for n in newcomer.notices())


async def test_leaving_and_removal_stop_delivery(swarm: Swarm) -> None:
    names = ["ann", "ben", "cat", "dan"]
    await room_of(swarm, names)
    await swarm.peers["dan"].node.leave_room(ROOM)
    await swarm.peers["ann"].node.remove_member(ROOM, "cat")
    await swarm.wait_mesh(ROOM, ["ann", "ben"])
    await swarm.changes.until(lambda: ROOM not in swarm.peers["cat"].node.core.rooms)
    await swarm.peers["ann"].node.say(ROOM, "just us")
    await swarm.wait_delivered(ROOM, "ann", "just us", ["ben"])
    await swarm.peers["ben"].node.say(ROOM, "still just us")
    await swarm.wait_delivered(ROOM, "ben", "still just us", ["ann"])
    assert swarm.peers["cat"].got(ROOM, "ann", "just us") == 0
    assert swarm.peers["dan"].got(ROOM, "ann", "just us") == 0


async def test_direct_messages(swarm: Swarm) -> None:
    alice = await swarm.add("alice")
    bob = await swarm.add("bob")
    await swarm.add("carol", login=False)
    sent = await alice.node.send_direct("BOB", "hello")
    assert (sent.peer, sent.delivered) == ("bob", True)
    await swarm.changes.until(lambda: len(bob.directs()) == 1)
    [dm] = bob.directs()
    assert (dm.sender, dm.text) == ("alice", "hello")
    assert (await alice.node.send_direct("bob", "again")).delivered  # reuses the link
    assert len(alice.node.core.links) == 1
    kept = await alice.node.send_direct("carol", "hi")
    assert (kept.peer, kept.delivered, kept.reason) == ("carol", False, "they are offline")
    assert [(e.recipient, e.text) for e in alice.node.outbox()] == [("carol", "hi")]
    with pytest.raises(CommandError, match="no user"):
        await alice.node.send_direct("nobody", "hi")
    with pytest.raises(CommandError, match="too long"):
        await alice.node.send_direct("bob", "x" * (MAX_TEXT + 1))
    with pytest.raises(CommandError, match="not a member"):
        await alice.node.say("elsewhere", "hi")
    await swarm.changes.until(lambda: len(bob.directs()) == 2)


async def test_room_and_direct_chat_go_on_while_the_registry_is_down(tmp_path: object) -> None:
    authority = Authority.create(time.time())  # kept across the restart, as beside its database

    async def start(port: int = 0, udp: int = 0) -> RegistryServer:
        server = RegistryServer(
            SqliteStore(str(tmp_path) + "/r.db"),
            host="127.0.0.1",
            port=port,
            udp_port=udp,
            config=RegistryConfig(register_burst=1000),
            passwords=Passwords("cheapest"),
            authority=authority,
        )
        await server.start()
        return server

    registry = await start()
    swarm = Swarm(registry.port)
    try:
        names = ["ann", "ben", "cat", "dan", "eve", "fay", "gus"]
        await room_of(swarm, names)
        await registry.close()
        registry.core.store.close()
        await swarm.changes.until(
            lambda: all(
                any("registry unreachable" in n for n in p.notices()) for p in swarm.peers.values()
            )
        )
        await swarm.peers["cat"].node.say(ROOM, "registry is gone")
        await swarm.wait_delivered(
            ROOM, "cat", "registry is gone", [n for n in names if n != "cat"]
        )
        ann, ben = swarm.peers["ann"], swarm.peers["ben"]
        if "ben" in ann.node.core.links:  # direct messages over an existing link need no registry
            await ann.node.send_direct("ben", "still here")
            await swarm.changes.until(lambda: len(ben.directs()) == 1)
        registry = await start(registry.port, registry.udp_port)
        await swarm.changes.until(
            lambda: all(
                any("registry is back" in n for n in p.notices()) for p in swarm.peers.values()
            ),
            timeout=15,
        )
        assert (await ann.node.search("gus")).online
    finally:
        await swarm.close()
        await registry.close()


async def test_messages_from_non_members_are_dropped(
    swarm: Swarm, registry: RegistryServer
) -> None:
    await room_of(swarm, ["ann", "ben"])
    mallory = await swarm.add("mallory")
    ann = swarm.peers["ann"]
    _, writer = await raw_link(ann.node, mallory.node)
    sig = "A" * 86
    forged = RoomMessage(
        id="f" * 32, room=ROOM, origin="mallory", seq=1, text="spam", ts=0.0, hops=5, sig=sig
    )
    as_member = RoomMessage(
        id="e" * 32, room=ROOM, origin="ben", seq=1, text="forged", ts=0.0, hops=5, sig=sig
    )
    writer.write(encode(forged) + encode(as_member))
    roomlog = ann.node.core.roomlog
    assert roomlog is not None
    # held (mallory might have just joined) until the registry's word, which never comes
    await swarm.changes.until(lambda: len(roomlog._unknown) == 2)
    await swarm.peers["ben"].node.say(ROOM, "real")
    await swarm.wait_delivered(ROOM, "ben", "real", ["ann"])
    assert ann.room_texts() == [t for t in ann.room_texts() if t.text == "real"]
    writer.close()


@pytest.mark.parametrize(
    "junk",
    [
        b"\xff\xfe garbage\n",
        b'{"type":"room_msg"}\n',
        b'{"type":"warp","x":1}\n',
        b"[]\n",
        b"x" * (70 * 1024),
    ],
)
async def test_bad_frames_from_a_peer_never_reach_the_screen(swarm: Swarm, junk: bytes) -> None:
    await room_of(swarm, ["ann", "ben"])
    ann = swarm.peers["ann"]
    _, writer = await raw_link(ann.node, (await swarm.add("dan")).node)
    writer.write(junk)
    await writer.drain()
    await swarm.peers["ben"].node.say(ROOM, "after junk")
    await swarm.wait_delivered(ROOM, "ben", "after junk", ["ann"])
    assert [t.text for t in ann.room_texts()] == ["after junk"]
    writer.close()


async def test_a_connection_without_tls_or_a_certificate_gets_nothing(swarm: Swarm) -> None:
    await room_of(swarm, ["ann", "ben"])
    port = swarm.peers["ann"].node.port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)  # plain TCP: a downgrade
    writer.write(encode(PeerHello(version=PROTOCOL_VERSION, username="ben", nonce="cd" * 16)))
    data = await asyncio.wait_for(reader.read(), 15)
    assert b"ann" not in data and b"peer_welcome" not in data  # a TLS alert at most
    writer.close()
    with contextlib.suppress(ConnectionError, ssl.SSLError):  # TLS but no certificate
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=tls.client(), server_hostname=""
        )
        writer.write(encode(PeerHello(version=PROTOCOL_VERSION, username="ben", nonce="00")))
        assert await asyncio.wait_for(reader.read(), 15) == b""
        writer.close()
    assert not swarm.peers["ann"].room_texts()
    assert swarm.peers["ann"].node.linked_peers() == frozenset({"ben"})


async def test_a_link_that_speaks_first_without_hello_is_refused(swarm: Swarm) -> None:
    await room_of(swarm, ["ann", "ben"])
    mallory = await swarm.add("mallory")
    own = mallory.node.local.own_files("mallory")
    assert own is not None
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", swarm.peers["ann"].node.port, ssl=tls.client(*own), server_hostname=""
    )
    msg = RoomMessage(id="a" * 32, room=ROOM, origin="ben", seq=1, text="x", ts=0, hops=1)
    writer.write(encode(msg))
    error = json.loads(await asyncio.wait_for(reader.readline(), 5))
    assert error["type"] == "peer_error"
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert not swarm.peers["ann"].room_texts()


async def test_a_non_member_cannot_pull_room_messages_by_announcing_the_room(
    swarm: Swarm,
) -> None:
    await room_of(swarm, ["ann", "ben"])
    mallory = await swarm.add("mallory")
    ann = swarm.peers["ann"]
    reader, writer = await raw_link(ann.node, mallory.node)
    writer.write(encode(MeshRooms(rooms=[ROOM])))
    writer.write(encode(DirectMessage(id="d1", sender="mallory", text="hi", ts=0.0)))
    while json.loads(await asyncio.wait_for(reader.readline(), 5))["type"] != "dm_ack":
        pass  # frames are handled in order: the announcement has been processed
    assert "mallory" not in ann.node.mesh_links(ROOM)
    assert "ben" in ann.node.mesh_links(ROOM)
    writer.close()


@pytest.mark.parametrize("claim", ["ben", "nobody"])
async def test_a_peer_cannot_claim_a_name_its_certificate_does_not_give(
    swarm: Swarm, claim: str
) -> None:
    await room_of(swarm, ["ann", "ben"])
    mallory = await swarm.add("mallory")
    own = mallory.node.local.own_files("mallory")
    assert own is not None
    ann = swarm.peers["ann"]
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", ann.node.port, ssl=tls.client(*own), server_hostname=""
    )
    writer.write(encode(PeerHello(version=PROTOCOL_VERSION, username=claim, nonce="cd" * 16)))
    forged = RoomMessage(id="f" * 32, room=ROOM, origin="ben", seq=1, text="x", ts=0, hops=3)
    writer.write(encode(forged) + encode(MeshRooms(rooms=[ROOM])))
    refusal = json.loads(await asyncio.wait_for(reader.readline(), 5))
    assert refusal["type"] == "peer_error" and "mallory" in refusal["reason"]
    assert "ann" not in json.dumps(refusal)  # ann said nothing about herself
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert not ann.room_texts()
    assert "ben" in ann.node.linked_peers()  # the real ben's link is untouched
    await swarm.peers["ben"].node.say(ROOM, "still me")
    await swarm.wait_delivered(ROOM, "ben", "still me", ["ann"])
