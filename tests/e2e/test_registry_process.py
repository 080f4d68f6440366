"""The real ``p2pchat registry`` program: it starts, serves, survives kill -9, stops cleanly,
keeps its certificate authority beside its database, and speaks TLS that ``openssl`` can
speak too."""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import shutil
import signal
import stat
import subprocess
from pathlib import Path

import pytest

from p2pchat.protocol.messages import unb64
from p2pchat.registry.client import RegistryClient, RegistryClosed, RegistryError
from p2pchat.store import SqliteStore
from p2pchat.trust.certs import private_pem
from p2pchat.trust.files import (
    authority_paths,
    key_file,
    load_or_create_authority,
    save_cert,
    write_private,
)
from p2pchat.trust.signing import Signer
from tests.e2e.procs import P2PCHAT, start_registry
from tests.registry.harness import HELLO, open_tls, private_key

PW = "secret-pw"
MAC = b"0" * 64


async def test_registry_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    registry = await start_registry(tmp_path / "r.db")
    client = await RegistryClient.connect("127.0.0.1", registry.port)
    await client.register("alice", PW)
    await client.close()
    registry.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(registry.proc.wait(), 15) == 0
    assert registry.proc.stdout is not None
    assert b"registry stopped" in await registry.proc.stdout.read()


async def test_nothing_acknowledged_is_lost_after_kill_9(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    registry = await start_registry(db, "--room-change-burst", "1000000")
    client = await RegistryClient.connect("127.0.0.1", registry.port)
    await client.register("owner", PW)
    await client.login("owner", PW, 7000)
    await client.create_room("lobby")
    acked: list[str] = []
    enough = asyncio.Event()

    async def writer(worker: int) -> None:
        c = await RegistryClient.connect("127.0.0.1", registry.port)
        with contextlib.suppress(RegistryClosed, ConnectionError):
            for i in range(10_000):
                await c.register(f"w{worker}-{i}", PW)
                await client.add_member("lobby", f"w{worker}-{i}")
                acked.append(f"w{worker}-{i}")
                if len(acked) >= 200:
                    enough.set()
        await c.close()

    writers = [asyncio.create_task(writer(n)) for n in range(4)]
    await asyncio.wait_for(enough.wait(), 30)  # kill it in the middle of a stream of writes
    registry.proc.send_signal(signal.SIGKILL)
    await asyncio.gather(*writers)
    await registry.proc.wait()
    await client.close()

    registry = await start_registry(db)
    try:
        check = await RegistryClient.connect("127.0.0.1", registry.port)
        await check.login("owner", PW, 7000)
        members = {m.username for m in await check.members("lobby")}
        assert set(acked) <= members
        for name in acked[:: max(1, len(acked) // 20)]:
            assert not (await check.search(name)).online
        await check.close()
    finally:
        registry.proc.terminate()
        await registry.proc.wait()


def test_help_explains_every_flag() -> None:
    out = subprocess.run(
        [*P2PCHAT, "registry", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for flag in (
        "--host",
        "--port",
        "--udp-port",
        "--db",
        "--timeout",
        "--log-level",
        "--max-connections",
        "--max-per-address",
        "--exempt",
        "--allow-advertise",
        "--login-timeout",
        "--hash-workers",
        "--max-rooms-per-user",
        "--max-owned-rooms",
        "--room-change-rate",
        "--room-change-burst",
    ):
        assert flag in out, flag
    assert "15600" in out and "15500" in out and "60" in out


def _refused_start(db: Path) -> subprocess.CompletedProcess[str]:
    """The registry program started on ``db``, expected to refuse (its exit and output)."""
    return subprocess.run(
        [*P2PCHAT, "registry", "--port", "0", "--udp-port", "0", "--db", str(db)],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_a_database_that_is_not_one_gets_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.db"
    bad.write_text("hello")
    result = _refused_start(bad)
    assert result.returncode == 2 and "cannot open database" in result.stderr
    assert bad.read_text() == "hello"


async def test_login_with_wrong_password_over_the_real_program(tmp_path: Path) -> None:
    registry = await start_registry(tmp_path / "r.db")
    try:
        client = await RegistryClient.connect("127.0.0.1", registry.port)
        await client.register("alice", PW)
        with pytest.raises(RegistryError) as caught:
            await client.login("alice", "not-it!", 7000)
        assert caught.value.code == "wrong_password"
        await client.close()
    finally:
        registry.proc.terminate()
        await registry.proc.wait()


@pytest.mark.parametrize("kind", ["empty", "damaged"])
def test_an_empty_or_damaged_database_is_a_clear_refusal_left_untouched(
    tmp_path: Path, kind: str
) -> None:
    db = tmp_path / "r.db"
    if kind == "empty":
        db.write_bytes(b"")
    else:
        store = SqliteStore(db)
        for i in range(300):
            store.create_account(f"user{i:04d}x", "h" * 100)
        store.close()
        data = bytearray(db.read_bytes())
        data[3 * 4096 : 3 * 4096 + 64] = b"\xa5" * 64
        db.write_bytes(bytes(data))
    before = db.read_bytes()
    result = _refused_start(db)
    assert result.returncode == 2, result.stderr
    assert ("empty file" if kind == "empty" else "damaged") in result.stderr
    assert "Traceback" not in result.stderr
    assert db.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.db"]


def _low_file_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))


async def test_idle_connections_beyond_the_open_files_limit_do_not_shut_users_out(
    tmp_path: Path,
) -> None:
    """With 128 descriptors the registry allows 52 connections (asked for 20,000, it says why
    not), and holds at most half of them for connections that have not logged in, the
    oldest going first: 300 idle connections leave it serving newcomers, with no traceback
    and no accept loop spinning."""
    proc = await asyncio.create_subprocess_exec(
        *P2PCHAT, "registry", "--host", "127.0.0.1", "--port", "0", "--udp-port", "0",
        "--db", str(tmp_path / "r.db"), "--password-hash", "cheapest",
        "--max-connections", "20000", "--log-level", "info",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        preexec_fn=_low_file_limit,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    try:
        first = (await asyncio.wait_for(proc.stdout.readline(), 15)).decode()
        port = int(first.split(" tcp ")[1].split()[0])
        idle = []
        for _ in range(300):
            reader, writer = await open_tls(port)
            writer.write(HELLO)
            assert json.loads(await asyncio.wait_for(reader.readline(), 15))["type"] == "welcome"
            idle.append((reader, writer))
        alive = 0
        for reader, writer in idle:  # which are still held? a ping tells
            writer.write(b'{"type":"ping","id":2,"session":"x","seq":1,"mac":"%s"}\n' % MAC)
            reply = json.loads(await asyncio.wait_for(reader.readline(), 15))
            if reply["type"] == "bye":
                assert reply["code"] == "too_many_connections"
            else:
                assert reply["code"] == "not_logged_in"
                alive += 1
            writer.close()
        assert 0 < alive <= 26
        newcomer = await RegistryClient.connect("127.0.0.1", port)
        await newcomer.register("alice", PW)
        await newcomer.login("alice", PW, 7000)
        await newcomer.close()
    finally:
        proc.terminate()
        _, err = await asyncio.wait_for(proc.communicate(), 15)
    text = err.decode()
    assert "using 52" in text and "at most 52 connections" in text
    assert "Traceback" not in text and "out of system resource" not in text


# ------------------------------------------------------------------ the registry's CA


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_the_ca_is_made_on_first_start_kept_and_shown_after_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    key_path, cert_path = authority_paths(db)
    first = await start_registry(db)
    try:
        assert _mode(key_path) == 0o600 and cert_path.exists()
        client = await RegistryClient.connect("127.0.0.1", first.port)
        assert client.fingerprint == first.fingerprint  # what was printed is what peers see
        await client.register("alice", PW)
        session = await client.login("alice", PW, 7000, key=(signer := Signer()).public_key)
        await client.close()
    finally:
        assert await first.stop() == 0
    key_pem = key_path.read_bytes()
    second = await start_registry(db)
    try:
        assert second.fingerprint == first.fingerprint
        assert key_path.read_bytes() == key_pem and _mode(key_path) == 0o600
        # a certificate issued before the restart still brings its holder back
        der = unb64(session.cert or "")
        folder = tmp_path / "alice"
        identity = (save_cert(folder, "alice", der), key_file(folder, "alice"))
        write_private(identity[1], private_pem(private_key(signer)))
        client = await RegistryClient.connect(
            "127.0.0.1", second.port, pinned=first.fingerprint, cert=identity
        )
        assert (await client.resume(7000)).username == "alice"
        await client.close()
    finally:
        assert await second.stop() == 0


@pytest.mark.parametrize("case", ["key missing", "certificate missing", "not a pair"])
def test_half_a_ca_is_a_clear_refusal_to_start(tmp_path: Path, case: str) -> None:
    db = tmp_path / "r.db"
    load_or_create_authority(db)
    key_path, cert_path = authority_paths(db)
    if case == "key missing":
        key_path.unlink()
    elif case == "certificate missing":
        cert_path.unlink()
    else:
        other = tmp_path / "other.db"
        load_or_create_authority(other)
        cert_path.write_bytes(authority_paths(other)[1].read_bytes())
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    result = _refused_start(db)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "certificate authority" in result.stderr
    if case == "not a pair":
        assert "does not match" in result.stderr
    else:
        missing = key_path if case == "key missing" else cert_path
        assert f"{missing} is missing" in result.stderr and "backup" in result.stderr
        assert not missing.exists()  # no new CA made beside the half that is left
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert {name: after.get(name) for name in before} == before


# ------------------------------------------------------------------ openssl s_client


async def _s_client(port: int, *flags: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        "openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-quiet", *flags,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
async def test_openssl_s_client_speaks_to_the_registry(tmp_path: Path) -> None:
    registry = await start_registry(tmp_path / "r.db")
    proc = await _s_client(registry.port)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        for line, expect in [
            (HELLO, "welcome"),
            (b'{"type":"register","id":2,"username":"alice","password":"secret-pw"}\n', "ok"),
            (
                b'{"type":"login","id":3,"username":"alice","password":"secret-pw","port":7000}\n',
                "logged_in",
            ),
            (b'{"type":"rooms","id":4}\n', "room_list"),
        ]:
            proc.stdin.write(line)
            await proc.stdin.drain()
            reply = json.loads(await asyncio.wait_for(proc.stdout.readline(), 15))
            assert reply["type"] == expect, reply
        assert reply["rooms"] == []
    finally:
        proc.kill()
        await proc.wait()
    # the registry speaks TLS 1.3 only: a client that offers 1.2 at most gets nothing
    old = await _s_client(registry.port, "-tls1_2")
    assert old.stdin is not None and old.stdout is not None
    try:
        old.stdin.write(HELLO)
        with contextlib.suppress(ConnectionError):
            await old.stdin.drain()
        assert await asyncio.wait_for(old.stdout.read(), 15) == b""
    finally:
        with contextlib.suppress(ProcessLookupError):
            old.kill()
        await old.wait()
        assert await registry.stop() == 0
