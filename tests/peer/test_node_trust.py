"""Real peers over real sockets: pinning the registry, and what a wire tap between peers sees."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from p2pchat.peer.events import CommandError
from p2pchat.peer.node import PeerConfig, PeerNode
from p2pchat.registry.core import RegistryConfig
from p2pchat.registry.passwords import Passwords
from p2pchat.registry.server import RegistryServer
from p2pchat.store import SqliteStore
from p2pchat.trust.certs import Authority
from tests.peer.harness import PW, Swarm

ROOM = "lobby"


async def registry_on(port: int, authority: Authority, store: SqliteStore) -> RegistryServer:
    server = RegistryServer(
        store,
        host="127.0.0.1",
        port=port,
        udp_port=0,
        config=RegistryConfig(register_burst=1000),
        passwords=Passwords("cheapest"),
        authority=authority,
    )
    await server.start()
    return server


async def test_a_registry_with_another_certificate_is_refused_by_name() -> None:
    store = SqliteStore(":memory:")
    first = await registry_on(0, Authority.create(time.time()), store)
    swarm = Swarm(first.port)
    try:
        alice = await swarm.add("alice")  # pins the first registry's certificate
        old = first.authority.fingerprint
        await alice.node.logout()
        await first.close()
        impostor = await registry_on(first.port, Authority.create(time.time()), store)
        try:
            with pytest.raises(CommandError) as caught:
                await alice.node.login("alice", PW)
            message = str(caught.value)
            assert old in message and impostor.authority.fingerprint in message
            assert "known_registries" in message
            assert not impostor.core.online  # nothing, the password least of all, was sent
        finally:
            await impostor.close()
    finally:
        await swarm.close()


async def test_a_fingerprint_given_up_front_is_checked_on_first_use(
    registry: RegistryServer,
) -> None:
    def node(fingerprint: str) -> PeerNode:
        return PeerNode(
            PeerConfig(
                registry_port=registry.port,
                listen_host="127.0.0.1",
                registry_fingerprint=fingerprint,
            )
        )

    wrong = node(Authority.create(time.time()).fingerprint)
    await wrong.start()
    with pytest.raises(CommandError, match="presented fingerprint"):
        await wrong.register("alice", PW)
    await wrong.close()
    right = node(registry.authority.fingerprint)
    await right.start()
    await right.register("alice", PW)
    assert await right.login("alice", PW) == "alice"
    await right.close()


async def test_after_the_ca_is_replaced_a_user_given_its_fingerprint_logs_in_again() -> None:
    """A new process shows no stored certificate until this login issues one: the old CA's
    certificate on disk cannot fail the handshake with the new CA."""
    store = SqliteStore(":memory:")
    first = await registry_on(0, Authority.create(time.time()), store)
    swarm = Swarm(first.port)
    try:
        alice = await swarm.add("alice")  # holds a certificate of the first CA
        await alice.node.close()
        assert alice.node.local.own_files("alice") is not None
        await first.close()
        second = await registry_on(first.port, Authority.create(time.time()), store)
        try:
            again = PeerNode(
                PeerConfig(
                    registry_port=second.port,
                    listen_host="127.0.0.1",
                    registry_fingerprint=second.authority.fingerprint,  # the operator says so
                )
            )
            await again.start()
            try:
                assert await asyncio.wait_for(again.login("alice", PW), 10) == "alice"
                own = again.local.own_files("alice")  # the new CA's, issued at this login
                assert own is not None
                assert (
                    second.authority.fingerprint
                    in (again.local.known.get(again.local.registry) or ("",))[0]
                )
            finally:
                await again.close()
        finally:
            await second.close()
    finally:
        await swarm.close()


class Tap:
    """A TCP relay on 127.0.0.1 that keeps a copy of every byte, both ways."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.seen = bytearray()
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    self.seen += data
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


@pytest.fixture
async def swarm(registry: RegistryServer) -> AsyncIterator[Swarm]:
    swarm = Swarm(registry.port)
    yield swarm
    await swarm.close()


async def test_a_wire_tap_between_peers_sees_no_text_and_no_names(swarm: Swarm) -> None:
    alice, bob = await swarm.add("alice"), await swarm.add("bob")
    tap = Tap(bob.node.port)
    tapped = await tap.start()
    # alice reaches bob through the tap: the registry told her the tap's address
    alice.node.core.rooms.clear()
    link = alice.node.core._dial("bob", "127.0.0.1", tapped)
    alice.node.apply(alice.node.core._take())
    await swarm.changes.until(lambda: "bob" in alice.node.linked_peers())
    assert alice.node.core.links["bob"] is link
    await alice.node.send_direct("bob", "the secret plan")
    await swarm.changes.until(lambda: bob.directs() != [])
    assert bob.directs()[0].text == "the secret plan"
    assert tap.seen  # it did carry the link
    for clear in (b"secret plan", b"peer_hello", b"peer_welcome", b'"dm"', b"alice", b"bob"):
        assert clear not in tap.seen, clear
