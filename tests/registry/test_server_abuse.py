"""Attacks on the registry's shell over real sockets on 127.0.0.0/8, each bounded, with the
defended outcome asserted; and the shell's one timer, driven by an injected clock."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import ssl
from typing import Any

import pytest

from p2pchat.protocol.messages import Bye, RoomEvent
from p2pchat.registry.client import RegistryClient, RegistryError
from p2pchat.registry.core import RegistryConfig
from p2pchat.registry.server import (
    QUEUE_BYTES,
    TURN_FRAMES,
    default_max_connections,
)
from p2pchat.trust import tls
from tests.listening import WAIT, out_of_descriptors, pauses_without_spinning, traced, until
from tests.registry.harness import HELLO, PW, FaultyStore, open_tls, start_server

PING = b'{"type":"ping","id":%d,"session":"t","seq":1,"mac":"' + b"0" * 64 + b'"}\n'
"""A heartbeat over TCP for no session: answered ``not_logged_in``."""


start = start_server


raw = open_tls


async def line(reader: asyncio.StreamReader) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(await asyncio.wait_for(reader.readline(), WAIT))
    return data


# ------------------------------------------------------------------ the one timer


async def test_the_shell_runs_one_timer_at_the_cores_next_deadline() -> None:
    clock = [1000.0]
    config = RegistryConfig(timeout=60.0, login_timeout=20.0)
    server = await start(config=config, clock=lambda: clock[0])
    try:
        assert server.timer_deadline is None  # nothing to wait for: no timer at all
        client = await RegistryClient.connect("127.0.0.1", server.port)
        assert server.timer_deadline == 1020.0
        await client.register("alice", PW)
        await client.login("alice", PW, 7000, heartbeat=0)
        events = client.events()
        clock[0] = 1020.5
        server.on_timer()  # the connection's deadline to log in: met, so nothing happens
        assert server.timer_deadline == 1060.0
        clock[0] = 1059.0
        assert (await client.search("alice")).online  # a request is a sign of life
        clock[0] = 1060.0
        server.on_timer()  # due, but heard from at 1059: pushed back, not expired
        assert server.timer_deadline == 1119.0
        clock[0] = 1119.0
        server.on_timer()
        bye = await asyncio.wait_for(anext(events), WAIT)
        assert isinstance(bye, Bye) and bye.code == "timeout"
        await asyncio.wait_for(client.closed.wait(), WAIT)
        assert server.timer_deadline is None
        await client.close()
    finally:
        await server.close()


async def test_the_expiry_timer_survives_an_exception(caplog: pytest.LogCaptureFixture) -> None:
    server = await start(config=RegistryConfig(login_timeout=0.05))
    real_expire = server.core.expire
    failures = []

    def failing_once(now: float) -> list[Any]:
        if not failures:
            failures.append(now)
            raise RuntimeError("a bug in expiry")
        return real_expire(now)

    server.core.expire = failing_once  # type: ignore[method-assign]
    try:
        reader, writer = await raw(server.port)
        with caplog.at_level(logging.ERROR, logger="p2pchat.registry"):
            bye = await line(reader)  # after the failure, the timer came back and closed it
        assert failures and (bye["type"], bye["code"]) == ("bye", "timeout")
        assert any("expiring sessions failed" in r.getMessage() for r in caplog.records)
        writer.close()
    finally:
        await server.close()


# ------------------------------------------------------------------ connections


async def test_connections_per_address_are_capped() -> None:
    server = await start(max_per_address=3, config=RegistryConfig(exempt=frozenset()))
    try:
        held = [await raw(server.port, "127.0.0.2") for _ in range(3)]
        for reader, writer in held:
            writer.write(HELLO)
            assert (await line(reader))["type"] == "welcome"
        # refused at accept, before TLS (no handshake is spent on it): one plain line
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", server.port, local_addr=("127.0.0.2", 0)
        )
        refusal = await line(reader)
        assert (refusal["code"], refusal["id"]) == ("too_many_connections", None)
        assert "your address" in refusal["reason"]
        assert await asyncio.wait_for(reader.read(), WAIT) == b""
        with pytest.raises((ssl.SSLError, ConnectionError)):  # a TLS client gets no session
            tls_reader, _ = await raw(server.port, "127.0.0.2")
            await tls_reader.read()
        other_reader, other = await raw(server.port, "127.0.0.3")  # another address: served
        other.write(HELLO)
        assert (await line(other_reader))["type"] == "welcome"
        held[0][1].close()  # a slot freed is a slot again
        await until(lambda: server.listener.per_address.get("127.0.0.2") == 2)
        reader, writer = await raw(server.port, "127.0.0.2")
        writer.write(HELLO)
        assert (await line(reader))["type"] == "welcome"
        assert server.refused == 2
    finally:
        await server.close()


async def test_exempt_addresses_are_not_capped_per_address() -> None:
    server = await start(max_per_address=2)  # 127.0.0.1 and ::1 are exempt by default
    try:
        for _ in range(5):
            reader, writer = await raw(server.port, "127.0.0.1")
            writer.write(HELLO)
            assert (await line(reader))["type"] == "welcome"
    finally:
        await server.close()


def test_the_default_connection_limit_leaves_file_descriptors_spare() -> None:
    assert default_max_connections(1024) == 1024 - 64 - 102
    assert default_max_connections(100) == 26
    assert 0 < default_max_connections() < 1 << 20


async def test_out_of_descriptors_pauses_accepting_without_spinning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start()
    try:
        with caplog.at_level(logging.WARNING, logger="p2pchat.registry"):
            with out_of_descriptors(server.listener, monkeypatch) as exhausted:
                connecting = asyncio.create_task(raw(server.port))  # waits in the backlog
                await pauses_without_spinning(exhausted, connecting)
            reader, writer = await asyncio.wait_for(connecting, WAIT)
            writer.write(HELLO)
            assert (await line(reader))["type"] == "welcome"  # accepted once the pause ended
        warnings = [r for r in caplog.records if "cannot accept" in r.getMessage()]
        assert len(warnings) == 1 and warnings[0].exc_info is None
    finally:
        await server.close()


# ------------------------------------------------------------------ fairness and memory


async def test_an_idle_tls_connection_costs_the_registry_little_memory() -> None:
    """asyncio's TLS layer allocates, and fills, a 256 KiB read buffer for every connection:
    idle sessions cost the registry 280 KiB each (2.7 GB for 10,000). Clients here are
    blocking sockets in a thread, whose own buffers are not Python's, so what tracemalloc
    counts is the registry's."""
    server = await start()
    count = 40

    def connect() -> ssl.SSLSocket:
        sock = tls.client().wrap_socket(socket.create_connection(("127.0.0.1", server.port)))
        sock.sendall(HELLO)
        assert b'"welcome"' in sock.recv(4096)
        return sock

    try:
        with traced() as grown:
            held = [await asyncio.to_thread(connect) for _ in range(count)]
            per_connection = grown() / count
        assert len(server._sessions) == count
        assert per_connection < 48 * 1024, per_connection
        for sock in held:
            sock.close()
    finally:
        await server.close()


