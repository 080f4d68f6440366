"""Abuse: an honest user's experience of the registry while each attack runs.

    .venv/bin/python -m bench.abuse                   # every attack, 5 s each; ~2 min
    .venv/bin/python -m bench.abuse --quick           # 1 s each, small attacks; ~20 s
    .venv/bin/python -m bench.abuse --attacks guessing,register-flood --seconds 10

The registry is the ``p2pchat registry`` command as shipped, with its default settings (the
default Argon2id profile, one hash worker per two cores, 64 connections per address, 127.0.0.1
exempt from per-address pooling), on a database pre-filled with ``--rooms`` public rooms. The
attacks come from this process, from the loopback addresses 127.0.0.2 and up (each a distinct
address to the registry), except the guesser, who shares 127.0.0.1 with the honest user, as
behind one NAT. The honest user runs in a process of its own, so that the attackers' load on
this process is not counted as the registry's: while an attack runs it logs in (with the
ticket of its previous login), lists its own rooms, and sends ``--rate`` searches a second,
open loop (latency counts from when each was due). Every attack is bounded in count and time.
Every connection speaks TLS, as the registry requires (protocol version 2).

| attack | what it does |
|---|---|
| none | nothing: the baseline |
| idle-connections | 2,000 connections from 10 addresses that say hello and nothing more |
| slow-frames | 2,000 connections from 40 addresses, each holding a partial 65,000-byte frame |
| register-flood | 10 addresses x 10 connections registering new names without pause |
| login-flood | 200 connections from one address logging in to 200 accounts, wrong passwords |
| pipeline-flood | 200 connections from 4 addresses pipelining requests as fast as TCP takes them |
| rooms-listing | 20 logged-in sessions paging through every room without pause |
| join-leave | a member of the honest user's room joining and leaving it without pause |
| guessing | wrong passwords for the honest user's account without pause, from its own address |
| fuzz | 8 connections sending the fuzz test's malformed frames, pipelined |
| handshakes | 4 addresses x 16 connections, each a TLS handshake and a close, without pause |
| plain-tcp | 4 addresses x 16 connections sending requests in plain TCP (a downgrade) |
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench.common import (
    PASSWORD,
    command_line,
    cpu_seconds,
    header,
    percentile,
    populate,
    raise_nofile,
    rss_bytes,
    save_results,
    shown,
    table,
    usernames,
)
from p2pchat.protocol.messages import PROTOCOL_VERSION, RoomEvent
from p2pchat.registry.client import RegistryClient, RegistryError
from p2pchat.store import SqliteStore
from p2pchat.trust import tls

MODULE = "bench.abuse"
HONEST = "honest"
LOBBY = "lobby"
ATTACKS = [
    "none",
    "idle-connections",
    "slow-frames",
    "register-flood",
    "login-flood",
    "pipeline-flood",
    "rooms-listing",
    "join-leave",
    "guessing",
    "fuzz",
    "handshakes",
    "plain-tcp",
]
HELLO = b'{"type":"hello","id":1,"version":%d}\n' % PROTOCOL_VERSION


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"python -m {MODULE}",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--attacks", default=",".join(ATTACKS), help="which, comma-separated")
    p.add_argument("--seconds", type=float, default=5.0, help="how long each attack runs")
    p.add_argument("--rate", type=float, default=20.0, help="honest searches per second")
    p.add_argument("--rooms", type=int, default=60_000, help="public rooms in the database")
    p.add_argument("--scale", type=float, default=1.0, help="attack size (1 = as in the table)")
    p.add_argument(
        "--password-hash", choices=["default", "cheapest"], default="default", help="Argon2id"
    )
    p.add_argument("--quick", action="store_true", help="1 s, 2,000 rooms, attacks at 1/10")
    p.add_argument("--json", type=Path, default=None, help="results file (bench/results/...)")
    p.add_argument("--role", default="coordinator", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--ticket", default="", help=argparse.SUPPRESS)
    return p


# ---------------------------------------------------------------- the honest user


async def honest(args: argparse.Namespace) -> dict[str, Any]:
    """Wait for 'go' on standard input; then log in, list own rooms, search at ``--rate``."""
    loop = asyncio.get_running_loop()
    events = [0]

    def on_event(event: object) -> None:
        if isinstance(event, RoomEvent):
            events[0] += 1

    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print("ready", flush=True)
    await reader.readline()
    result: dict[str, Any] = {}
    start = loop.time()
    client = await RegistryClient.connect("127.0.0.1", args.port, on_event=on_event)
    try:
        session = await client.login(HONEST, PASSWORD, 7000, heartbeat=0, ticket=args.ticket)
        result["login_s"] = loop.time() - start
        result["ticket"] = session.ticket or ""
    except RegistryError as exc:
        result["login_s"] = float("nan")
        result["login_error"] = exc.code
        result["ticket"] = args.ticket
    t = loop.time()
    try:
        mine = await client.rooms(mine=True)
        result["rooms_mine_ms"] = (loop.time() - t) * 1000
        result["rooms_mine"] = len(mine)
    except RegistryError:
        result["rooms_mine_ms"] = float("nan")
    latencies: list[float] = []
    errors = [0]
    tasks: set[asyncio.Task[None]] = set()

    async def search(due: float) -> None:
        try:
            await client.search(HONEST)
            latencies.append((loop.time() - due) * 1000)
        except RegistryError:
            errors[0] += 1

    measured_from = loop.time()
    events[0] = 0
    n = int(args.seconds * args.rate)
    for i in range(n):
        due = measured_from + i / args.rate
        await asyncio.sleep(max(0.0, due - loop.time()))
        task = asyncio.create_task(search(due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks, timeout=30)
    result["searches"] = len(latencies)
    result["search_errors"] = n - len(latencies)
    result["p50_ms"] = percentile(latencies, 50)
    result["p99_ms"] = percentile(latencies, 99)
    result["max_ms"] = max(latencies, default=float("nan"))
    result["events_per_s"] = events[0] / max(1e-9, loop.time() - measured_from)
    with contextlib.suppress(RegistryError, ConnectionError):
        await client.logout()
    await client.close()
    return result


# ---------------------------------------------------------------- attacks


class Ctx:
    """What the attacks share: the registry's port, accounts, and counters."""

    def __init__(self, port: int, scale: float, rooms: int) -> None:
        self.port = port
        self.scale = scale
        self.rooms = rooms
        self.sent = 0
        self.refused = 0
        self.closed = 0
        self.writers: list[asyncio.StreamWriter] = []
        self.tasks: list[asyncio.Task[Any]] = []
        self.ready = asyncio.Event()
        """Set by attacks that prepare (log in) before they start; the others start at once."""
        self.tls = tls.client()

    def n(self, count: int) -> int:
        return max(1, int(count * self.scale))

    async def open(
        self, address: str, secure: bool = True
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """A connection from ``address``, over TLS unless ``secure`` is off; None (counted
        as refused) if the registry turned it away, before TLS or during the handshake."""
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1",
                self.port,
                local_addr=(address, 0),
                limit=1 << 20,
                ssl=self.tls if secure else None,
                server_hostname="" if secure else None,
            )
        except OSError:  # ssl.SSLError among them
            self.refused += 1
            return None
        self.writers.append(writer)
        return reader, writer

    def watch(self, reader: asyncio.StreamReader) -> None:
        """Read and count what the registry answers, until it closes the connection."""

        async def run() -> None:
            with contextlib.suppress(
                ConnectionError, OSError, asyncio.LimitOverrunError, ValueError
            ):
                while line := await reader.readline():
                    if b'"too_many_connections"' in line or b'"overloaded"' in line:
                        self.refused += 1
            self.closed += 1

        self.tasks.append(asyncio.create_task(run()))

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for writer in self.writers:
            with contextlib.suppress(Exception):
                writer.transport.abort()
        await asyncio.sleep(0)


