"""Attacks on a peer's shell over real sockets on 127.0.0.0/8 (strangers on 127.0.0.2 and up,
honest users on 127.0.0.1), each bounded, with the defended outcome asserted: connections per
address, handshakes that never finish, a process out of descriptors, what idle links cost."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from p2pchat.peer.node import PeerNode
from p2pchat.protocol.messages import (
    PROTOCOL_VERSION,
    DirectMessage,
    PeerHello,
    encode,
)
from p2pchat.registry.client import RegistryClient
from p2pchat.registry.server import RegistryServer
from p2pchat.trust import tls
from p2pchat.trust.signing import Signer
from tests.listening import WAIT, out_of_descriptors, pauses_without_spinning, traced, until
from tests.peer.harness import PW, Swarm, raw_link
from tests.registry.harness import identity_files

A2 = "127.0.0.2"
IDLE_LINK_BYTES = 48 * 1024
"""What an idle TLS link may cost its peer in Python memory (asyncio's default TLS layer
alone allocates and fills 256 KiB)."""


@pytest.fixture
async def swarm(registry: RegistryServer) -> AsyncIterator[Swarm]:
    swarm = Swarm(registry.port)
    yield swarm
    await swarm.close()


async def stranger(port: int, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection from ``source`` that never starts its TLS handshake."""
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def delivered(sender: PeerNode, to: str, text: str) -> bool:
    return (await asyncio.wait_for(sender.send_direct(to, text), WAIT)).delivered


# ------------------------------------------------------------------ connections


async def test_connections_per_address_are_capped_and_an_honest_user_is_served(
    swarm: Swarm,
) -> None:
    alice = (await swarm.add("alice", node={"max_per_address": 3})).node
    bob, carol = (await swarm.add("bob")).node, (await swarm.add("carol")).node
    assert alice.listener is not None
    held = [await stranger(alice.port, A2) for _ in range(3)]
    await until(lambda: alice.listener is not None and alice.listener.held == 3)
    # one more from that address: refused at accept, before TLS, with one plain line
    reader, _ = await stranger(alice.port, A2)
    refusal = json.loads(await asyncio.wait_for(reader.readline(), WAIT))
    assert refusal == {
        "type": "peer_error",
        "code": "too_many_connections",
        "reason": "too many connections from your address",
    }
    assert await asyncio.wait_for(reader.read(), WAIT) == b""
    held.append(await stranger(alice.port, "127.0.0.3"))  # another address is not refused
    await until(lambda: alice.listener is not None and alice.listener.held == 4)
    assert await delivered(bob, "alice", "still here?")  # 127.0.0.1 is exempt
    held[0][1].close()  # a slot freed is a slot again
    await until(lambda: alice.listener is not None and alice.listener.per_address[A2] == 2)
    _, writer = await raw_link(alice, carol, source=A2)  # welcomed
    assert alice.listener.refused == 1
    writer.close()


async def test_strangers_that_never_finish_a_handshake_cannot_hold_every_slot(
    swarm: Swarm,
) -> None:
    alice = (await swarm.add("alice", max_connections=8)).node  # 4 handshakes at most
    bob, carol = (await swarm.add("bob")).node, (await swarm.add("carol")).node
    listener = alice.listener
    assert listener is not None and listener.max_opening == 4
    held = [await stranger(alice.port, f"127.0.0.{2 + i % 6}") for i in range(12)]  # 6 x 2
    await until(lambda: all(reader.at_eof() for reader, _ in held[:8]))  # the oldest went
    assert listener.evicted == 8 and not any(reader.at_eof() for reader, _ in held[8:])
    assert listener.held == 4  # so the total is not reached
    assert await delivered(bob, "alice", "past the strangers")
    _, writer = await raw_link(alice, carol, source="127.0.0.9")  # a stranger's address too
    assert listener.refused == 0
    writer.close()