async def test_a_pipelined_flood_delays_another_connection_by_at_most_a_turn_each() -> None:
    server = await start()
    order: list[int] = []
    arrivals: dict[int, int] = {}
    honest_conn: list[int] = []
    handle, received = server.core.handle, server.received
    most_held = [0]

    def counting_handle(conn: int, request: Any, now: float) -> Any:
        order.append(conn)
        return handle(conn, request, now)

    def noting_received(session: Any, data: bytes) -> None:
        if honest_conn and session.conn == honest_conn[0] and session.conn not in arrivals:
            arrivals[session.conn] = len(order)
        received(session, data)
        most_held[0] = max(most_held[0], session.held)

    server.core.handle = counting_handle  # type: ignore[method-assign]
    server.received = noting_received  # type: ignore[method-assign]
    flood = b"".join(PING % i for i in range(20_000))
    sinks = []
    try:
        flooders = [await raw(server.port) for _ in range(5)]
        for reader, writer in flooders:
            writer.write(HELLO + flood)
            sinks.append(asyncio.create_task(reader.read(1 << 30)))  # it reads its answers
        await until(lambda: len(order) > 2_000)
        honest = await RegistryClient.connect("127.0.0.1", server.port)
        honest_conn.append(max(server._sessions))
        with pytest.raises(RegistryError):
            await honest.search("x")  # not logged in: answered all the same
        arrived = arrivals[honest_conn[0]]
        served = order.index(honest_conn[0], arrived)
        flood_frames_before = served - arrived
        assert flood_frames_before <= TURN_FRAMES * 5
        assert len(order) < 5 * 20_000  # the flood was still going on
        assert most_held[0] <= QUEUE_BYTES + 256 * 1024  # reading paused: queue bounded
        await honest.close()
    finally:
        for task in sinks:
            task.cancel()
        await server.close()


