"""The registry over real sockets on 127.0.0.1, driven by ``RegistryClient``."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import pytest

from p2pchat.protocol.framing import MAX_FRAME
from p2pchat.protocol.messages import Bye, Ping, RoomEvent, encode
from p2pchat.registry.client import Event, RegistryClient, RegistryClosed, RegistryError
from p2pchat.registry.core import RegistryConfig, SendEvents
from p2pchat.registry.passwords import Passwords
from p2pchat.registry.server import RegistryServer
from p2pchat.store import SqliteStore
from tests.conftest import ClientFactory
from tests.registry.harness import HELLO, open_tls, start_server

PW = "secret-pw"
WAIT = 5.0


async def user(connect: ClientFactory, name: str, port: int = 7000, **kw: object) -> RegistryClient:
    client = await connect(**kw)
    try:
        await client.register(name, PW)
    except RegistryError as exc:
        assert exc.code == "name_taken"
    await client.login(name, PW, port)
    return client


class Inbox:
    """Collects pushed events; waits for the next one without sleeping."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Event] = asyncio.Queue()

    def __call__(self, event: Event) -> None:
        self.queue.put_nowait(event)

    async def next(self) -> Event:
        return await asyncio.wait_for(self.queue.get(), WAIT)


async def raw(registry: RegistryServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TLS connection that frames are written to by hand."""
    return await open_tls(registry.port)


async def roundtrip(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, line: bytes
) -> dict[str, object]:
    writer.write(line)
    reply: dict[str, object] = json.loads(await asyncio.wait_for(reader.readline(), WAIT))
    return reply


# ------------------------------------------------------------------ operations


async def test_every_operation_over_sockets(connect: ClientFactory) -> None:
    alice = await user(connect, "alice", 7001)
    bob = await user(connect, "bob", 7002)
    assert alice.session is not None and alice.session.host == "127.0.0.1"
    assert (await alice.search("bob")).port == 7002
    assert {u.username for u in await alice.users()} == {"alice", "bob"}
    await alice.create_room("lobby")
    await alice.create_room("secret", private=True)
    await bob.join_room("lobby")
    await alice.add_member("secret", "bob")
    assert [(r.room, r.members, r.online) for r in await bob.rooms()] == [
        ("lobby", 2, 2),
        ("secret", 2, 2),
    ]
    assert [(m.username, m.online, m.port) for m in await bob.members("secret")] == [
        ("alice", True, 7001),
        ("bob", True, 7002),
    ]
    await alice.remove_member("secret", "bob")
    await bob.leave_room("lobby")
    assert [m.username for m in await alice.members("lobby")] == ["alice"]
    await bob.logout()
    assert not (await alice.search("bob")).online


@pytest.mark.parametrize(
    ("call", "code"),
    [
        (lambda c: c.register("alice", PW), "name_taken"),
        (lambda c: c.register("bad name", PW), "invalid_username"),
        (lambda c: c.register("newbie", "123"), "invalid_password"),
        (lambda c: c.search("nobody"), "no_such_user"),
        (lambda c: c.join_room("nowhere"), "no_such_room"),
        (lambda c: c.create_room("lobby"), "room_exists"),
        (lambda c: c.create_room("bad room"), "invalid_room"),
        (lambda c: c.join_room("lobby"), "already_member"),
        (lambda c: c.leave_room("elsewhere"), "not_a_member"),
        (lambda c: c.add_member("lobby", "nobody"), "no_such_user"),
        (lambda c: c.join_room("private"), "no_such_room"),  # to a non-member, as if missing
        (lambda c: c.members("private"), "no_such_room"),
        (lambda c: c.remove_member("elsewhere", "carol"), "not_owner"),
        (lambda c: c.login("carol", PW, 7000), "already_logged_in"),
    ],
)
async def test_errors_over_sockets(connect: ClientFactory, call: object, code: str) -> None:
    carol = await user(connect, "carol")
    owner = await user(connect, "alice")
    await owner.create_room("lobby")
    await owner.create_room("elsewhere")
    await owner.create_room("private", private=True)
    await carol.join_room("lobby")
    await carol.join_room("elsewhere")
    await carol.leave_room("elsewhere")
    with pytest.raises(RegistryError) as caught:
        await call(carol)  # type: ignore[operator]
    assert caught.value.code == code and caught.value.reason


async def test_login_errors_over_sockets(connect: ClientFactory) -> None:
    await user(connect, "alice")
    fresh = await connect()
    for name, password, expected in [
        ("nobody", PW, "wrong_password"),  # an unknown name is not told apart
        ("alice", "wrong-pw", "wrong_password"),
        ("alice", PW, "already_online"),
    ]:
        with pytest.raises(RegistryError) as caught:
            await fresh.login(name, password, 7000)
        assert caught.value.code == expected


async def test_pushed_events(connect: ClientFactory) -> None:
    inbox = Inbox()
    alice = await user(connect, "alice", on_event=inbox)
    await alice.create_room("lobby")
    bob = await user(connect, "bob", 7002)
    await bob.join_room("lobby")
    event = await inbox.next()
    assert isinstance(event, RoomEvent)
    assert (event.username, event.change, event.port) == ("bob", "joined", 7002)
    await bob.close()  # the session breaks: bob is logged out at once
    event = await inbox.next()
    assert isinstance(event, RoomEvent) and (event.username, event.change) == ("bob", "offline")
    bob = await user(connect, "bob", 7003)
    event = await inbox.next()
    assert isinstance(event, RoomEvent) and (event.change, event.port) == ("online", 7003)


async def test_events_iterator_without_callback(connect: ClientFactory) -> None:
    alice = await user(connect, "alice")
    await alice.create_room("lobby")
    bob = await user(connect, "bob")
    await bob.join_room("lobby")
    events = alice.events()
    event = await asyncio.wait_for(anext(events), WAIT)
    assert isinstance(event, RoomEvent) and event.change == "joined"


# ------------------------------------------------------------------ heartbeats


async def test_udp_heartbeats_keep_a_session_and_silence_ends_it() -> None:
    server = RegistryServer(
        SqliteStore(":memory:"),
        host="127.0.0.1",
        port=0,
        udp_port=0,
        config=RegistryConfig(heartbeat_interval=0.05, timeout=0.4),
        passwords=Passwords("cheapest"),
    )
    await server.start()
    try:
        pinging = await RegistryClient.connect("127.0.0.1", server.port)
        await pinging.register("alice", PW)
        await pinging.login("alice", PW, 7001)  # heartbeats every 0.05 s
        silent = await RegistryClient.connect("127.0.0.1", server.port)
        await silent.register("bob", PW)
        await silent.login("bob", PW, 7002, heartbeat=0)
        events = silent.events()
        bye = await asyncio.wait_for(anext(events), WAIT)
        assert isinstance(bye, Bye) and bye.code == "timeout"
        await asyncio.wait_for(silent.closed.wait(), WAIT)
        # alice logged in before bob and is still online: her pings count
        assert (await pinging.search("alice")).online
        assert not (await pinging.search("bob")).online
        with pytest.raises(RegistryClosed):
            await silent.search("alice")
        await pinging.close()
    finally:
        await server.close()


async def test_tcp_ping(connect: ClientFactory) -> None:
    alice = await user(connect, "alice")
    await alice.ping_tcp()


async def test_garbage_on_the_udp_port_is_dropped(
    registry: RegistryServer, connect: ClientFactory
) -> None:
    alice = await user(connect, "alice")
    assert alice.session is not None
    forged = Ping(session=alice.session.session, seq=1, mac="0" * 64)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for junk in [
            b"\xff\x00garbage",
            b"{}",
            b"x" * 5000,
            encode(Ping(session="forged", seq=1, mac="0" * 64)),
            encode(forged),
            b'{"type":"ping","token":"%s"}' % alice.session.session.encode(),  # version 1
        ]:
            sock.sendto(junk, ("127.0.0.1", registry.udp_port))
    assert (await alice.search("alice")).online


# ------------------------------------------------------------------ bad input


async def test_malformed_frames_get_errors_and_the_session_goes_on(
    registry: RegistryServer, connect: ClientFactory
) -> None:
    bystander = await user(connect, "alice")
    reader, writer = await raw(registry)
    hello = await roundtrip(reader, writer, HELLO)
    assert hello["type"] == "welcome"
    cases = [
        (b"not json\n", "bad_frame", None),
        (b'{"type":"teleport","id":7}\n', "unknown_type", 7),
        (b'{"type":"search","id":8}\n', "bad_request", 8),
        (b'{"type":"search","id":9,"username":42}\n', "bad_request", 9),
        (b"[1,2,3]\n", "bad_request", None),
    ]
    for line, code, req_id in cases:
        reply = await roundtrip(reader, writer, line)
        assert (reply["type"], reply["code"], reply["id"]) == ("error", code, req_id)
    ok = await roundtrip(
        reader, writer, b'{"type":"register","id":10,"username":"zoe","password":"secret-pw"}\n'
    )
    assert ok == {"type": "ok", "id": 10}
    writer.close()
    assert (await bystander.search("alice")).online


async def test_an_oversized_frame_closes_only_that_session(
    registry: RegistryServer, connect: ClientFactory
) -> None:
    bystander = await user(connect, "alice")
    reader, writer = await raw(registry)
    writer.write(HELLO + b'{"type":"hello","id":2,"agent":"' + b"x" * (MAX_FRAME + 10))
    welcome = json.loads(await asyncio.wait_for(reader.readline(), WAIT))
    assert welcome["type"] == "welcome"  # what came before the oversized frame is answered
    reply = json.loads(await asyncio.wait_for(reader.readline(), WAIT))
    assert reply["code"] == "frame_too_large"
    assert await asyncio.wait_for(reader.read(), WAIT) == b""  # closed
    assert (await bystander.search("alice")).online
    await bystander.create_room("still-works")


async def test_connection_limit() -> None:
    server = RegistryServer(
        SqliteStore(":memory:"), host="127.0.0.1", port=0, udp_port=0, max_connections=1
    )
    await server.start()
    try:
        first = await RegistryClient.connect("127.0.0.1", server.port)
        # refused before any TLS: one plain error line, then the end
        reader, _ = await asyncio.open_connection("127.0.0.1", server.port)
        reply = json.loads(await asyncio.wait_for(reader.readline(), WAIT))
        assert reply["code"] == "too_many_connections"
        with pytest.raises(RegistryError):  # the first session is still served
            await first.search("nobody")
        await first.close()
    finally:
        await server.close()


async def test_shutdown_says_bye(registry: RegistryServer, connect: ClientFactory) -> None:
    alice = await user(connect, "alice")
    events = alice.events()
    await registry.close()
    bye = await asyncio.wait_for(anext(events), WAIT)
    assert isinstance(bye, Bye) and bye.code == "shutdown"
    await asyncio.wait_for(alice.closed.wait(), WAIT)


# ------------------------------------------------------------------ persistence


async def test_accounts_rooms_and_members_survive_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "registry.db"

    async def start() -> RegistryServer:
        server = RegistryServer(
            SqliteStore(db), host="127.0.0.1", port=0, udp_port=0, passwords=Passwords("cheapest")
        )
        await server.start()
        return server

    server = await start()
    alice = await RegistryClient.connect("127.0.0.1", server.port)
    await alice.register("alice", PW)
    await alice.register("bob", PW)
    await alice.login("alice", PW, 7001)
    await alice.create_room("lobby")
    await alice.create_room("secret", private=True)
    await alice.add_member("secret", "bob")
    await alice.close()
    await server.close()
    server.core.store.close()

    server = await start()
    try:
        client = await RegistryClient.connect("127.0.0.1", server.port)
        await client.login("bob", PW, 7002)
        assert not (await client.search("alice")).online  # presence is not persisted
        assert [r.room for r in await client.rooms()] == ["lobby", "secret"]
        assert [(m.username, m.owner) for m in await client.members("secret")] == [
            ("alice", True),
            ("bob", False),
        ]
        with pytest.raises(RegistryError):
            await client.register("ALICE", PW)
        await client.close()
    finally:
        await server.close()
        server.core.store.close()


async def test_the_client_reads_every_page_of_a_long_listing() -> None:
    config = RegistryConfig(max_owned_rooms=300, max_rooms_per_user=300, room_change_burst=300)
    server = await start_server(config=config)
    try:
        alice = await RegistryClient.connect("127.0.0.1", server.port)
        await alice.register("alice", PW)
        await alice.login("alice", PW, 7000)
        names = [f"room{i:03d}" for i in range(205)]  # more than one page of 200
        await asyncio.gather(*(alice.create_room(n) for n in names))
        assert [r.room for r in await alice.rooms()] == names
        assert [r.room for r in await alice.rooms(mine=True)] == names
        for i in range(3):
            await alice.register(f"m{i}", PW)
            await alice.add_member("room000", f"m{i}")
        assert len(await alice.members("room000")) == 4
        await alice.close()
    finally:
        await server.close()


# ------------------------------------------------------------------ room events in rounds


class Gate:
    """Stands in for ``core.flush``: while shut, a round serves its first member and then
    nothing more, so the round stays under way for as long as the test likes."""

    def __init__(self, server: RegistryServer) -> None:
        self.core = server.core
        self.flush = server.core.flush
        self.shut = False
        self.started = asyncio.Event()
        self.idle = asyncio.Event()
        self.served: list[int] = []
        """The sessions the shut gate let the round serve."""

    def __call__(self, budget: int) -> list[Any]:
        if self.shut and self.core.flushing:
            return []
        actions = self.flush(1 if self.shut else budget)
        if self.shut and actions:
            self.served += [conn for a in actions if isinstance(a, SendEvents) for conn in a.conns]
            self.started.set()
        if not self.core.events_waiting:
            self.idle.set()
        return actions


async def test_a_round_of_room_events_lets_requests_through_and_replies_wait_for_events(
    registry: RegistryServer, connect: ClientFactory
) -> None:
    """While a round of events is under way, others' requests are answered; a member's
    reply comes after the events held for it, which the round then does not send again."""
    gate = Gate(registry)
    registry.core.flush = gate  # type: ignore[method-assign]
    seen: dict[str, list[object]] = {}

    async def member(name: str) -> RegistryClient:
        log = seen[name] = []
        client = await user(connect, name, on_event=lambda e: log.append((e.username, e.change)))
        await (client.create_room("big") if name == "m0" else client.join_room("big"))
        return client

    members = [await member(f"m{i}") for i in range(6)]
    outsider = await user(connect, "outsider")
    for client in members:  # each has had every event so far, with this reply
        await client.search("outsider")
    if registry.core.events_waiting:  # the round that finds them all sent
        gate.idle.clear()
        await asyncio.wait_for(gate.idle.wait(), WAIT)
    for log in seen.values():
        log.clear()
    gate.shut = True
    await members[1].logout()
    await asyncio.wait_for(gate.started.wait(), WAIT)
    online = registry.core.online
    served = [name for name in seen if name in online and online[name].conn in gate.served]
    assert len(served) == 1 and registry.core.flushing
    assert (await outsider.search("m0")).online  # answered mid-round
    waiting = next(i for i in range(2, 6) if f"m{i}" not in served)
    await members[waiting].search("m0")
    assert seen[f"m{waiting}"] == [("m1", "offline")]  # before the reply
    seen[f"m{waiting}"].append("reply")
    assert registry.core.flushing
    gate.idle.clear()
    gate.shut = False
    await asyncio.wait_for(gate.idle.wait(), WAIT)
    await members[waiting].search("m0")  # anything the round sent has arrived by now
    assert seen.pop(f"m{waiting}") == [("m1", "offline"), "reply"]
    assert seen.pop("m1") == []
    for name in ("m0", "m2", "m3", "m4", "m5"):
        if name in seen:
            await members[int(name[1])].search("m0")
            assert seen[name] == [("m1", "offline")], name


async def test_the_client_reads_a_10000_member_list_in_pages() -> None:
    store = SqliteStore(":memory:")
    digest = Passwords("cheapest").hash(PW)
    names = [f"m{i:05d}" for i in range(10_000)]
    for name in ["alice", *names]:
        store.create_account(name, digest)
    store.create_room("big", False, "alice")
    for name in names:
        store.add_member("big", name)
    server = await start_server(store=store)
    frames: list[object] = []
    handle = server.core.handle

    def counted(conn: int, request: Any, now: float) -> list[Any]:
        frames.append(request)
        return handle(conn, request, now)

    server.core.handle = counted  # type: ignore[method-assign]
    try:
        alice = await RegistryClient.connect("127.0.0.1", server.port)
        await alice.login("alice", PW, 7000)
        frames.clear()
        members = await alice.members("big")
        assert [m.username for m in members] == ["alice", *names]
        assert len(frames) == 51  # pages of 200
        await alice.close()
    finally:
        await server.close()
