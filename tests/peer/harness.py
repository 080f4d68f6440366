"""Many PeerNodes in one event loop on 127.0.0.1, and ways to wait on them without sleeping."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from p2pchat.peer.events import PeerEvent
from p2pchat.peer.mesh import mesh_graph
from p2pchat.peer.node import PeerConfig, PeerNode
from p2pchat.protocol.messages import PROTOCOL_VERSION, PeerHello, encode
from p2pchat.trust import tls
from tests.simnet import Seen

PW = "secret-pw"
WAIT = 10.0


async def raw_link(
    target: PeerNode, as_peer: PeerNode, source: str = "127.0.0.1"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A hand-driven link to ``target``, in TLS with ``as_peer``'s certificate (it must be
    logged in), from the address ``source``: for tests that send a peer frames no
    well-behaved peer would."""
    me = as_peer.username or ""
    own = as_peer.local.own_files(me)
    assert own is not None, "log in first"
    reader, writer = await asyncio.open_connection(
        "127.0.0.1",
        target.port,
        ssl=tls.client(*own),
        server_hostname="",
        local_addr=(source, 0),
    )
    writer.write(encode(PeerHello(version=PROTOCOL_VERSION, username=me, nonce="ab" * 16)))
    welcome = json.loads(await asyncio.wait_for(reader.readline(), WAIT))
    assert welcome["type"] == "peer_welcome", welcome
    return reader, writer


class Changes:
    """Wakes waiters whenever any peer emits an event, so tests wait on conditions."""

    def __init__(self) -> None:
        self._cond = asyncio.Condition()
        self._pending = False
        self._task: asyncio.Future[None] | None = None

    def poke(self) -> None:
        if not self._pending:
            self._pending = True
            asyncio.get_running_loop().call_soon(self._notify)

    def _notify(self) -> None:
        self._pending = False
        self._task = asyncio.ensure_future(self._notify_all())

    async def _notify_all(self) -> None:
        async with self._cond:
            self._cond.notify_all()

    async def until(self, predicate: Callable[[], bool], timeout: float = WAIT) -> None:
        """Wait until ``predicate()`` holds, re-checking on every event (and at least every
        0.2 s, for state changes that emit none, like a neighbour's mesh announcement)."""

        async def wait() -> None:
            async with self._cond:
                while not predicate():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._cond.wait(), 0.2)

        await asyncio.wait_for(wait(), timeout)


@dataclass
class Peer(Seen):
    name: str
    node: PeerNode
    events: list[PeerEvent] = field(default_factory=list)


class Swarm:
    """Creates peers against one registry and checks the mesh they build."""

    def __init__(self, registry_port: int, max_links: int = 6) -> None:
        self.registry_port = registry_port
        self.max_links = max_links
        self.changes = Changes()
        self.peers: dict[str, Peer] = {}

    async def add(
        self,
        name: str,
        *,
        login: bool = True,
        register: bool = True,
        node: dict[str, Any] | None = None,
        **config: Any,
    ) -> Peer:
        """A new peer, logged in unless told not to; ``node``: more arguments of ``PeerNode``,
        ``config``: of its ``PeerConfig``."""
        events: list[PeerEvent] = []

        def on_event(event: PeerEvent) -> None:
            events.append(event)
            self.changes.poke()

        settings: dict[str, Any] = {"max_links": self.max_links, "dial_timeout": 1.0, **config}
        made = PeerNode(
            PeerConfig(registry_port=self.registry_port, listen_host="127.0.0.1", **settings),
            on_event=on_event,
            **(node or {}),
        )
        await made.start()
        peer = Peer(name, made, events)
        self.peers[name] = peer
        if register:
            await made.register(name, PW)
        if login:
            await made.login(name, PW)
        return peer

    def online(self, room: str, names: Iterable[str]) -> list[Peer]:
        return [self.peers[n] for n in names if self.peers[n].node.username is not None]

    def mesh_ready(self, room: str, names: Iterable[str]) -> bool:
        """Every edge of the room's mesh graph is a link both ends hold for the room."""
        names = list(names)
        graph = mesh_graph(names, self.max_links)
        for name in names:
            core = self.peers[name].node.core
            if room not in core.rooms:
                return False
            for neighbour in graph[name]:
                link = core.links.get(neighbour)
                if link is None or room not in link.view.mine:
                    return False
        return True

    async def wait_mesh(self, room: str, names: Iterable[str], timeout: float = WAIT) -> None:
        names = list(names)
        await self.changes.until(lambda: self.mesh_ready(room, names), timeout)

    async def wait_delivered(
        self, room: str, sender: str, text: str, receivers: Iterable[str], timeout: float = WAIT
    ) -> None:
        receivers = list(receivers)
        await self.changes.until(
            lambda: all(self.peers[r].got(room, sender, text) >= 1 for r in receivers), timeout
        )

    def counts(self, room: str) -> dict[str, Counter[tuple[str, str]]]:
        return {
            name: Counter((e.sender, e.text) for e in peer.room_texts(room))
            for name, peer in self.peers.items()
        }

    async def close(self) -> None:
        for peer in self.peers.values():
            with contextlib.suppress(Exception):
                await peer.node.close()