def _address(i: int) -> str:
    return f"127.0.{2 + i // 250}.{2 + i % 250}"


async def attack_none(ctx: Ctx, stop: asyncio.Event) -> None:
    await stop.wait()


async def attack_idle_connections(ctx: Ctx, stop: asyncio.Event) -> None:
    for i in range(ctx.n(2000)):
        if stop.is_set():
            break
        opened = await ctx.open(_address(i % 10))
        if opened:
            opened[1].write(HELLO)
            ctx.sent += 1
            ctx.watch(opened[0])
    await stop.wait()


async def attack_slow_frames(ctx: Ctx, stop: asyncio.Event) -> None:
    partial = HELLO[:-2] + b',"agent":"' + b"x" * 65_000
    for i in range(ctx.n(2000)):
        if stop.is_set():
            break
        opened = await ctx.open(_address(i % 40))
        if opened:
            opened[1].write(partial)
            ctx.sent += 1
            ctx.watch(opened[0])
    await stop.wait()


async def _closed_loop(
    ctx: Ctx, stop: asyncio.Event, address: str, frame: Callable[[int], bytes], login: bytes = b""
) -> None:
    """One connection sending ``frame(i)`` after each answer, until ``stop``."""
    opened = await ctx.open(address)
    if opened is None:
        return
    reader, writer = opened
    with contextlib.suppress(ConnectionError, OSError, ValueError):
        writer.write(HELLO + login)
        await reader.readline()
        if login:
            await reader.readline()
        i = 0
        while not stop.is_set():
            writer.write(frame(i))
            line = await reader.readline()
            if not line:
                ctx.closed += 1
                return
            ctx.sent += 1
            if b'"rate_limited"' in line or b'"too_many_connections"' in line:
                ctx.refused += 1
            i += 1


