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
    return Registry(proc, int(match[1]), int(match[2]))


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