async def test_out_of_descriptors_the_peer_pauses_accepting_without_spinning(
    swarm: Swarm, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    alice = (await swarm.add("alice")).node
    bob = (await swarm.add("bob")).node
    assert alice.listener is not None
    with caplog.at_level(logging.WARNING, logger="p2pchat.peer"):
        with out_of_descriptors(alice.listener, monkeypatch) as exhausted:
            connecting = asyncio.create_task(raw_link(alice, bob))  # waits in the backlog
            await pauses_without_spinning(exhausted, connecting)
        _, writer = await asyncio.wait_for(connecting, WAIT)  # welcomed once the pause ended
    warnings = [r for r in caplog.records if "cannot accept" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].exc_info is None
    writer.close()


# ------------------------------------------------------------------ memory


def _readline(sock: ssl.SSLSocket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1)
        assert chunk, "closed"
        data += chunk
    return data


async def test_an_idle_accepted_tls_link_costs_the_peer_little_memory(
    swarm: Swarm, registry: RegistryServer, tmp_path: Path
) -> None:
    """Links from 20 users, each of whom sent a direct message (so the link is kept, for 5
    minutes): asyncio's TLS layer alone would cost 256 KiB each."""
    alice = (await swarm.add("alice")).node
    count = 20
    files = [
        (f"user{i:02d}", identity_files(tmp_path, registry.authority, f"user{i:02d}", Signer()))
        for i in range(count)
    ]

    def link(name: str, cert: Path, key: Path) -> ssl.SSLSocket:
        sock = tls.client(cert, key).wrap_socket(
            socket.create_connection(("127.0.0.1", alice.port))
        )
        sock.sendall(encode(PeerHello(version=PROTOCOL_VERSION, username=name, nonce="ab" * 16)))
        assert b'"peer_welcome"' in _readline(sock)
        sock.sendall(encode(DirectMessage(id="d" * 32, sender=name, text="hi", ts=time.time())))
        while b'"dm_ack"' not in _readline(sock):
            pass
        return sock

    with traced() as grown:
        held = [await asyncio.to_thread(link, name, *paths) for name, paths in files]
        per_link = grown() / count
    assert len(alice.core.links) == count
    assert per_link < IDLE_LINK_BYTES, per_link
    for sock in held:
        sock.close()


@pytest.fixture
def silent_server() -> Iterator[tuple[int, list[ssl.SSLSocket]]]:
    """A TLS server in a thread that completes handshakes and then reads nothing."""
    context = tls.peer_server(time.time())
    context.verify_mode = ssl.CERT_NONE
    listening = socket.create_server(("127.0.0.1", 0))
    listening.settimeout(0.1)
    accepted: list[ssl.SSLSocket] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listening.accept()
            except TimeoutError:
                continue
            conn.settimeout(WAIT)
            accepted.append(context.wrap_socket(conn, server_side=True))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listening.getsockname()[1], accepted
    stop.set()
    thread.join(WAIT)
    listening.close()
    for sock in accepted:
        sock.close()


async def test_an_idle_dialed_tls_link_costs_the_peer_little_memory(
    swarm: Swarm, registry: RegistryServer, silent_server: tuple[int, list[Any]]
) -> None:
    """alice dials 20 users (a direct message to each), whose peers finish TLS and say
    nothing: each link waits for their welcome."""
    port, accepted = silent_server
    alice = (await swarm.add("alice", dial_timeout=30.0)).node
    count = 20
    users = []
    for i in range(count):
        client = await RegistryClient.connect("127.0.0.1", registry.port)
        await client.register(f"user{i:02d}", PW)
        await client.login(f"user{i:02d}", PW, port, heartbeat=0)
        users.append(client)
    sending: list[asyncio.Task[Any]] = []
    try:
        with traced() as grown:
            for i in range(count):
                sending.append(asyncio.create_task(alice.send_direct(f"user{i:02d}", "hi")))
            await until(
                lambda: (
                    len(accepted) == count
                    and sum(link.transport is not None for link in alice.links.values()) == count
                )
            )
            per_link = grown() / count
        assert per_link < IDLE_LINK_BYTES, per_link
    finally:
        for task in sending:
            task.cancel()
        for client in users:
            await client.close()