def _login_frame(name: str, password: str = PASSWORD, ticket: str = "") -> bytes:
    fields: dict[str, Any] = {
        "type": "login",
        "id": 1,
        "username": name,
        "password": password,
        "port": 7000,
    }
    if ticket:
        fields["ticket"] = ticket
    return json.dumps(fields).encode() + b"\n"


async def attack_register_flood(ctx: Ctx, stop: asyncio.Event) -> None:
    counter = iter(range(10**9))

    def register(_: int) -> bytes:
        name = f"bot{next(counter):07d}z"
        return b'{"type":"register","id":2,"username":"%s","password":"bot-password"}\n' % (
            name.encode()
        )

    await asyncio.gather(
        *(
            _closed_loop(ctx, stop, _address(a), register)
            for a in range(10)
            for _ in range(ctx.n(10))
        )
    )


async def attack_login_flood(ctx: Ctx, stop: asyncio.Event) -> None:
    accounts = usernames(ctx.n(200), "acct")
    await asyncio.gather(
        *(
            _closed_loop(ctx, stop, _address(0), lambda _, a=a: _login_frame(a, "wrong-guess"))
            for a in accounts
        )
    )


async def _pipeline(ctx: Ctx, stop: asyncio.Event, address: str, chunks: list[bytes]) -> None:
    """One connection writing ``chunks`` round and round, as fast as TCP takes them, and
    reading (and counting) what comes back."""
    opened = await ctx.open(address)
    if opened is None:
        return
    reader, writer = opened
    ctx.watch(reader)
    with contextlib.suppress(ConnectionError, OSError):
        while not stop.is_set():
            for chunk in chunks:
                writer.write(chunk)
                ctx.sent += chunk.count(b"\n")
                await writer.drain()
                if stop.is_set():
                    return


async def attack_pipeline_flood(ctx: Ctx, stop: asyncio.Event) -> None:
    chunk = HELLO * 1800  # 64 KiB
    await asyncio.gather(
        *(_pipeline(ctx, stop, _address(i % 4), [chunk]) for i in range(ctx.n(200)))
    )


async def attack_rooms_listing(ctx: Ctx, stop: asyncio.Event) -> None:
    names = usernames(ctx.n(20), "lister")
    settled = [0]
    go = asyncio.Event()

    def one_more() -> None:
        settled[0] += 1
        if settled[0] == len(names):
            ctx.ready.set()

    async def lister(name: str) -> None:
        try:
            client = await RegistryClient.connect("127.0.0.1", ctx.port)
            await client.login(name, PASSWORD, 7000, heartbeat=0)
        except (RegistryError, ConnectionError):
            one_more()
            return
        one_more()
        await go.wait()
        with contextlib.suppress(RegistryError, ConnectionError):
            while not stop.is_set():
                await client.rooms()
                ctx.sent += 1 + ctx.rooms // 200
        await client.close()

    tasks = [asyncio.create_task(lister(n)) for n in names]
    await ctx.ready.wait()
    go.set()
    await asyncio.gather(*tasks)


async def attack_join_leave(ctx: Ctx, stop: asyncio.Event) -> None:
    client = await RegistryClient.connect("127.0.0.1", ctx.port)
    await client.login("looper", PASSWORD, 7000, heartbeat=0)
    ctx.ready.set()
    inside = False
    with contextlib.suppress(ConnectionError):
        while not stop.is_set():
            try:
                if inside:
                    await client.leave_room(LOBBY)
                else:
                    await client.join_room(LOBBY)
                inside = not inside
            except RegistryError as exc:
                ctx.refused += 1
                if exc.code == "already_member":
                    inside = True
                elif exc.code == "not_a_member":
                    inside = False
            ctx.sent += 1
    await client.close()


