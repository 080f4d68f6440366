"""50,000 hostile frames at a peer core: no exception escapes, and it keeps serving everyone.

Frames come from a seeded generator (so a failure names its seed): random bytes, random JSON,
valid frames of every type with fields mutated, deleted, retyped or inflated, deep nesting, and
frames cut or glued together. They go to links in every state of the handshake and to open
links; afterwards an honest member's message must still reach the peer and be forwarded.
"""

from __future__ import annotations

import json
import random
from typing import Any

from p2pchat.peer.events import RoomText
from p2pchat.protocol.framing import MAX_FRAME
from p2pchat.protocol.messages import (
    DirectAck,
    DirectMessage,
    Graft,
    IHave,
    MeshRooms,
    PeerError,
    PeerHello,
    PeerWelcome,
    Prune,
    RoomMessage,
    encode,
)
from tests.peer.test_core import Driver, Registry, room_with

FRAMES = 50_000

VALID: list[bytes] = [
    encode(PeerHello(version=2, username="abe", nonce="ab" * 16)),
    encode(PeerWelcome(version=2, username="abe", cert="AAAA", sig="B" * 86)),
    encode(MeshRooms(rooms=["lobby", "other"])),
    encode(DirectMessage(id="d" * 32, sender="abe", text="hello", ts=1.0)),
    encode(DirectAck(id="d" * 32)),
    encode(
        RoomMessage(
            id="e" * 32, room="lobby", origin="abe", seq=1, text="hi", ts=1.0, hops=3, sig="C" * 86
        )
    ),
    encode(PeerError(code="bad_request", reason="x", id="d" * 32)),
    encode(IHave(room="lobby", origin="abe", ids=["e" * 32])),
    encode(Graft(room="lobby", origin="abe", ids=["e" * 32])),
    encode(Prune(room="lobby", origin="abe")),
]

ODD_VALUES: list[Any] = [
    None,
    True,
    -1,
    2**70,
    1e308,
    "",
    "x" * 5000,
    "\u202e\u2028\x00",
    [],
    {},
    [[[[[]]]]],
    {"type": "room_msg"},
]


def mutate(rng: random.Random, frame: bytes) -> bytes:
    obj = json.loads(frame)
    for _ in range(rng.randint(1, 3)):
        keys = list(obj)
        choice = rng.random()
        if choice < 0.3 and keys:
            del obj[rng.choice(keys)]
        elif choice < 0.7 and keys:
            obj[rng.choice(keys)] = rng.choice(ODD_VALUES)
        elif choice < 0.85:
            obj[rng.choice(["type", "x", "id", "hops", "room"])] = rng.choice(ODD_VALUES)
        else:
            obj["type"] = rng.choice(["room_msg", "dm", "mesh", "peer_hello", "warp", ""])
    return json.dumps(obj).encode() + b"\n"


def hostile(rng: random.Random) -> bytes:
    kind = rng.random()
    if kind < 0.15:
        return rng.randbytes(rng.randint(1, 300)) + b"\n"
    if kind < 0.25:
        depth = rng.randint(10, 30_000)
        return b'{"type":"room_msg","x":' + b"[" * depth + b"]" * depth + b"}\n"
    if kind < 0.35:
        frame = rng.choice(VALID)
        cut = rng.randint(1, len(frame) - 1)
        return frame[:cut] + (b"\n" if rng.random() < 0.5 else b"")
    if kind < 0.4:
        return b"x" * rng.randint(MAX_FRAME - 10, MAX_FRAME + 10) + b"\n"
    if kind < 0.45:
        return json.dumps(rng.choice(ODD_VALUES)).encode() + b"\n"
    return mutate(rng, rng.choice(VALID))


def test_fifty_thousand_hostile_frames_change_nothing_for_honest_members() -> None:
    rng = random.Random(20261126)
    registry = Registry()
    alice = Driver(registry)
    alice.login()
    room_with(alice, "abe", "aaron")  # both dial us, and win crossed dials
    honest = alice.link_from("aaron")
    alice.feed(honest, MeshRooms(rooms=["lobby"]))
    sent = 0
    links: list[int] = []
    while sent < FRAMES:
        if not links or rng.random() < 0.01:  # a new hostile connection, in some state
            if rng.random() < 0.5:
                link = alice.link_from("abe")
            else:
                link = alice.accept(registry.certs["abe"])
            links.append(link)
        link = rng.choice(links)
        if link in alice.closed:
            alice.apply(alice.core.link_closed(link, alice.now))
            links.remove(link)
            continue
        batch = b"".join(hostile(rng) for _ in range(rng.randint(1, 5)))
        alice.feed(link, batch)  # an exception here fails the test, naming nothing more
        sent += 1
        if rng.random() < 0.001:
            alice.advance(rng.random() * 20)
    assert honest not in alice.closed
    before = len([e for e in alice.shown if isinstance(e, RoomText)])
    msg = registry.signed(
        RoomMessage(
            id="c" * 32, room="lobby", origin="aaron", seq=1, text="still here", ts=1.0, hops=5
        )
    )
    alice.feed(honest, msg)
    texts = [e for e in alice.shown if isinstance(e, RoomText)]
    assert len(texts) == before + 1 and texts[-1].text == "still here"
    assert alice.core.status().registry
