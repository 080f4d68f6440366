"""Shared fixtures: a registry on 127.0.0.1 with ephemeral ports, and clients for it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from p2pchat.registry.client import Event, RegistryClient
from p2pchat.registry.core import RegistryConfig
from p2pchat.registry.passwords import Passwords
from p2pchat.registry.server import RegistryServer
from p2pchat.store import SqliteStore

ClientFactory = Callable[..., Awaitable[RegistryClient]]


@pytest.fixture(autouse=True)
def private_folders(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keys, certificates and pinned registries go to a fresh folder per test, never to the
    user's own (child processes inherit it)."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("XDG_DATA_HOME", str(home / "data"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "config"))


@pytest.fixture
async def registry() -> AsyncIterator[RegistryServer]:
    server = RegistryServer(
        SqliteStore(":memory:"),
        host="127.0.0.1",
        port=0,
        udp_port=0,
        config=RegistryConfig(heartbeat_interval=20.0, timeout=60.0, register_burst=100_000),
        passwords=Passwords("cheapest"),
    )
    await server.start()
    yield server
    await server.close()


@pytest.fixture
async def connect(registry: RegistryServer) -> AsyncIterator[ClientFactory]:
    clients: list[RegistryClient] = []

    async def factory(on_event: Callable[[Event], None] | None = None) -> RegistryClient:
        client = await RegistryClient.connect("127.0.0.1", registry.port, on_event=on_event)
        clients.append(client)
        return client

    yield factory
    for client in clients:
        await client.close()
