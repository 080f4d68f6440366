"""The shared listener alone (the registry's and the peers' tests drive it through them): the
pool of handshakes, and its caps counting until each connection ends."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import pytest

from p2pchat.listener import Listener, Slot
from p2pchat.trust import tls
from tests.listening import WAIT, until


class _Quiet(asyncio.Protocol):
    """An owner's protocol that says nothing and releases its slot at the end."""

    def __init__(self, slot: Slot) -> None:
        self.slot = slot

    def connection_lost(self, exc: Exception | None) -> None:
        self.slot.release()


@pytest.fixture
async def listener() -> AsyncIterator[Listener]:
    listener = Listener(
        _Quiet,
        host="127.0.0.1",
        port=0,
        tls=tls.peer_server(time.time()),
        refuse_full=b"full\n",
        refuse_address=b"address\n",
        max_connections=100,
        max_per_address=100,
        max_opening=3,
        log=logging.getLogger("tests.listener"),
    )
    await listener.start()
    yield listener
    listener.close()


async def stranger(port: int, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection from ``source`` that never starts its TLS handshake."""
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def test_a_full_pool_of_handshakes_closes_the_oldest_of_the_busiest_address(
    listener: Listener,
) -> None:
    oldest = await stranger(listener.port, "127.0.0.3")
    second, third = [await stranger(listener.port, "127.0.0.2") for _ in range(2)]
    await until(lambda: listener.held == 3)
    newcomer = await stranger(listener.port, "127.0.0.4")
    assert await asyncio.wait_for(second[0].read(), WAIT) == b""  # not the oldest of all
    await until(lambda: listener.per_address == {"127.0.0.3": 1, "127.0.0.2": 1, "127.0.0.4": 1})
    assert listener.evicted == 1
    local = [await stranger(listener.port, "127.0.0.1") for _ in range(5)]  # exempt: not pooled
    await until(lambda: listener.held == 8)
    assert listener.evicted == 1 and listener.refused == 0
    for _, writer in [oldest, second, third, newcomer, *local]:
        writer.close()
    await until(lambda: listener.held == 0 and not listener.per_address)


async def test_beyond_the_caps_a_connection_gets_one_frame_and_no_handshake(
    listener: Listener,
) -> None:
    listener.max_per_address, listener.max_connections = 2, 3
    held = [await stranger(listener.port, "127.0.0.2") for _ in range(2)]
    await until(lambda: listener.held == 2)
    reader, _ = await stranger(listener.port, "127.0.0.2")
    assert await asyncio.wait_for(reader.read(), WAIT) == b"address\n"
    held.append(await stranger(listener.port, "127.0.0.1"))  # exempt from the address cap
    await until(lambda: listener.held == 3)
    reader, _ = await stranger(listener.port, "127.0.0.1")
    assert await asyncio.wait_for(reader.read(), WAIT) == b"full\n"
    held[0][1].close()  # one ends: its place is free again
    await until(lambda: listener.held == 2)
    held.append(await stranger(listener.port, "127.0.0.2"))
    await until(lambda: listener.held == 3)
    assert listener.refused == 2
    for _, writer in held:
        writer.close()
