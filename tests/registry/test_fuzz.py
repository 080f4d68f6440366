"""100,000 fuzzed frames to a real registry over TLS: random bytes, truncated and mutated valid
requests, random JSON and deeply nested JSON, on logged-in sessions that showed a certificate
of the registry (so ``resume`` and ``renew`` can succeed as well as fail). No frame may raise
an unhandled exception or an ``internal`` error, and the registry must serve afterwards.

A seeded generator (not hypothesis): the same 100,000 frames on every run, made in about a
second, so that a failure can be replayed by its seed and index.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from p2pchat.protocol.framing import MAX_FRAME
from p2pchat.protocol.messages import PROTOCOL_VERSION, Renew, Resume, b64
from p2pchat.registry.core import RegistryConfig, Send
from p2pchat.registry.passwords import Passwords
from p2pchat.registry.server import RegistryServer
from p2pchat.store import SqliteStore
from p2pchat.trust import tls
from p2pchat.trust.signing import Signer
from tests.registry.harness import HELLO, identity_files, open_tls

FRAMES = 100_000
CONNECTIONS = 8
SEED = 20_261_108
PW = "fuzz-password"
WAIT = 60.0

TYPES = [
    "hello", "register", "login", "logout", "ping", "search", "users", "create_room",
    "join_room", "leave_room", "add_member", "remove_member", "unban", "rooms", "members",
    "resume", "renew", "vouch", "welcome", "error", "nonsense",
]  # fmt: skip
KEYS = [b64(bytes([i]) * 32) for i in range(3)]
NAMES = ["fuzz0", "fuzz1", "fuzz2", "lobby", "den", "Fuzz0", "a1ice", "x" * 32, "room.1"]


def _value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(10 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 1, 7, 2**53, 2**63 - 1, -(2**63), rng.randrange(-1000, 1000)])
    if kind == 3:
        return rng.choice([0.5, -1e308, 1e-300, 3.0])
    if kind in (4, 5):
        pool = [*NAMES, "", " ", "é" * 40, "\u2028", "\x00", "a b", "t" * 200, "127.0.0.1"]
        return rng.choice(pool)
    if kind in (6, 7):
        return [_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(["id", "type", "x", "room"]): _value(rng, depth + 1)}


def _request(rng: random.Random) -> dict[str, Any]:
    """A request that is valid, or nearly."""
    kind = rng.choice(TYPES)
    name = rng.choice(NAMES)
    fields: dict[str, Any] = {"type": kind, "id": rng.randrange(1, 10_000)}
    extra = {
        "hello": {"version": rng.choice([2, 2, 2, 1, 3])},
        "register": {"username": name, "password": rng.choice([PW, "short", "p" * 300])},
        "login": {
            "username": name,
            "password": PW,
            "port": rng.choice([7000, 0, 70000]),
            "key": rng.choice([None, *KEYS, "k", KEYS[0] + "="]),
        },
        "resume": {"port": rng.choice([7000, 0]), "host": rng.choice([None, "127.0.0.1", "a b"])},
        "ping": {
            "session": rng.choice(["t", "x" * 64]),
            "seq": rng.choice([1, 0, 2**53, 2**60]),
            "mac": rng.choice(["0" * 64, "A" * 64, "0"]),
        },
        "search": {"username": name},
        "users": {"after": rng.choice([None, name]), "limit": rng.randrange(-5, 300)},
        "create_room": {"room": name, "private": rng.random() < 0.5},
        "join_room": {"room": name},
        "leave_room": {"room": name},
        "add_member": {
            "room": name,
            "username": rng.choice(NAMES),
            "may_add": rng.choice([None, True]),
        },
        "remove_member": {"room": name, "username": rng.choice(NAMES), "ban": rng.random() < 0.3},
        "unban": {"room": name, "username": rng.choice(NAMES)},
        "rooms": {"mine": rng.random() < 0.5, "after": rng.choice([None, name])},
        "members": {"room": name, "limit": rng.randrange(0, 5)},
        "vouch": {"username": name, "peer": name, "role": "dial", "nonce": "n", "proof": "p"},
    }.get(kind, {})
    fields.update(extra)
    return fields


def fuzz_frames(seed: int, count: int) -> list[bytes]:
    rng = random.Random(seed)
    frames: list[bytes] = []
    while len(frames) < count:
        kind = rng.randrange(100)
        if kind < 15:  # random bytes
            frame = rng.randbytes(rng.randrange(1, 200))
        elif kind < 35:  # a valid-looking request, truncated
            whole = json.dumps(_request(rng)).encode()
            frame = whole[: rng.randrange(1, len(whole) + 1)]
        elif kind < 60:  # a valid-looking request with bytes flipped, inserted or removed
            data = bytearray(json.dumps(_request(rng)).encode())
            for _ in range(rng.randrange(1, 4)):
                at = rng.randrange(len(data))
                op = rng.randrange(3)
                if op == 0:
                    data[at] = rng.randrange(256)
                elif op == 1:
                    data.insert(at, rng.choice(b'{}[]",:\\0123456789e-+ntfu'))
                elif len(data) > 1:
                    del data[at]
            frame = bytes(data)
        elif kind < 80:  # a valid request, fields of any type
            fields = _request(rng)
            for key in rng.sample(list(fields), k=rng.randrange(len(fields) + 1)):
                fields[key] = _value(rng)
            frame = json.dumps(fields).encode()
        elif kind < 92:  # a valid request as it stands
            frame = json.dumps(_request(rng)).encode()
        elif kind < 97:  # nesting, shallow to far past the recursion limit (within a frame)
            depth = rng.choice([10, 500, 5_000, 12_000])
            nest = rng.choice([b"[" * depth + b"]" * depth, b'{"a":' * depth + b"1" + b"}" * depth])
            fields = _request(rng)
            head = json.dumps(fields).encode()[:-1]
            frame = rng.choice([nest, head + b',"deep":' + nest + b"}", b'{"id":' + nest + b"}"])
        else:  # random JSON
            frame = json.dumps(_value(rng)).encode()
        frames.append(frame.replace(b"\n", b" ").replace(b"\r", b" ")[:MAX_FRAME])
    return frames


async def _drive(
    port: int, frames: list[bytes], account: str, identity: tuple[Path, Path], key: str
) -> None:
    """Send ``frames`` in batches on a session logged in as ``account`` (showing its
    certificate in TLS), each batch followed by a marker request whose answer shows that the
    batch has been read and answered."""
    context = tls.client(*identity)
    reader, writer = await open_tls(port, ssl=context, limit=1 << 22)
    login = {"type": "login", "id": 1, "username": account, "password": PW, "port": 7000}
    login["key"] = key
    writer.write(HELLO + json.dumps(login).encode() + b"\n")
    for start in range(0, len(frames), 2000):
        marker = 10**9 + start
        tail = b'{"type":"hello","id":%d,"version":%d}\n' % (marker, PROTOCOL_VERSION)
        writer.write(b"\n".join(frames[start : start + 2000]) + b"\n" + tail)
        while True:
            data = await asyncio.wait_for(reader.readline(), WAIT)
            assert data, "the registry closed a fuzzing session"
            if f'"id":{marker},'.encode() in data and b'"welcome"' in data:
                break
    writer.close()


async def test_a_hundred_thousand_fuzzed_frames(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    store = SqliteStore(":memory:")
    passwords = Passwords("cheapest")
    for i in range(CONNECTIONS):
        store.create_account(f"fuzz{i}", passwords.hash(PW))
    config = RegistryConfig(register_burst=1_000_000, room_change_burst=1_000_000)
    server = RegistryServer(
        store, host="127.0.0.1", port=0, udp_port=0, config=config, passwords=passwords
    )
    await server.start()
    signers = [Signer() for _ in range(CONNECTIONS)]
    identities = [
        identity_files(tmp_path, server.authority, f"fuzz{i}", signers[i])
        for i in range(CONNECTIONS)
    ]
    loop = asyncio.get_running_loop()
    unhandled: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: unhandled.append(context))
    frames = fuzz_frames(SEED, FRAMES)
    share = FRAMES // CONNECTIONS
    handled = [0]
    handle = server._handle

    def counting(session: Any, frame: bytes) -> None:
        handled[0] += 1
        handle(session, frame)

    server._handle = counting  # type: ignore[method-assign]
    answered: Counter[str] = Counter()  # what the trust requests got: they are exercised
    core_handle = server.core.handle

    def tallying(conn: int, request: Any, now: float) -> list[Any]:
        actions = core_handle(conn, request, now)
        if isinstance(request, Resume | Renew):
            for action in actions:
                if isinstance(action, Send) and getattr(action.msg, "id", None) == request.id:
                    outcome = getattr(action.msg, "code", type(action.msg).__name__)
                    answered[f"{type(request).__name__}:{outcome}"] += 1
        return actions

    server.core.handle = tallying  # type: ignore[method-assign]
    try:
        with caplog.at_level(logging.WARNING):
            await asyncio.gather(
                *(
                    _drive(
                        server.port,
                        frames[i * share : (i + 1) * share],
                        f"fuzz{i}",
                        identities[i],
                        b64(signers[i].public_key),
                    )
                    for i in range(CONNECTIONS)
                )
            )
        markers = CONNECTIONS * (2 + share // 2000 + (share % 2000 > 0))
        assert handled[0] == FRAMES + markers  # every fuzzed frame reached the registry
        problems = [
            r.getMessage()
            for r in caplog.records
            if r.levelno >= logging.ERROR or r.exc_info is not None
        ]
        assert problems == [] and unhandled == []
        for outcome in ("Resume:LoggedIn", "Resume:cert_refused", "Renew:CertificateReply"):
            assert answered[outcome] > 0, answered
        # still serving (from another address: the fuzz's failed logins slowed 127.0.0.1)
        reader, writer = await open_tls(server.port, "127.0.0.2")
        for request, expect in [
            ({"type": "hello", "id": 1, "version": PROTOCOL_VERSION}, "welcome"),
            ({"type": "register", "id": 2, "username": "survivor", "password": PW}, "ok"),
            (
                {"type": "login", "id": 3, "username": "survivor", "password": PW, "port": 1},
                "logged_in",
            ),
            ({"type": "create_room", "id": 4, "room": "after-the-storm"}, "ok"),
            ({"type": "search", "id": 5, "username": "fuzz1"}, "search_result"),
        ]:
            writer.write(json.dumps(request).encode() + b"\n")
            reply = json.loads(await asyncio.wait_for(reader.readline(), WAIT))
            assert reply["type"] == expect, (request, reply)
        writer.close()
    finally:
        loop.set_exception_handler(None)
        await server.close()


def test_the_fuzz_frames_are_the_same_every_run() -> None:
    assert fuzz_frames(SEED, 500) == fuzz_frames(SEED, 500)
    kinds = fuzz_frames(SEED, 5_000)
    assert any(len(f) > 10_000 for f in kinds)  # deep nesting is in there
    assert any(f.startswith(b'{"type": "login"') for f in kinds)
