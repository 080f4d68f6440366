"""Helpers for the history, order and sync tests: signed messages, and two or more peers'
sync engines wired together in flights (every frame in flight is delivered before the
answers go out), so that round trips can be counted."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from p2pchat.peer.history import History, Limits, StoredMessage
from p2pchat.peer.sync import Access, Outcome, Send, Sync, SyncConfig
from p2pchat.protocol.framing import MAX_FRAME
from p2pchat.protocol.messages import (
    SyncBatch,
    SyncDigest,
    SyncFrame,
    SyncRequest,
    SyncSummary,
    decode,
    peer_decoder,
)
from p2pchat.trust.signing import Signer, Verifier, room_message_bytes

ROOM = "lobby"
_signers: dict[str, Signer] = {}
_counter = itertools.count()


def signer(origin: str) -> Signer:
    if origin not in _signers:
        _signers[origin] = Signer(bytes([len(_signers) % 256]) * 32)
    return _signers[origin]


def message(
    origin: str,
    seq: int,
    *,
    room: str = ROOM,
    ts: float | None = None,
    text: str | None = None,
    sign: bool = False,
    key: bytes | None = None,
) -> StoredMessage:
    """A room message; its id is a deterministic function of the rest, signed on request
    (otherwise the signature is a placeholder, for tests that accept anything)."""
    s = signer(origin)
    key = key if key is not None else s.public_key
    ts = 1_000_000.0 + seq if ts is None else ts
    text = text if text is not None else f"{origin} #{seq}"
    mid = f"{next(_counter):032x}"
    sig = s.sign(room_message_bytes(room, origin, mid, seq, ts, text)) if sign else bytes(64)
    return StoredMessage(room, origin, key, mid, seq, ts, text, sig)


_verifier = Verifier()


def verify(msg: StoredMessage) -> bool:
    """What a peer's ``accept`` checks first: the signature, with the message's key."""
    data = room_message_bytes(msg.room, msg.origin, msg.id, msg.seq, msg.ts, msg.text)
    return _verifier.verify(msg.key, data, msg.sig)


@dataclass
class Node:
    name: str
    history: History
    sync: Sync
    caught: list[StoredMessage] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)


@dataclass
class Net:
    """Peers' sync engines delivering frames to each other in flights."""

    nodes: dict[str, Node] = field(default_factory=dict)
    now: float = 0.0
    wall: float = 2_000_000.0
    flights: int = 0
    bytes: int = 0
    frames: list[tuple[str, str, SyncFrame]] = field(default_factory=list)
    """Every frame delivered: (from, to, frame)."""
    drop: Callable[[str, str, SyncFrame], bool] = lambda src, dst, msg: False

    def add(
        self,
        name: str,
        *,
        access: Callable[[str, str], Access] | None = None,
        accept: Callable[[StoredMessage], bool] = lambda m: True,
        config: SyncConfig | None = None,
        limits: Limits | None = None,
        history: History | None = None,
    ) -> Node:
        h = history or History(":memory:", limits)
        s = Sync(
            h,
            access=access or (lambda room, peer: Access(True, 0.0)),
            accept=accept,
            config=config,
        )
        node = self.nodes[name] = Node(name, h, s)
        return node

    def run(self, sends: Iterable[tuple[str, Send]], max_flights: int = 50) -> int:
        """Deliver until quiet; the flights it took."""
        flight = list(sends)
        count = 0
        while flight and count < max_flights:
            count += 1
            nxt: list[tuple[str, Send]] = []
            for src, send in flight:
                assert len(send.frame) <= MAX_FRAME + 1, len(send.frame)
                msg = decode(peer_decoder, send.frame)
                assert isinstance(msg, SyncDigest | SyncSummary | SyncRequest | SyncBatch)
                if self.drop(src, send.peer, msg):
                    continue
                self.bytes += len(send.frame)
                self.frames.append((src, send.peer, msg))
                dst = self.nodes[send.peer]
                out = dst.sync.receive(src, msg, self.now, self.wall)
                dst.outcomes.append(out)
                dst.caught += [m for m, _, _ in out.caught]
                nxt += [(dst.name, s) for s in out.sends]
            flight = nxt
        self.flights += count
        return count

    def start(self, a: str, b: str, room: str = ROOM, both: bool = True) -> int:
        sends = [(a, s) for s in self.nodes[a].sync.start(room, b, self.now)]
        if both:
            sends += [(b, s) for s in self.nodes[b].sync.start(room, a, self.now)]
        return self.run(sends)

    def timer(self, name: str) -> int:
        node = self.nodes[name]
        return self.run([(name, s) for s in node.sync.timer(self.now)])

    def batch_ids(self) -> list[str]:
        """Ids of every message carried in a ``sync_batch``, in order, repeats kept."""
        return [
            e.id
            for _, _, f in self.frames
            if isinstance(f, SyncBatch)
            for part in f.streams
            for e in part.msgs
        ]


def ids(history: History, room: str = ROOM, n: int = 1_000_000) -> set[str]:
    return {m.id for m in history.last(room, n)}
