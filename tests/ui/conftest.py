"""The ``peer`` fixture: other users, logged in to the test registry, closed afterwards."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from p2pchat.registry.server import RegistryServer
from tests.ui.harness import PASSWORD, Peer, PeerFactory, peer_config


@pytest.fixture
async def peer(registry: RegistryServer) -> AsyncIterator[PeerFactory]:
    """``await peer("bob", room="lobby", create=True)``: a logged-in peer, closed afterwards."""
    peers: list[Peer] = []

    async def make(name: str, room: str | None = None, create: bool = False) -> Peer:
        p = Peer(peer_config(registry))
        peers.append(p)
        await p.node.start()
        await p.node.register(name, PASSWORD)
        await p.node.login(name, PASSWORD)
        if room is not None:
            await (p.node.create_room(room) if create else p.node.join_room(room))
        return p

    yield make
    for p in peers:
        await p.node.close()
