"""What the real programs say and return when they cannot do what they were started for, and
where they draw: the exit status a script sees, the line mode when there is no terminal."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
from pathlib import Path

from tests.e2e.procs import P2PCHAT, WAIT, start_peer


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*P2PCHAT, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=WAIT * 2,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def free_tcp_port() -> int:
    """A port nothing listens on: connecting to it is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_line_mode_that_cannot_reach_its_registry_fails() -> None:
    port = free_tcp_port()
    result = run(
        "peer",
        "--registry",
        f"127.0.0.1:{port}",
        "--host",
        "127.0.0.1",
        "--ui",
        "line",
        stdin="/login bob secret-pw\n",
    )
    assert "error: cannot reach the registry" in result.stdout
    assert result.returncode == 1


async def test_ctrl_c_is_not_a_success() -> None:
    peer = await start_peer(free_tcp_port())
    await peer.ok("/help")  # up and reading
    peer.proc.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(peer.proc.wait(), WAIT) == 128 + signal.SIGINT


def test_the_demo_without_a_terminal_runs_the_line_mode(tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    with open(os.devnull) as nothing, open(out, "w") as file:
        code = subprocess.run(
            [*P2PCHAT, "demo", "--user", "tester", "--duration", "1"],
            stdin=nothing,
            stdout=file,
            stderr=subprocess.PIPE,
            timeout=WAIT * 2,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        ).returncode
    text = out.read_text()
    assert code == 0
    assert text.startswith("* demo: registry on 127.0.0.1:"), text[:200]
    assert "\x1b" not in text  # no full-screen drawing in the file


def test_a_bad_registry_address_is_reported_by_the_peer_command() -> None:
    result = run("peer", "--registry", "no such host!")
    assert result.returncode == 2
    assert result.stderr.startswith("usage: p2pchat peer ")
    assert "p2pchat peer: error: argument --registry: not a host name or address" in result.stderr


def test_help_says_each_default_once() -> None:
    out = " ".join(run("peer", "--help").stdout.split())  # as one line, however wrapped
    assert "(default: None)" not in out
    assert "(default: the address the registry sees)" in out


def test_a_busy_udp_port_is_named(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        result = run(
            "registry",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--udp-port",
            str(port),
            "--db",
            str(tmp_path / "r.db"),
        )
    assert result.returncode == 2
    assert f"udp port {port}" in result.stderr, result.stderr