async def attack_guessing(ctx: Ctx, stop: asyncio.Event) -> None:
    await asyncio.gather(
        *(
            _closed_loop(ctx, stop, "127.0.0.1", lambda i: _login_frame(HONEST, f"guess{i}"))
            for _ in range(4)
        )
    )


async def attack_fuzz(ctx: Ctx, stop: asyncio.Event) -> None:
    from tests.registry.test_fuzz import SEED, fuzz_frames

    frames = fuzz_frames(SEED, ctx.n(20_000))
    chunks = [b"\n".join(frames[i : i + 500]) + b"\n" for i in range(0, len(frames), 500)]
    await asyncio.gather(*(_pipeline(ctx, stop, _address(k), chunks) for k in range(8)))


async def attack_handshakes(ctx: Ctx, stop: asyncio.Event) -> None:
    """What TLS costs the registry when nobody says anything: handshakes, closed at once."""

    async def one(address: str) -> None:
        while not stop.is_set():
            opened = await ctx.open(address)
            if opened is None:
                await asyncio.sleep(0.01)  # turned away: try again shortly
                continue
            ctx.sent += 1
            opened[1].transport.abort()
            ctx.writers.remove(opened[1])

    await asyncio.gather(*(one(_address(a)) for a in range(4) for _ in range(ctx.n(16))))


async def attack_plain_tcp(ctx: Ctx, stop: asyncio.Event) -> None:
    """A downgrade: requests in plain TCP. Each connection ends at the failed handshake."""
    login = _login_frame(HONEST, "guess-in-clear")

    async def one(address: str) -> None:
        while not stop.is_set():
            opened = await ctx.open(address, secure=False)
            if opened is None:
                await asyncio.sleep(0.01)
                continue
            reader, writer = opened
            ctx.writers.remove(writer)
            with contextlib.suppress(ConnectionError, OSError):
                writer.write(HELLO + login)
                ctx.sent += 2
                if await asyncio.wait_for(reader.read(), 10):
                    ctx.refused += 1  # an answer of any kind (there should be none)
            ctx.closed += 1
            writer.transport.abort()

    await asyncio.gather(*(one(_address(a)) for a in range(4) for _ in range(ctx.n(16))))


ATTACK: dict[str, Callable[[Ctx, asyncio.Event], Awaitable[None]]] = {
    "none": attack_none,
    "idle-connections": attack_idle_connections,
    "slow-frames": attack_slow_frames,
    "register-flood": attack_register_flood,
    "login-flood": attack_login_flood,
    "pipeline-flood": attack_pipeline_flood,
    "rooms-listing": attack_rooms_listing,
    "join-leave": attack_join_leave,
    "guessing": attack_guessing,
    "fuzz": attack_fuzz,
    "handshakes": attack_handshakes,
    "plain-tcp": attack_plain_tcp,
}


# ---------------------------------------------------------------- the coordinator


class Registry:
    """The real program, defaults but the database and the hash profile, on 127.0.0.1."""

    def __init__(self, db: Path, profile: str) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "p2pchat", "registry", "--host", "127.0.0.1",
                "--port", "0", "--udp-port", "0", "--db", str(db),
                "--password-hash", profile, "--log-level", "error",
            ],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        assert self.proc.stdout is not None
        words = self.proc.stdout.readline().split()
        self.port = int(words[words.index("tcp") + 1])

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def make_db(path: Path, rooms: int, scale: float, profile: str) -> None:
    """The honest user in ``lobby`` with a few others; attack accounts; ``rooms`` rooms."""
    store = SqliteStore(path)
    others = usernames(5, "friend")
    listers = usernames(max(1, int(20 * scale)), "lister")
    accounts = usernames(max(1, int(200 * scale)), "acct")
    populate(
        store,
        [HONEST, "looper", *others, *listers, *accounts],
        {LOBBY: [HONEST, *others], "den": [HONEST, "friend00000"]},
        profile,
    )
    owner = accounts[0]
    for i in range(rooms):
        store.create_room(f"pub{i:06d}", False, owner)  # bypasses the per-owner cap
    store.close()


