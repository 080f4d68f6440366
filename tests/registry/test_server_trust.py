"""Issue 10 over real sockets on 127.0.0.1: what an eavesdropper sees, a client that will not
speak TLS, replayed UDP heartbeats, and coming back with a certificate after a restart."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import pytest

from p2pchat.protocol.messages import Bye, RoomEvent, encode, unb64
from p2pchat.registry.client import RegistryClient, RegistryClosed, RegistryError
from p2pchat.registry.core import RegistryConfig
from p2pchat.registry.passwords import Passwords
from p2pchat.registry.server import RegistryServer
from p2pchat.store import SqliteStore
from p2pchat.trust.certs import Authority, ca_key, read_user_cert
from p2pchat.trust.signing import Signer
from tests.registry.harness import HELLO, PW, identity_files, start_server

WAIT = 10.0


class Relay:
    """A TCP relay on 127.0.0.1 in front of the registry that records every byte, both ways:
    what an eavesdropper on the path would capture."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.captured = bytearray()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    self.captured += data
                    dst.write(data)
                    await dst.drain()
            dst.close()

        tasks = [
            asyncio.create_task(pipe(reader, up_writer)),
            asyncio.create_task(pipe(up_reader, writer)),
        ]
        self._tasks.update(tasks)
        await asyncio.gather(*tasks)

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()


@pytest.mark.parametrize("secure", [True, False], ids=["tls", "plain-benchmark-switch"])
async def test_an_eavesdropper_sees_no_password_key_or_request(secure: bool) -> None:
    """With TLS, nothing a client says or is told is readable on the path. The plain-TCP
    benchmark switch shows what the same capture holds without it."""
    server = await start_server(secure=secure)
    relay = Relay(server.port)
    await relay.start()
    try:
        key = Signer()
        client = await RegistryClient.connect("127.0.0.1", relay.port, secure=secure)
        await client.register("eavesdropped", "hunter2-password")
        session = await client.login(
            "eavesdropped", "hunter2-password", 7000, heartbeat=0, key=key.public_key
        )
        await client.create_room("backroom")
        assert [r.room for r in await client.rooms()] == ["backroom"]
        await client.ping_tcp()
        await client.close()
        capture = bytes(relay.captured)
        assert len(capture) > 1000  # the relay saw the whole conversation
        secrets = [
            b"login",
            b"register",
            b"hunter2-password",
            b"eavesdropped",
            b"backroom",
            session.heartbeat_key.encode(),
            unb64(session.heartbeat_key),
            session.session.encode(),
            b"p2pchat",  # even the registry's certificate travels encrypted (TLS 1.3)
        ]
        seen = [s for s in secrets if s in capture]
        if secure:
            assert seen == []
        else:  # the control: the relay does capture what a client says and is told
            assert {b"login", b"hunter2-password", session.session.encode()} <= set(seen)
        # a UDP heartbeat names the session and carries a MAC: never the key or a password
        ping = encode(client.next_ping())
        assert (
            unb64(session.heartbeat_key) not in ping and session.heartbeat_key.encode() not in ping
        )
    finally:
        await relay.close()
        await server.close()


async def test_a_client_that_will_not_speak_tls_gets_no_session_and_others_go_on() -> None:
    server = await start_server()
    try:
        bystander = await RegistryClient.connect("127.0.0.1", server.port)
        await bystander.register("alice", PW)
        await bystander.login("alice", PW, 7000, heartbeat=0)
        sessions = len(server.core.sessions)
        # a downgrade: the same requests in plain TCP
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        register = {"type": "register", "id": 2, "username": "mallory", "password": PW}
        login = {"type": "login", "id": 3, "username": "alice", "password": PW, "port": 1}
        writer.write(
            HELLO + json.dumps(register).encode() + b"\n" + json.dumps(login).encode() + b"\n"
        )
        answer = await asyncio.wait_for(reader.read(), WAIT)  # until the registry closes it
        assert b"welcome" not in answer and b"ok" not in answer and b"logged_in" not in answer
        writer.close()
        assert server.core.store.get_account("mallory") is None
        assert len(server.core.sessions) == sessions  # it never became a session
        # the client's own plain switch does no better
        with pytest.raises((RegistryClosed, ConnectionError, TimeoutError)):
            await RegistryClient.connect("127.0.0.1", server.port, secure=False, timeout=WAIT)
        # everyone else is served as before
        assert (await bystander.search("alice")).online
        newcomer = await RegistryClient.connect("127.0.0.1", server.port)
        await newcomer.register("bob", PW)
        await newcomer.login("bob", PW, 7001, heartbeat=0)
        await newcomer.close()
        await bystander.close()
    finally:
        await server.close()


