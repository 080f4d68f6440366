"""``RegistryClient`` over real sockets on 127.0.0.1: what a session costs the client."""

from __future__ import annotations

from p2pchat.registry.client import RegistryClient
from tests.listening import traced
from tests.registry.harness import start_server


async def test_a_client_session_costs_little_memory() -> None:
    """asyncio's own TLS layer allocates, and fills, a 256 KiB read buffer per connection:
    each client cost 300 KiB, so a benchmark could not hold 100,000 sessions. Through the
    listener's TLS layer a session costs both ends together about 60 KiB (the registry's
    side is in this process too)."""
    server = await start_server()
    count = 30
    clients: list[RegistryClient] = []
    try:
        with traced() as grown:
            for _ in range(count):
                clients.append(await RegistryClient.connect("127.0.0.1", server.port))
            per_session = grown() / count
        assert all(c.welcome is not None for c in clients)
        assert per_session < 128 * 1024, per_session
    finally:
        for client in clients:
            await client.close()
        await server.close()
