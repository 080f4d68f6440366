"""Drives a ``RegistryCore`` by hand: requests through the codec, hashing at once, a clock
that only moves when told. No sockets, no sleeping.

The core has a certificate authority of its own; ``WALL`` is the wall-clock time (what
certificates are dated with) when the harness clock reads 0."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pchat.protocol.messages import (
    PROTOCOL_VERSION,
    Error,
    Hello,
    LoggedIn,
    Login,
    Message,
    Ok,
    Ping,
    Register,
    RoomEvent,
    Welcome,
    b64,
    decode,
    decode_error,
    encode,
    request_decoder,
)
from p2pchat.registry import flows
from p2pchat.registry.core import (
    Action,
    Close,
    HashPassword,
    RegistryConfig,
    RegistryCore,
    Send,
    SendEvents,
    VerifyPassword,
)
from p2pchat.registry.passwords import Passwords
from p2pchat.registry.server import RegistryServer
from p2pchat.store import SqliteStore
from p2pchat.store.base import Store, StoreError
from p2pchat.trust import tls
from p2pchat.trust.certs import Authority, ca_key, private_pem
from p2pchat.trust.files import key_file, save_cert, write_private
from p2pchat.trust.signing import Signer

PW = "secret-pw"
WALL = 1_800_000_000.0
HELLO = b'{"type":"hello","id":1,"version":%d}\n' % PROTOCOL_VERSION
"""The first line of a session, as a client that writes frames by hand sends it."""


class Harness:
    """Runs the core's actions at once, hashing synchronously, and records what was sent.

    With ``hold_jobs``, password jobs are kept in ``jobs`` instead, to be finished by
    ``finish`` (tests of the work queue use it).
    """

    def __init__(
        self,
        timeout: float = 60.0,
        store: Store | None = None,
        hold_jobs: bool = False,
        authority: Authority | None = None,
        **config: Any,
    ) -> None:
        tokens = itertools.count(1)
        config.setdefault("register_burst", 10_000)
        self.authority = authority or Authority.create(WALL)
        self.core = RegistryCore(
            store or SqliteStore(":memory:"),
            RegistryConfig(timeout=timeout, udp_port=15500, **config),
            token_factory=lambda: f"tok{next(tokens)}",
            authority=self.authority,
            wall_offset=WALL,
        )
        self.passwords = Passwords("cheapest")
        self.now = 0.0
        self.out: dict[int, list[Message]] = defaultdict(list)
        self.closed: set[int] = set()
        self.hold_jobs = hold_jobs
        self.jobs: list[HashPassword | VerifyPassword] = []
        self._ids = itertools.count(1)
        self._conns = itertools.count(1)
        self._beats: dict[int, int] = defaultdict(int)

    @property
    def ca_key(self) -> bytes:
        """The raw public key of the core's CA (what peers check certificates with)."""
        return ca_key(self.authority.cert)

    @property
    def wall(self) -> float:
        """The wall-clock time now, as the core dates certificates."""
        return WALL + self.now

    def run(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                self.out[action.conn].append(action.msg)
            elif isinstance(action, SendEvents):
                for conn in action.conns:
                    self.out[conn].extend(action.events)
            elif isinstance(action, Close):
                self.closed.add(action.conn)
            elif self.hold_jobs:
                self.jobs.append(action)
            else:
                self.finish(action)

    def flush(self, budget: int = 1 << 30) -> None:
        """Held room events (``batch_events``) to at most ``budget`` sessions; by default,
        every round until none are held."""
        self.run(self.core.flush(budget))
        while budget >= 1 << 30 and self.core.events_waiting:
            self.run(self.core.flush(budget))

    def finish(self, job: HashPassword | VerifyPassword) -> None:
        if isinstance(job, HashPassword):
            digest = self.passwords.hash(job.request.password)
            self.run(self.core.register_hashed(job.conn, job.request, digest, self.now))
        else:
            ok = self.passwords.verify(job.password_hash, job.request.password)
            self.run(self.core.login_verified(job.conn, job.request, ok, self.now, job.ticket))

    def id(self) -> int:
        return next(self._ids)

    def connect(self, host: str = "10.0.0.1", greet: bool = True, cert: bytes | None = None) -> int:
        """A new session; ``cert``: the user certificate (DER) it showed in TLS."""
        conn = next(self._conns)
        self.run(self.core.connect(conn, host, self.now, cert))
        if greet:
            reply = self.req(conn, Hello(id=self.id(), version=PROTOCOL_VERSION))
            assert isinstance(reply, Welcome)
        return conn

    def send(self, conn: int, msg: Any) -> None:
        """A request through the codec, as the shell does (the field rules are the
        decoder's)."""
        frame = encode(msg)
        try:
            request = decode(request_decoder, frame)
        except msgspec.MsgspecError as exc:
            self.out[conn].append(decode_error(frame, exc))
        else:
            self.run(self.core.handle(conn, request, self.now))

    def req(self, conn: int, msg: Any) -> Message:
        """Send a request; return its reply (the one message carrying its id)."""
        before = len(self.out[conn])
        self.send(conn, msg)
        replies = [m for m in self.out[conn][before:] if getattr(m, "id", None) == msg.id]
        assert len(replies) == 1, self.out[conn][before:]
        return replies[0]

    def events(self, conn: int) -> list[RoomEvent]:
        found = [m for m in self.out[conn] if isinstance(m, RoomEvent)]
        self.out[conn] = [m for m in self.out[conn] if not isinstance(m, RoomEvent)]
        return found

    def register(self, conn: int, name: str) -> None:
        reply = self.req(conn, Register(id=self.id(), username=name, password=PW))
        assert isinstance(reply, Ok), reply

    def user(
        self, name: str, host: str = "10.0.0.1", port: int = 7000, key: Signer | None = None
    ) -> int:
        """A connected, registered, logged-in session for ``name`` (with ``key``'s public
        half in the login, if given)."""
        conn = self.connect(host)
        if self.core.store.get_account(name) is None:
            self.register(conn, name)
        public = b64(key.public_key) if key is not None else None
        login = Login(id=self.id(), username=name, password=PW, port=port, key=public)
        reply = self.req(conn, login)
        assert isinstance(reply, LoggedIn), reply
        return conn

    def logged_in(self, conn: int) -> LoggedIn:
        """The last ``logged_in`` reply the session got."""
        return next(m for m in reversed(self.out[conn]) if isinstance(m, LoggedIn))

    def ping(self, conn: int, seq: int | None = None, request_id: int | None = None) -> Ping:
        """The session's next heartbeat (or the one numbered ``seq``), MAC'd with its key."""
        if seq is None:
            self._beats[conn] += 1
            seq = self._beats[conn]
        return flows.heartbeat(self.logged_in(conn), seq, request_id)


def code(msg: Message) -> str:
    assert isinstance(msg, Error), msg
    return msg.code


def login(name: str, password: str, port: int = 7000, **kw: Any) -> Login:
    return Login(id=1000, username=name, password=password, port=port, **kw)


class FaultyStore:
    """A store whose named methods fail (``StoreError``) while listed in ``failing``: a full
    disk, an I/O error or a damaged page, as the registry sees them."""

    def __init__(self, inner: Store | None = None) -> None:
        self.inner = inner or SqliteStore(":memory:")
        self.failing: set[str] = set()
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            if name in self.failing or "*" in self.failing:
                raise StoreError(f"{name}: disk I/O error")
            return method(*args, **kwargs)

        return call


async def start_server(**kw: Any) -> RegistryServer:
    """A started ``RegistryServer`` on 127.0.0.1 (ephemeral ports), cheapest hashing."""
    server = RegistryServer(
        kw.pop("store", None) or SqliteStore(":memory:"),
        host="127.0.0.1",
        port=0,
        udp_port=0,
        config=kw.pop("config", None) or RegistryConfig(),
        passwords=Passwords("cheapest"),
        **kw,
    )
    await server.start()
    return server


async def open_tls(
    port: int, source: str = "127.0.0.1", **kw: Any
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw TLS connection to a registry on 127.0.0.1, for tests that write frames by hand
    (``kw``: more for ``asyncio.open_connection``)."""
    return await asyncio.open_connection(
        "127.0.0.1",
        port,
        ssl=kw.pop("ssl", None) or tls.client(),
        server_hostname="",
        local_addr=(source, 0),
        **kw,
    )


def private_key(signer: Signer) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(signer.seed)


def identity_files(
    folder: Path,
    authority: Authority,
    username: str,
    signer: Signer,
    *,
    issued: float | None = None,
    lifetime: float = 24 * 3600.0,
) -> tuple[Path, Path]:
    """A user's certificate (issued by ``authority`` at ``issued``, wall clock) and key, as a
    peer keeps them: what ``RegistryClient.connect(cert=...)`` shows in TLS."""
    when = time.time() if issued is None else issued
    der = authority.issue(username, signer.public_key, when, lifetime)
    cert = save_cert(folder, username, der)
    key = key_file(folder, username)
    write_private(key, private_pem(private_key(signer)))
    return cert, key