async def test_a_client_that_does_not_read_is_not_served_and_costs_little_output() -> None:
    server = await start()
    try:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        sock.setblocking(False)
        reader, writer = await asyncio.open_connection(
            sock=sock, ssl=tls.client(), server_hostname=""
        )
        await until(lambda: len(server._sessions) == 1)
        [session] = server._sessions.values()
        assert session.transport is not None  # small kernel buffers: the backlog shows at once
        session.transport.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, 4096
        )
        pings = b"".join(PING % i for i in range(30_000))
        writer.write(HELLO + pings)  # and reads nothing
        await until(lambda: session.stalled)
        for _ in range(100):
            await asyncio.sleep(0)
        assert session.transport is not None
        assert session.transport.get_write_buffer_size() <= 64 * 1024 + TURN_FRAMES * 200
        assert session.held <= QUEUE_BYTES + 256 * 1024  # nor is it read meanwhile
        answered = 0
        while answered < 30_001:  # once it reads, everything is answered
            assert await asyncio.wait_for(reader.readline(), WAIT)
            answered += 1
        writer.close()
    finally:
        await server.close()


async def test_unprocessed_input_is_bounded_in_total() -> None:
    """Ten connections each hold a partial 60 KB frame; the registry keeps at most
    ``max_input`` bytes, closing those holding the most, and still serves everyone else."""
    server = await start(max_input=200_000)
    try:
        attackers = [await raw(server.port) for _ in range(10)]
        for _, writer in attackers:
            writer.write(HELLO[:-2] + b',"agent":"' + b"x" * 60_000)
        done = [asyncio.create_task(reader.read()) for reader, _ in attackers]
        await until(lambda: sum(t.done() for t in done) >= 7)
        assert server._input <= 200_000
        closed = [t.result() for t in done if t.done()]
        for data in closed:
            reply = json.loads(data.splitlines()[0])
            assert reply["code"] == "overloaded"
        honest = await RegistryClient.connect("127.0.0.1", server.port)
        await honest.register("alice", PW)
        await honest.close()
        for task in done:
            task.cancel()
    finally:
        await server.close()


async def test_a_slow_connection_that_does_not_log_in_is_let_go_quickly() -> None:
    server = await start(config=RegistryConfig(login_timeout=0.2))
    try:
        reader, writer = await raw(server.port)
        writer.write(b'{"type":"hel')  # and nothing more
        bye = await line(reader)
        assert (bye["type"], bye["code"]) == ("bye", "timeout")
        assert await asyncio.wait_for(reader.read(), WAIT) == b""
        assert server._input == 0
    finally:
        await server.close()


async def test_nested_json_is_answered_bad_frame_and_the_session_goes_on() -> None:
    server = await start()
    try:
        reader, writer = await raw(server.port)
        deep = b"[" * 30_000 + b"]" * 30_000
        writer.write(HELLO[:-2] + b',"x":' + deep + b"}\n")
        reply = await line(reader)
        assert (reply["code"], reply["id"]) == ("bad_frame", None)
        writer.write(HELLO)
        assert (await line(reader))["type"] == "welcome"
    finally:
        await server.close()


# ------------------------------------------------------------------ database faults


async def test_a_failing_database_answers_storage_error_not_internal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = FaultyStore()
    server = await start(store=store)
    try:
        inbox: asyncio.Queue[Any] = asyncio.Queue()
        alice = await RegistryClient.connect("127.0.0.1", server.port, on_event=inbox.put_nowait)
        await alice.register("alice", PW)
        await alice.login("alice", PW, 7000)
        await alice.create_room("lobby")
        bob = await RegistryClient.connect("127.0.0.1", server.port)
        await bob.register("bob", PW)
        store.failing = {"rooms_of"}
        with (
            caplog.at_level(logging.ERROR, logger="p2pchat.registry"),
            pytest.raises(RegistryError) as caught,
        ):
            await bob.login("bob", PW, 7001)
        assert caught.value.code == "storage_error"
        assert not [r for r in caplog.records if r.exc_info]  # no traceback
        store.failing = {"add_member"}
        await bob_login_after(store, bob)
        with pytest.raises(RegistryError) as caught:
            await bob.join_room("lobby")
        assert caught.value.code == "storage_error"
        store.failing = set()
        await bob.join_room("lobby")
        event = await asyncio.wait_for(inbox.get(), WAIT)  # only the join that happened
        assert isinstance(event, RoomEvent) and (event.username, event.change) == (
            "bob",
            "joined",
        )
        assert inbox.empty()
        await alice.close()
        await bob.close()
    finally:
        await server.close()


async def bob_login_after(store: FaultyStore, bob: RegistryClient) -> None:
    """bob logs in now that reading his rooms works again (nothing half-done remained)."""
    failing, store.failing = store.failing, set()
    await bob.login("bob", PW, 7001)
    store.failing = failing
