"""The real ``p2pchat registry`` program: it starts, serves, survives kill -9, stops cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
from pathlib import Path

import pytest

from p2pchat.registry.client import RegistryClient, RegistryClosed, RegistryError
from tests.e2e.procs import P2PCHAT, start_registry

PW = "secret-pw"


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
    registry = await start_registry(db)
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
    for flag in ("--host", "--port", "--udp-port", "--db", "--timeout", "--log-level"):
        assert flag in out
    assert "15600" in out and "15500" in out and "60" in out


def test_a_database_that_is_not_one_gets_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.db"
    bad.write_text("hello")
    result = subprocess.run(
        [*P2PCHAT, "registry", "--port", "0", "--udp-port", "0", "--db", str(bad)],
        capture_output=True,
        text=True,
        timeout=30,
    )
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