async def test_a_replayed_udp_heartbeat_does_not_keep_a_silent_user_online() -> None:
    """alice sends one heartbeat and falls silent; her datagram, captured, is sent again (and
    forged variants) over real UDP: she is logged out at the timeout after her real one."""
    clock = [1000.0]
    server = await start_server(config=RegistryConfig(timeout=60.0), clock=lambda: clock[0])
    verdicts: asyncio.Queue[bool] = asyncio.Queue()
    heartbeat = server.core.heartbeat

    def recording(ping: Any, now: float) -> bool:
        ok = heartbeat(ping, now)
        verdicts.put_nowait(ok)
        return ok

    server.core.heartbeat = recording  # type: ignore[method-assign]
    try:
        alice = await RegistryClient.connect("127.0.0.1", server.port)
        await alice.register("alice", PW)
        await alice.login("alice", PW, 7000, heartbeat=0)  # silent: we send for her
        events = alice.events()
        real = encode(alice.next_ping())
        stale_seq = encode(alice.next_ping())  # made, never sent: a later replay of it...
        later = alice.next_ping()
        forged = [
            real,
            real.replace(b'"seq":1', b'"seq":9'),  # the next seq, the old MAC
            encode(type(later)(session=later.session, seq=2**53, mac="0" * 64)),
        ]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.sendto(real, ("127.0.0.1", server.udp_port))
            assert await asyncio.wait_for(verdicts.get(), WAIT)  # heard at 1000
            udp.sendto(stale_seq, ("127.0.0.1", server.udp_port))  # seq 2 at 1000: fine
            assert await asyncio.wait_for(verdicts.get(), WAIT)
            for step in range(1, 40):  # then only replays and forgeries, every 1.5 s
                clock[0] = 1000.0 + 1.5 * step
                for frame in [*forged, stale_seq]:
                    udp.sendto(frame, ("127.0.0.1", server.udp_port))
                for _ in range(len(forged) + 1):
                    assert not await asyncio.wait_for(verdicts.get(), WAIT)
        clock[0] = 1059.9
        server.on_timer()
        assert "alice" in server.core.online
        clock[0] = 1060.0  # the timeout after the last real heartbeat
        server.on_timer()
        bye = await asyncio.wait_for(anext(events), WAIT)
        assert isinstance(bye, Bye) and bye.code == "timeout"
        await asyncio.wait_for(alice.closed.wait(), WAIT)
        await alice.close()
    finally:
        await server.close()


# ------------------------------------------------------------------ certificates and resume


class CountingPasswords(Passwords):
    """Counts every Argon2 hash and check the registry runs."""

    def __init__(self) -> None:
        super().__init__("cheapest")
        self.runs = 0

    def hash(self, password: str) -> str:
        self.runs += 1
        return super().hash(password)

    def verify(self, password_hash: str | None, password: str) -> bool:
        self.runs += 1
        return super().verify(password_hash, password)


async def _registry(db: Path, authority: Authority, passwords: Passwords) -> RegistryServer:
    server = RegistryServer(
        SqliteStore(db),
        host="127.0.0.1",
        port=0,
        udp_port=0,
        passwords=passwords,
        authority=authority,
    )
    await server.start()
    return server


async def _stop(server: RegistryServer) -> None:
    await server.close()
    server.core.store.close()


