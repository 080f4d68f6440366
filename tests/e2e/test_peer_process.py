"""Real ``p2pchat registry`` and ``p2pchat peer --ui line`` processes, driven like a script."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.e2e.procs import P2PCHAT, LinePeer, Registry, start_peer, start_registry

PW = "secret-pw"


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[Registry]:
    reg = await start_registry(tmp_path / "r.db")
    yield reg
    await reg.stop()


async def logged_in(registry: Registry, name: str, *extra: str) -> LinePeer:
    peer = await start_peer(registry.port, *extra)
    _, result = await peer.command(f"/register {name} {PW}")
    assert result.startswith(("ok: registered", "error: the name")), result
    await peer.ok(f"/login {name} {PW}")
    return peer


async def until_all_hear(sender: LinePeer, receivers: list[LinePeer], room: str = "lobby") -> None:
    """Members who were just added need a moment to link up: probe until a message reaches all.

    Probes sent before the mesh is complete may miss someone; that is the documented
    behaviour (a new member receives the room's messages within a second or two).
    """
    for attempt in range(20):
        await sender.ok(f"/say {room} probe {attempt}")
        try:
            for receiver in receivers:
                await receiver.expect(rf"^Message from \w+ at {room}: probe {attempt}$", 1.0)
        except TimeoutError:
            continue
        return
    raise AssertionError("the mesh never reached every member")


async def test_room_and_direct_messages_between_processes(registry: Registry) -> None:
    alice = await logged_in(registry, "alice")
    bob = await logged_in(registry, "bob")
    carol = await logged_in(registry, "carol")
    assert await alice.ok("/create lobby") == "ok: created public room lobby"
    await alice.ok("/add lobby bob")
    await bob.expect(r"^\* alice added you to lobby$")
    await carol.ok("/join lobby")
    await alice.expect(r"^\* carol joined lobby$")
    rows, result = await alice.command("/members lobby")
    assert result == "ok: 3 members, 3 online"
    assert [r.split()[0:2] for r in rows] == [
        ["alice", "online"],
        ["bob", "online"],
        ["carol", "online"],
    ]

    await alice.ok("/say lobby hello from alice")
    assert await bob.expect("^Message from") == "Message from alice at lobby: hello from alice"
    assert await carol.expect("^Message from") == "Message from alice at lobby: hello from alice"
    await carol.ok("/to lobby")
    await carol.ok("plain line to the room")
    assert (
        await alice.expect("^Message from") == "Message from carol at lobby: plain line to the room"
    )
    assert (
        await bob.expect("^Message from") == "Message from carol at lobby: plain line to the room"
    )

    assert await bob.ok("/msg carol psst") == "ok: delivered to carol"
    assert await carol.expect("^Message from") == "Message from bob: psst"

    result = await carol.ok("/search alice")
    assert result.startswith("ok: alice is online at 127.0.0.1:")
    for peer in (alice, bob, carol):
        assert await peer.quit() == 0
    for peer, count in ((alice, 1), (bob, 2), (carol, 2)):  # nothing shown twice
        messages = [line for line in peer.lines if line.startswith("Message")]
        assert len(messages) == len(set(messages)) == count, peer.lines


async def test_errors_and_usage_in_line_mode(registry: Registry) -> None:
    peer = await start_peer(registry.port)
    cases = {
        "/frobnicate": "error: unknown command /frobnicate; /help lists them",
        "/login alice": "error: usage: /login USER PASSWORD",
        "/say lobby": "error: usage: /say ROOM TEXT",
        "/create a b": "error: usage: /create ROOM [private]",
        "/say lobby hi": "error: log in first: /login USER PASSWORD",
        "just text": "error: no conversation chosen: use /to ROOM or /to @USER first, "
        "or /say ROOM TEXT or /msg USER TEXT",
        "/login ghost nopass1": "error: wrong password, or no such user",
        f"/register bad!name {PW}": "error: usernames are 1-32 letters, digits, '_', '.' or '-'",
    }
    for command, expected in cases.items():
        _, result = await peer.command(command)
        assert result == expected, command
    await peer.ok(f"/register dora {PW}")
    await peer.ok(f"/login dora {PW}")
    _, result = await peer.command("/search nobody")
    assert result == "error: no user 'nobody'"
    _, result = await peer.command("/msg dora " + "x" * 5000)
    assert result == "error: message too long: at most 4096 bytes"
    rows, result = await peer.command("/help")
    assert result.startswith("ok: ") and any(r.startswith("/members ROOM") for r in rows)
    assert await peer.quit() == 1  # some commands failed: a script can tell
    assert not any(line.startswith("Message") for line in peer.lines)


async def test_end_of_input_quits_and_logs_out(registry: Registry) -> None:
    watcher = await logged_in(registry, "watcher")
    leaver = await logged_in(registry, "leaver")
    await watcher.ok("/create lobby")
    await watcher.ok("/add lobby leaver")
    assert leaver.proc.stdin is not None
    leaver.proc.stdin.close()  # end of input means /quit
    assert await asyncio.wait_for(leaver.proc.wait(), 15) == 0
    await watcher.expect(r"^\* leaver went offline in lobby$")
    assert await watcher.ok("/search leaver") == "ok: leaver is offline"
    await watcher.quit()


async def test_kill_9_of_a_relay_and_the_rest_still_chat(registry: Registry) -> None:
    names = ["p1", "p2", "p3", "p4", "p5", "p6", "p7"]
    peers = {n: await logged_in(registry, n) for n in names}
    await peers["p1"].ok("/create lobby")
    for n in names[1:]:
        await peers["p1"].ok(f"/add lobby {n}")
    await until_all_hear(peers["p1"], [peers[n] for n in names[1:]])
    peers["p4"].proc.send_signal(signal.SIGKILL)
    await peers["p4"].proc.wait()
    for n in ("p3", "p5"):
        await peers[n].expect(r"^\* p4 went offline in lobby$")
    await peers["p3"].ok("/say lobby p4 is gone")
    for n in ("p1", "p2", "p5", "p6", "p7"):
        await peers[n].expect("^Message from p3 at lobby: p4 is gone$", timeout=5)
    for n in names:
        if n != "p4":
            assert await peers[n].quit() == 0


def test_peer_help_explains_every_flag() -> None:
    out = subprocess.run(
        [*P2PCHAT, "peer", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for flag in (
        "--registry",
        "--host",
        "--port",
        "--advertise",
        "--heartbeat",
        "--max-links",
        "--ui",
    ):
        assert flag in out, flag


def test_bad_flags_get_clear_errors() -> None:
    for args, message in [
        (["--registry", "host:notaport"], "not a port number"),
        (["--max-links", "1"], "at least 2"),
        (["--heartbeat", "-1"], "more than 0"),
    ]:
        result = subprocess.run(
            [*P2PCHAT, "peer", *args], capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)


async def test_bytes_that_are_not_utf8_get_an_error_not_the_end(registry: Registry) -> None:
    peer = await start_peer(registry.port)
    assert peer.proc.stdin is not None
    peer.proc.stdin.write(b"\xff\xfe not text\n")
    result = await peer.expect(r"^(ok|error): ")
    assert result.startswith("error: no conversation chosen")
    rows, result = await peer.command("/help")  # still reading commands
    assert result.startswith("ok: ") and rows
    assert await peer.quit() == 1


async def test_a_peer_keeps_the_pace_a_fast_registry_asks_for(tmp_path: Path) -> None:
    """A registry that wants a heartbeat every 0.3 s and drops a session after 0.9 s of silence:
    a peer started without --heartbeat follows it and stays logged in."""
    fast = await start_registry(
        tmp_path / "fast.db", "--heartbeat-interval", "0.3", "--timeout", "0.9"
    )
    try:
        alice = await logged_in(fast, "alice")
        bob = await logged_in(fast, "bob")
        # three timeouts' worth of time: not waiting for an event, watching that none comes
        await asyncio.sleep(2.7)
        assert (
            await bob.ok("/search alice") == f"ok: alice is online at 127.0.0.1:{alice_port(alice)}"
        )
        assert not [line for line in alice.lines if "registry" in line and "trusting" not in line]
        await alice.quit()
        await bob.quit()
    finally:
        await fast.stop()


def alice_port(peer: LinePeer) -> str:
    line = next(x for x in peer.lines if x.startswith("ok: logged in as"))
    return line.split("listening on port ")[1].split(";")[0]


async def test_bans_and_blocks_from_the_line_mode(registry: Registry) -> None:
    alice = await logged_in(registry, "alice")
    bob = await logged_in(registry, "bob")
    await alice.ok("/create lobby")
    await bob.ok("/join lobby")
    assert await alice.ok("/ban lobby bob") == "ok: removed bob from lobby; banned until /unban"
    await bob.expect(r"^\* alice removed you from lobby$")
    _, result = await bob.command("/join lobby")
    assert result.startswith("error: ") and "banned" in result
    await alice.ok("/unban lobby bob")
    await bob.ok("/join lobby")
    await until_all_hear(alice, [bob])
    blocking = await bob.ok("/block alice")
    assert blocking == "ok: blocking alice: their messages are not shown to you"
    await alice.ok("/say lobby you cannot hear this")
    await alice.ok("/msg bob nor this")  # delivered: alice is not told
    rows, result = await bob.command("/blocked")
    assert (rows, result) == (["  alice"], "ok: blocking 1 user")
    assert await bob.quit() == 1  # its /join while banned answered error:
    assert not [line for line in bob.lines if "hear this" in line or "nor this" in line]
    again = await start_peer(registry.port)  # the same user, a new process: still blocked
    await again.ok(f"/login bob {PW}")
    rows, _ = await again.command("/blocked")
    assert rows == ["  alice"]
    await again.ok("/unblock alice")
    await again.quit()
    await alice.quit()