async def first_login(db: Path, profile: str) -> str:
    """The honest user's last good login before the attacks: its ticket."""
    registry = Registry(db, profile)
    try:
        client = await RegistryClient.connect("127.0.0.1", registry.port)
        session = await client.login(HONEST, PASSWORD, 7000, heartbeat=0)
        await client.close()
    finally:
        registry.stop()
    return session.ticket or ""


async def run_attack(
    name: str, registry: Registry, args: argparse.Namespace, ticket: str
) -> dict[str, Any]:
    ctx = Ctx(registry.port, args.scale, args.rooms)
    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", MODULE, "--role", "honest", "--port", str(registry.port),
        "--seconds", str(args.seconds), "--rate", str(args.rate), "--ticket", ticket,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert worker.stdin is not None and worker.stdout is not None
    assert (await asyncio.wait_for(worker.stdout.readline(), 30)).strip() == b"ready"
    stop = asyncio.Event()
    attack = asyncio.create_task(ATTACK[name](ctx, stop))
    if name not in ("rooms-listing", "join-leave"):
        ctx.ready.set()
    await asyncio.wait_for(ctx.ready.wait(), 60)
    await asyncio.sleep(min(1.0, args.seconds / 2))  # the attack under way first
    cpu0, wall0 = sum(cpu_seconds(registry.proc.pid)), time.monotonic()
    worker.stdin.write(b"go\n")
    await worker.stdin.drain()
    out = await asyncio.wait_for(worker.stdout.read(), args.seconds + 120)
    await worker.wait()
    cpu = (sum(cpu_seconds(registry.proc.pid)) - cpu0) / (time.monotonic() - wall0)
    rss = rss_bytes(registry.proc.pid)
    stop.set()
    try:
        await asyncio.wait_for(attack, 30)
    except TimeoutError:
        attack.cancel()
    await ctx.close()
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    result.update(
        attack=name,
        attacker_requests=ctx.sent,
        attacker_refused=ctx.refused,
        attacker_closed=ctx.closed,
        registry_cpu=cpu,
        registry_rss_mib=rss / 2**20,
    )
    return result


async def coordinate(args: argparse.Namespace) -> int:
    raise_nofile()
    names = [a.strip() for a in args.attacks.split(",") if a.strip()]
    unknown = set(names) - set(ATTACK)
    if unknown:
        print(f"unknown attacks: {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    command = command_line(MODULE)
    print(header("Registry under abuse: an honest user's searches and login", command))
    rows = []
    with tempfile.TemporaryDirectory(prefix="p2pchat-abuse-") as folder:
        db = Path(folder) / "registry.db"
        t = time.monotonic()
        make_db(db, args.rooms, args.scale, args.password_hash)
        print(f"database: {args.rooms:,} rooms, made in {time.monotonic() - t:.1f} s", flush=True)
        ticket = await first_login(db, args.password_hash)
        for name in names:
            registry = Registry(db, args.password_hash)  # a fresh process for each attack
            try:
                row = await run_attack(name, registry, args, ticket)
            finally:
                registry.stop()
            ticket = row.get("ticket") or ticket
            rows.append(row)
            print(
                f"  {name}: search p99 {row['p99_ms']:.1f} ms, login {row['login_s']:.2f} s "
                f"{row.get('login_error', '')}",
                flush=True,
            )
    print()
    print(
        table(
            [
                "attack",
                "attacker reqs",
                "refused",
                "closed",
                "search p50 ms",
                "p99 ms",
                "max ms",
                "login s",
                "own rooms ms",
                "events/s",
                "reg. CPU",
                "reg. RSS MiB",
            ],
            [
                [
                    r["attack"],
                    r["attacker_requests"],
                    r["attacker_refused"],
                    r["attacker_closed"],
                    r["p50_ms"],
                    r["p99_ms"],
                    r["max_ms"],
                    r["login_s"] if "login_error" not in r else r["login_error"],
                    r["rooms_mine_ms"],
                    r["events_per_s"],
                    r["registry_cpu"],
                    r["registry_rss_mib"],
                ]
                for r in rows
            ],
        )
    )
    for r in rows:
        r.pop("ticket", None)
    path = save_results("abuse", command, rows, path=args.json)
    print(f"\nresults: {shown(path)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.seconds, args.rooms, args.scale = 1.0, 2000, 0.1
    if args.role == "honest":
        result = asyncio.run(honest(args))
        print(json.dumps(result), flush=True)
        return 0
    random.seed(1)
    return asyncio.run(coordinate(args))


if __name__ == "__main__":
    sys.exit(main())
