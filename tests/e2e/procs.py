"""Start the real ``p2pchat`` programs as child processes and read what they print."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

WAIT = 15.0
P2PCHAT = [sys.executable, "-m", "p2pchat"]


@dataclass
class Registry:
    proc: asyncio.subprocess.Process
    port: int
    udp_port: int
    fingerprint: str = ""
    """Of the registry's CA certificate, as its second line says."""

    async def stop(self) -> int:
        return await stop(self.proc)


async def start_registry(db: Path, *extra: str, host: str = "127.0.0.1") -> Registry:
    proc = await asyncio.create_subprocess_exec(
        *P2PCHAT,
        "registry",
        "--host",
        host,
        "--port",
        "0",
        "--udp-port",
        "0",
        "--db",
        str(db),
        "--password-hash",
        "cheapest",
        "--register-burst",
        "100000",
        "--log-level",
        "warning",
        *extra,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), WAIT)).decode()
    match = re.search(r"tcp (\d+) udp (\d+)", line)
    assert match, f"unexpected first line {line!r}"
    second = (await asyncio.wait_for(proc.stdout.readline(), WAIT)).decode()
    fingerprint = re.search(r"fingerprint (SHA256:\S+)", second)
    assert fingerprint, f"unexpected second line {second!r}"
    return Registry(proc, int(match[1]), int(match[2]), fingerprint[1])


async def stop(proc: asyncio.subprocess.Process) -> int:
    """SIGTERM, then wait; SIGKILL if it does not stop in time."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), WAIT)
        except TimeoutError:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode


class LinePeer:
    """A ``p2pchat peer --ui line`` process driven through its standard input and output."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._unread = 0

    async def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()

    async def _readline(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not raw:
            raise EOFError("the peer closed its output")
        line = raw.decode().rstrip("\n")
        self.lines.append(line)
        return line

    async def expect(self, pattern: str, timeout: float = WAIT) -> str:
        """Read lines until one matches ``pattern`` (a regex searched in the line)."""
        regex = re.compile(pattern)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            line = await self._readline(max(0.01, deadline - loop.time()))
            if regex.search(line):
                return line

    async def command(self, line: str, timeout: float = WAIT) -> tuple[list[str], str]:
        """Send a command; return the lines it printed before its result, and the result."""
        await self.send(line)
        start = len(self.lines)
        result = await self.expect(r"^(ok|error): ", timeout)
        rows = [x for x in self.lines[start:-1] if not x.startswith(("* ", "Message from "))]
        return rows, result

    async def ok(self, line: str, timeout: float = WAIT) -> str:
        _, result = await self.command(line, timeout)
        assert result.startswith("ok: "), (line, result)
        return result

    async def quit(self) -> int:
        await self.send("/quit")
        assert self.proc.stdout is not None
        rest = await asyncio.wait_for(self.proc.stdout.read(), WAIT)
        self.lines.extend(rest.decode().splitlines())
        return await asyncio.wait_for(self.proc.wait(), WAIT)


async def start_peer(registry_port: int, *extra: str, host: str = "127.0.0.1") -> LinePeer:
    proc = await asyncio.create_subprocess_exec(
        *P2PCHAT,
        "peer",
        "--registry",
        f"{host}:{registry_port}",
        "--host",
        host,
        "--ui",
        "line",
        *extra,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    return LinePeer(proc)