async def test_a_peer_comes_back_after_a_restart_with_its_certificate_and_no_password_hash(
    tmp_path: Path,
) -> None:
    db, authority, key = tmp_path / "r.db", Authority.create(time.time()), Signer()
    server = await _registry(db, authority, Passwords("cheapest"))
    alice = await RegistryClient.connect("127.0.0.1", server.port)
    await alice.register("alice", PW)
    await alice.register("bob", PW)
    session = await alice.login("alice", PW, 7001, key=key.public_key)
    assert alice.fingerprint == authority.fingerprint
    cert = read_user_cert(unb64(session.cert or ""), ca_key(authority.cert), time.time())
    assert (cert.username, cert.public_key) == ("alice", key.public_key)
    await alice.create_room("lobby")
    await alice.add_member("lobby", "bob")
    identity = identity_files(tmp_path, authority, "alice", key)
    await alice.close()
    await _stop(server)

    passwords = CountingPasswords()
    server = await _registry(db, authority, passwords)
    try:
        inbox: asyncio.Queue[Any] = asyncio.Queue()
        bob = await RegistryClient.connect("127.0.0.1", server.port, on_event=inbox.put_nowait)
        await bob.login("bob", PW, 7002)
        assert passwords.runs == 1
        alice = await RegistryClient.connect(
            "127.0.0.1", server.port, pinned=authority.fingerprint, cert=identity
        )
        back = await alice.resume(7001)
        assert passwords.runs == 1 and len(server.core.jobs) == 0  # no hash for her
        assert (back.username, back.port) == ("alice", 7001)
        assert (
            read_user_cert(unb64(back.cert or ""), ca_key(authority.cert), time.time()).public_key
            == key.public_key
        )
        event = await asyncio.wait_for(inbox.get(), WAIT)
        assert isinstance(event, RoomEvent)
        assert (event.username, event.change, event.port) == ("alice", "online", 7001)
        assert event.key is not None and unb64(event.key) == key.public_key
        members = await bob.members("lobby")
        assert [(m.username, m.online, m.key is not None) for m in members] == [
            ("alice", True, True),
            ("bob", True, False),  # bob logged in without a key
        ]
        renewed = await alice.renew()
        fresh = read_user_cert(renewed, ca_key(authority.cert), time.time())
        assert (fresh.username, fresh.public_key) == ("alice", key.public_key)
        await alice.ping_tcp()  # her heartbeats count
        await bob.close()
        await alice.close()
    finally:
        await _stop(server)


async def test_a_resumed_session_heartbeats_as_a_login_does(tmp_path: Path) -> None:
    """``resume`` takes ``heartbeat`` as ``login`` does: 0 sends none, and the session then
    ends at the timeout (a load generator holding thousands of sessions needs no UDP socket
    for each)."""
    clock = [1000.0]
    server = await start_server(config=RegistryConfig(timeout=60.0), clock=lambda: clock[0])
    try:
        key = Signer()
        setup = await RegistryClient.connect("127.0.0.1", server.port)
        await setup.register("alice", PW)
        await setup.login("alice", PW, 7000, key=key.public_key, heartbeat=0)
        await setup.close()
        identity = identity_files(tmp_path, server.authority, "alice", key)
        client = await RegistryClient.connect("127.0.0.1", server.port, cert=identity)
        events = client.events()
        await client.resume(7000, heartbeat=0)
        assert client._heartbeat_task is None
        clock[0] = 1060.0
        server.on_timer()
        bye = await asyncio.wait_for(anext(events), WAIT)
        assert isinstance(bye, Bye) and bye.code == "timeout"
        await client.close()
    finally:
        await server.close()


@pytest.mark.parametrize("case", ["no certificate", "expired", "another machine's key"])
async def test_resume_is_refused_with_cert_refused_and_the_password_still_works(
    tmp_path: Path, case: str
) -> None:
    server = await start_server()
    try:
        key = Signer()
        setup = await RegistryClient.connect("127.0.0.1", server.port)
        await setup.register("alice", PW)
        await setup.login("alice", PW, 7000, key=key.public_key, heartbeat=0)
        await setup.logout()
        if case == "another machine's key":
            await setup.login("alice", PW, 7000, key=Signer().public_key, heartbeat=0)
            await setup.logout()
        await setup.close()
        identity = None
        if case != "no certificate":
            day = 86400.0
            issued = time.time() - 2 * day if case == "expired" else None
            identity = identity_files(
                tmp_path, server.authority, "alice", key, issued=issued, lifetime=day
            )
        client = await RegistryClient.connect("127.0.0.1", server.port, cert=identity)
        with pytest.raises(RegistryError) as refused:
            await client.resume(7000)
        assert refused.value.code == "cert_refused" and "log in" in refused.value.reason
        why = {"expired": "has expired", "another machine's key": "a later login replaced it"}
        assert why.get(case, "needs this registry's certificate") in refused.value.reason
        assert not server.core.online
        await client.login("alice", PW, 7000, heartbeat=0)  # on the same connection
        await client.close()
    finally:
        await server.close()


async def test_another_registrys_certificate_gets_no_session(tmp_path: Path) -> None:
    """ssl itself refuses a client certificate from another CA: the handshake fails, nothing
    reaches the core, and the registry serves the next client."""
    server = await start_server()
    try:
        identity = identity_files(tmp_path, Authority.create(time.time()), "alice", Signer())
        with pytest.raises((RegistryClosed, ConnectionError, ssl.SSLError)):
            client = await RegistryClient.connect("127.0.0.1", server.port, cert=identity)
            await client.resume(7000)
        assert not server.core.online
        other = await RegistryClient.connect("127.0.0.1", server.port)
        await other.register("bob", PW)
        await other.close()
    finally:
        await server.close()
