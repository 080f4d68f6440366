"""The real programs on hosts of their own: a registry and three peers, one per network namespace.

The test builds a small network: a "switch" namespace holding a bridge, and one namespace per
program (registry 10.77.0.1, alice .2, bob .3, carol .4), each joined to the bridge by a veth
pair. Nothing is started with ``--advertise``: the registry must record each peer's own source
address, and the peers must reach each other there. So nothing here works by accident because
every peer shares 127.0.0.1.

Everything lives in namespaces the test creates and deletes itself (deleting a namespace
deletes its veth ends and the bridge). It needs root and iproute2's ``ip``; it skips, saying
why, only when namespaces cannot be created or entered.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TypeVar

import pytest

P2PCHAT = [sys.executable, "-m", "p2pchat"]
REGISTRY_IP = "10.77.0.1"
PEER_IPS = {"alice": "10.77.0.2", "bob": "10.77.0.3", "carol": "10.77.0.4"}
PREFIX_LEN = 24
TCP_PORT = 15600
UDP_PORT = 15500
STEP = 10.0
"""Seconds any one expected line may take to appear."""
PASSWORD = "netns-pw-1"

MEMBER_ROW = re.compile(r"  (\S+) online (\d+\.\d+\.\d+\.\d+):(\d+)( \(owner\))?")

T = TypeVar("T")


# ---------------------------------------------------------------------- the network


def _find_ip() -> str | None:
    found = shutil.which("ip")
    if found is not None:
        return found
    for candidate in ("/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=15, check=False)


def _must(cmd: list[str]) -> None:
    result = _run(cmd)
    if result.returncode != 0:
        raise RuntimeError(
            f"`{' '.join(cmd)}` failed with {result.returncode}: {result.stderr.strip()}"
        )


@dataclass
class Hosts:
    """The namespaces of one test run; ``exec(role)`` prefixes a command to run inside one."""

    ip: str
    switch: str
    netns: dict[str, str] = field(default_factory=dict)
    """role ("registry", "alice", ...) -> namespace name"""

    def exec(self, role: str) -> list[str]:
        return [self.ip, "netns", "exec", self.netns[role]]


def _kill_everything_inside(ip: str, netns: str) -> None:
    """Processes left in one of our namespaces (only if the test could not stop them)."""
    result = _run([ip, "netns", "pids", netns])
    for word in result.stdout.split():
        with contextlib.suppress(ValueError, ProcessLookupError, PermissionError):
            os.kill(int(word), signal.SIGKILL)


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    """Five namespaces (a switch and four hosts), removed afterwards even if the test fails."""
    ip = _find_ip()
    if ip is None:
        pytest.skip(
            "needs the `ip` command of iproute2 (Debian/Ubuntu package `iproute2`) "
            "to create network namespaces"
        )
    base = f"p2pc-{os.getpid()}-{secrets.token_hex(2)}"
    topo = Hosts(ip, f"{base}-sw")
    created: list[str] = []
    try:
        result = _run([ip, "netns", "add", topo.switch])
        if result.returncode != 0:
            pytest.skip(
                f"cannot create a network namespace (this needs root with CAP_SYS_ADMIN; euid is "
                f"{os.geteuid()}): "
                f"`ip netns add` said: {result.stderr.strip() or result.returncode}"
            )
        created.append(topo.switch)
        result = _run([ip, "netns", "exec", topo.switch, "true"])
        if result.returncode != 0:
            pytest.skip(
                f"cannot enter a network namespace (euid {os.geteuid()}): "
                f"`ip netns exec` said: {result.stderr.strip() or result.returncode}"
            )
        sw = [ip, "-n", topo.switch]
        _must([*sw, "link", "set", "lo", "up"])
        _must([*sw, "link", "add", "br0", "type", "bridge"])
        _must([*sw, "link", "set", "br0", "up"])
        addresses = {"registry": REGISTRY_IP, **PEER_IPS}
        for index, (role, address) in enumerate(addresses.items()):
            name = f"{base}-{role[:3]}"
            _must([ip, "netns", "add", name])
            created.append(name)
            topo.netns[role] = name
            port = f"port{index}"
            _must([*sw, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", name])
            _must([*sw, "link", "set", port, "master", "br0", "up"])
            inside = [ip, "-n", name]
            _must([*inside, "link", "set", "lo", "up"])
            _must([*inside, "addr", "add", f"{address}/{PREFIX_LEN}", "dev", "eth0"])
            _must([*inside, "link", "set", "eth0", "up"])
        yield topo
    finally:
        problems = []
        for name in reversed(created):
            _kill_everything_inside(ip, name)
            result = _run([ip, "netns", "del", name])
            if result.returncode != 0:
                problems.append(f"{name}: {result.stderr.strip()}")
        left = [n for n in _run([ip, "netns", "list"]).stdout.split() if n.startswith(base)]
        assert not problems and not left, f"namespaces not removed: {problems or left}"


# ---------------------------------------------------------------------- the programs


class Program:
    """A child process whose stdout is read line by line into ``lines``, as it comes."""

    def __init__(
        self, name: str, proc: asyncio.subprocess.Process, stderr: IO[bytes], stderr_path: Path
    ) -> None:
        self.name = name
        self.proc = proc
        self.lines: list[str] = []
        self._stderr = stderr
        self._stderr_path = stderr_path
        self._changed = asyncio.Event()
        self._eof = False
        self._next_reply = 0
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, name: str, argv: list[str], logs: Path) -> Program:
        path = logs / f"{name}.stderr"
        stderr = path.open("wb")
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        return cls(name, proc, stderr, path)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        try:
            while raw := await self.proc.stdout.readline():
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._changed.set()
        finally:
            self._eof = True
            self._changed.set()

    def transcript(self) -> str:
        err = self._stderr_path.read_text(errors="replace").strip()
        out = "\n".join(f"    {line}" for line in self.lines) or "    (nothing)"
        return f"--- {self.name} stdout:\n{out}\n--- {self.name} stderr:\n{err or '(nothing)'}"

    async def wait_for(self, what: str, found: Callable[[], T | None], timeout: float) -> T:
        """Until ``found()`` gives something: re-checked at every new line, up to ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            self._changed.clear()
            result = found()
            if result is not None:
                return result
            remaining = deadline - loop.time()
            if self._eof or remaining <= 0:
                why = "its output ended" if self._eof else f"{timeout:g} s passed"
                pytest.fail(f"{self.name}: {why} without {what}\n{self.transcript()}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def line(self, exact: str, timeout: float = STEP) -> None:
        """Wait until this exact line has been printed (at any time so far)."""
        await self.wait_for(repr(exact), lambda: True if exact in self.lines else None, timeout)

    async def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode() + b"\n")
        await self.proc.stdin.drain()

    async def command(self, text: str, timeout: float = STEP) -> tuple[list[str], str]:
        """Run one command: its rows and its final ``ok:``/``error:`` line.

        Unrequested lines (``* ...`` notices and incoming messages) printed meanwhile are not
        rows; they stay in ``lines`` for the checks that look for them.
        """
        start = self._next_reply

        def final() -> int | None:
            for index in range(start, len(self.lines)):
                if self.lines[index].startswith(("ok:", "error:")):
                    return index
            return None

        await self.send(text)
        end = await self.wait_for(f"an ok:/error: line answering {text!r}", final, timeout)
        self._next_reply = end + 1
        rows = [row for row in self.lines[start:end] if not row.startswith(("* ", "Message from "))]
        return rows, self.lines[end]

    async def ok(self, text: str, timeout: float = STEP) -> tuple[list[str], str]:
        rows, final = await self.command(text, timeout)
        assert final.startswith("ok: "), f"{self.name}: {text!r} gave {final!r}\n" + (
            self.transcript()
        )
        return rows, final

    async def exited(self, timeout: float = STEP) -> int:
        """Wait for the process to exit by itself and its output to be read to the end."""
        try:
            code = await asyncio.wait_for(self.proc.wait(), timeout)
            await asyncio.wait_for(self._reader, timeout)
        except TimeoutError:
            pytest.fail(f"{self.name} did not exit within {timeout:g} s\n{self.transcript()}")
        return code

    async def kill(self) -> None:
        """Stop it if it still runs (SIGTERM, then SIGKILL), and release everything."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self._reader, 5)
        except TimeoutError:
            self._reader.cancel()
        self._stderr.close()


def _members(rows: list[str], who: str) -> dict[str, tuple[str, int]]:
    """``/members`` rows -> username: (host, port) of the online ones."""
    out: dict[str, tuple[str, int]] = {}
    for row in rows:
        match = MEMBER_ROW.fullmatch(row)
        assert match, f"{who}: unexpected /members row {row!r}"
        out[match[1]] = (match[2], int(match[3]))
    return out


# ---------------------------------------------------------------------- the test


async def test_registry_and_three_peers_on_hosts_of_their_own(hosts: Hosts, tmp_path: Path) -> None:
    started = time.monotonic()
    db = tmp_path / "r.db"
    programs: list[Program] = []
    try:
        registry = await Program.start(
            "registry",
            [
                *hosts.exec("registry"),
                *P2PCHAT,
                "registry",
                "--host",
                REGISTRY_IP,
                "--port",
                str(TCP_PORT),
                "--udp-port",
                str(UDP_PORT),
                "--db",
                str(db),
                "--password-hash",
                "cheapest",
                "--log-level",
                "warning",
            ],
            tmp_path,
        )
        programs.append(registry)
        await registry.line(
            f"registry listening on {REGISTRY_IP} tcp {TCP_PORT} udp {UDP_PORT} (database {db})"
        )

        peers: dict[str, Program] = {}
        for name in PEER_IPS:
            peers[name] = await Program.start(
                name,
                [
                    *hosts.exec(name),
                    *P2PCHAT,
                    "peer",
                    "--registry",
                    f"{REGISTRY_IP}:{TCP_PORT}",
                    "--host",
                    "0.0.0.0",
                    "--port",
                    "0",
                    "--ui",
                    "line",
                    "--heartbeat",
                    "1",
                ],
                tmp_path,
            )
            programs.append(peers[name])
        alice, bob, carol = peers["alice"], peers["bob"], peers["carol"]

        # Accounts and sessions, each peer from its own host.
        replies = await asyncio.gather(
            *(p.ok(f"/register {name} {PASSWORD}") for name, p in peers.items())
        )
        for name, (_, final) in zip(peers, replies, strict=True):
            assert final == f"ok: registered {name}; now /login {name} PASSWORD"
        replies = await asyncio.gather(
            *(p.ok(f"/login {name} {PASSWORD}") for name, p in peers.items())
        )
        ports: dict[str, int] = {}
        for name, (_, final) in zip(peers, replies, strict=True):
            match = re.fullmatch(
                rf"ok: logged in as {name}, listening on port (\d+); rooms: none yet", final
            )
            assert match, f"{name}: login said {final!r}"
            ports[name] = int(match[1])

        # A room with all three.
        assert (await alice.ok("/create lobby"))[1] == "ok: created public room lobby"
        assert (await alice.ok("/add lobby bob"))[1] == "ok: added bob to lobby"
        assert (await alice.ok("/add lobby carol"))[1] == "ok: added carol to lobby"
        await bob.line("* alice added you to lobby")
        await carol.line("* alice added you to lobby")

        # Every peer sees all three online, each at the address of its own host (as the
        # registry saw it: no --advertise), with the port it listens on.
        # (Everyone logged in before the room was made, and each /add was answered: the
        # registry's list is complete already, no waiting needed.)
        expected = {name: (PEER_IPS[name], ports[name]) for name in PEER_IPS}
        for name, peer in peers.items():
            rows, final = await peer.ok("/members lobby")
            assert final == "ok: 3 members, 3 online", f"{name}: {final!r}\n{peer.transcript()}"
            assert _members(rows, name) == expected, f"{name}: {rows}"
            assert rows[0].endswith(" (owner)") and rows[0].startswith("  alice ")
        assert len({host for host, _ in expected.values()}) == 3

        # The first room message is also the probe that the mesh is up: said once, never
        # retried, it must reach both other members.
        _, said = await alice.ok("/say lobby hello from alice")
        assert re.fullmatch(r"ok: sent to lobby over [12] links?", said), (
            f"alice: {said!r} (no link to any member yet)\n{alice.transcript()}"
        )
        for peer in (bob, carol):
            await peer.line("Message from alice at lobby: hello from alice")

        _, said = await carol.ok("/say lobby carol here, hello both")
        for peer in (alice, bob):
            await peer.line("Message from carol at lobby: carol here, hello both")

        # A direct message, peer to peer.
        assert (await bob.ok("/msg carol hi"))[1] == "ok: delivered to carol"
        await carol.line("Message from bob: hi")

        # Presence and address, as another host sees them.
        _, found = await carol.ok("/search alice")
        assert found == f"ok: alice is online at {PEER_IPS['alice']}:{ports['alice']}"

        # Everybody leaves; the programs exit by themselves, with 0.
        for name, peer in peers.items():
            assert (await peer.ok("/quit"))[1] == "ok: bye"
            assert await peer.exited() == 0, f"{name} exited badly\n{peer.transcript()}"
        registry.proc.send_signal(signal.SIGTERM)
        assert await registry.exited() == 0, registry.transcript()
        assert registry.lines[-1] == "registry stopped"

        # Each message shown exactly once, where it should be and nowhere else; and nothing
        # but the line-mode contract's kinds of lines, and no error.
        wanted = {
            "alice": ["Message from carol at lobby: carol here, hello both"],
            "bob": [
                "Message from alice at lobby: hello from alice",
                "Message from carol at lobby: carol here, hello both",
            ],
            "carol": ["Message from alice at lobby: hello from alice", "Message from bob: hi"],
        }
        for name, peer in peers.items():
            shown = Counter(line for line in peer.lines if line.startswith("Message from "))
            assert shown == Counter(wanted[name]), f"{name} showed {dict(shown)}"
            for line in peer.lines:
                assert line.startswith(("ok: ", "* ", "Message from ", "  ")), (
                    f"{name}: unexpected line {line!r}\n{peer.transcript()}"
                )
    finally:
        for program in reversed(programs):
            await program.kill()
        for program in programs:  # shown by pytest when the test fails
            print(program.transcript())
        print(f"took {time.monotonic() - started:.1f} s")
