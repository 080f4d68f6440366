"""Peers under abuse: an honest pair of room members while each attack runs against one of them.

    .venv/bin/python -m bench.peer_abuse                  # every attack, 5 s each; ~2 min
    .venv/bin/python -m bench.peer_abuse --quick          # 2 s each, smaller attacks; < 1 min
    .venv/bin/python -m bench.peer_abuse --attacks room-flood,fuzz --seconds 10

Everything is real and on loopback: the ``p2pchat registry`` command (a fresh process per
attack, cheapest Argon2id profile), and ``PeerNode``s in processes of their own: the victim,
alice, in one; the honest bob (her fellow member of ``lobby``) and carol (who only sends her
direct messages) in another. The attacks come from this process, from 127.0.0.2 and up
(addresses other than the honest users' 127.0.0.1, which a peer exempts from its cap per
address). Each attack is under way before bob logs in, so his link to alice is made during it
(``link s``); then for ``--seconds`` alice and bob each say ``--rate`` room messages a second
(latency: the origin's clock in the message to the receiver's, one machine), bob sends alice
two direct messages a second and carol one (latency: until alice's acknowledgement).

| attack | what it does (against alice) |
|---|---|
| none | nothing: the baseline |
| idle-connections | 400 connections from 20 addresses that never finish a TLS handshake |
|  | (half send a ClientHello, half nothing), each reopened 0.25 s after alice closes it |
| hello-holders | 200 TLS connections with valid user certificates (20 users, 20 |
|  | addresses) that never say `peer_hello`, reopened likewise |
| huge-ids | mallory, a member, sends room messages with 60 KB ids as fast as her link |
|  | takes them, linking again each time alice cuts it |
| room-flood | mallory sends validly signed room messages as fast as her link takes them |
| fuzz | mallory sends the peer fuzz test's hostile frames, pipelined, linking again |
|  | when cut |

Mallory's links are made by hand (TLS with her certificate, `peer_hello`, `mesh`), so no
backoff slows her down; she is logged in (through a registry client, with her key) so that
alice knows her key and takes her for an online member.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import os
import random
import resource
import ssl
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import msgspec

from bench.abuse import Registry, _address
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
)
from p2pchat.peer.events import Notice, PeerEvent, RoomText
from p2pchat.peer.identity import Identity
from p2pchat.peer.node import PeerConfig, PeerNode
from p2pchat.protocol.messages import (
    PROTOCOL_VERSION,
    MeshRooms,
    PeerHello,
    RoomMessage,
    encode,
)
from p2pchat.registry.client import RegistryClient
from p2pchat.store import SqliteStore
from p2pchat.trust import tls
from p2pchat.trust.certs import Authority
from p2pchat.trust.files import load_or_create_authority
from p2pchat.trust.signing import Signer

MODULE = "bench.peer_abuse"
LOBBY = "lobby"
VICTIM, HONEST, SENDER, MEMBER = "alice", "bob", "carol", "mallory"
HOLDERS = 20
ATTACKS = ["none", "idle-connections", "hello-holders", "huge-ids", "room-flood", "fuzz"]
REOPEN = 0.25
"""Seconds an attacker waits before reopening a connection the victim closed."""
GRACE = 2.0
"""Seconds the honest users go on listening after the last message was said."""
HELLO_NONCE = "ab" * 16


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"python -m {MODULE}",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--attacks", default=",".join(ATTACKS), help="which, comma-separated")
    p.add_argument("--seconds", type=float, default=5.0, help="how long each is measured")
    p.add_argument("--rate", type=float, default=4.0, help="room messages a second, each")
    p.add_argument("--scale", type=float, default=1.0, help="attack size (1 = as in the table)")
    p.add_argument(
        "--victim-nofile",
        type=int,
        default=1024,
        help="alice's open-files limit (soft; 1,024 is the common default)",
    )
    p.add_argument("--quick", action="store_true", help="2 s each, attacks at 1/4 of the size")
    p.add_argument("--json", type=Path, default=None, help="results file (bench/results/...)")
    p.add_argument("--role", default="coordinator", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    return p


# ---------------------------------------------------------------- the honest users


class Member:
    """One honest user's peer in a worker process, and what it received."""

    def __init__(self, name: str, registry_port: int, folder: Path) -> None:
        self.name = name
        self.latencies: dict[str, list[float]] = {}
        """Sender -> latency (ms) of each room message received from them."""
        self.notices = 0
        config = PeerConfig(
            registry_port=registry_port,
            listen_host="127.0.0.1",
            data_dir=str(folder / name / "data"),
            config_dir=str(folder / name / "config"),
        )
        self.node = PeerNode(config, self.on_event)

    def on_event(self, event: PeerEvent) -> None:
        if isinstance(event, RoomText) and not event.mine and not event.history:
            ms = (time.time() - event.ts) * 1000
            self.latencies.setdefault(event.sender, []).append(ms)
        elif isinstance(event, Notice):
            self.notices += 1

    async def start(self) -> None:
        await self.node.start()
        await self.node.login(self.name, PASSWORD)

    async def say(self, seconds: float, rate: float) -> int:
        """Say ``rate`` messages a second in the lobby for ``seconds``; returns how many."""
        loop = asyncio.get_running_loop()
        start, count = loop.time(), int(seconds * rate)
        tasks = []
        for i in range(count):
            await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
            tasks.append(asyncio.create_task(self.node.say(LOBBY, f"{self.name} {i}")))
        await asyncio.gather(*tasks, return_exceptions=True)
        return count

    async def direct(self, to: str, seconds: float, rate: float) -> tuple[int, list[float]]:
        """Send ``to`` ``rate`` direct messages a second; (sent, latencies of those delivered
        at once, ms)."""
        loop = asyncio.get_running_loop()
        start, count = loop.time(), int(seconds * rate)
        latencies: list[float] = []

        async def one(i: int) -> None:
            t = loop.time()
            with contextlib.suppress(Exception):
                if (await self.node.send_direct(to, f"{self.name} dm {i}")).delivered:
                    latencies.append((loop.time() - t) * 1000)

        tasks = []
        for i in range(count):
            await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
        return count, latencies


async def worker(args: argparse.Namespace) -> None:
    """A victim (alice) or honest (bob and carol) process: start, say ``ready``, measure at
    ``go``, print the results, stop at end of input."""
    logging.getLogger("p2pchat").setLevel(logging.ERROR)
    if args.role == "victim":
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(args.victim_nofile, hard), hard))
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)

    def say(doc: dict[str, Any]) -> None:
        print(json.dumps(doc), flush=True)

    with tempfile.TemporaryDirectory(prefix="p2pchat-peer-abuse-") as folder:
        names = [VICTIM] if args.role == "victim" else [HONEST, SENDER]
        members = [Member(name, args.port, Path(folder)) for name in names]
        ready: dict[str, Any] = {}
        t = loop.time()
        for member in members:
            await member.start()
        if args.role == "victim":
            ready["port"] = members[0].node.port
        else:  # bob's link to alice, made while the attack runs
            ready["link_s"] = None
            while loop.time() < t + 20:
                if VICTIM in members[0].node.mesh_links(LOBBY):
                    ready["link_s"] = loop.time() - t
                    break
                await asyncio.sleep(0.01)
        say(ready)
        command = (await stdin.readline()).split()
        seconds, rate = float(command[1]), float(command[2])
        result: dict[str, Any] = {}
        if args.role == "victim":
            alice = members[0]
            result["said"] = await alice.say(seconds, rate)
            await asyncio.sleep(GRACE)
            result["from_honest"] = alice.latencies.get(HONEST, [])
            result["from_attacker"] = len(alice.latencies.get(MEMBER, []))
            result["notices"] = alice.notices
            listener = getattr(alice.node, "listener", None)  # none before the shared one
            result["refused"] = listener.refused if listener is not None else 0
            result["evicted"] = listener.evicted if listener is not None else 0
        else:
            bob, carol = members
            said, bob_dm, carol_dm = await asyncio.gather(
                bob.say(seconds, rate),
                bob.direct(VICTIM, seconds, 2.0),
                carol.direct(VICTIM, seconds, 1.0),
            )
            await asyncio.sleep(GRACE)
            result.update(
                said=said,
                from_victim=bob.latencies.get(VICTIM, []),
                dm_sent=bob_dm[0] + carol_dm[0],
                dm_latencies=bob_dm[1] + carol_dm[1],
            )
        say(result)
        await stdin.read()
        for member in members:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(member.node.close(), 5)


class Worker:
    """A worker process, spoken to in lines of JSON."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, role: str, registry_port: int, nofile: int) -> Worker:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", MODULE, "--role", role, "--port", str(registry_port),
            "--victim-nofile", str(nofile),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        return cls(proc)

    async def read(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            raise RuntimeError("a worker ended early")
        doc: dict[str, Any] = json.loads(line)
        return doc

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")

    async def stop(self) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(ConnectionError):
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 15)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


# ---------------------------------------------------------------- attacks


class Ctx:
    """What the attacks share: alice's port, the identities they use, and counters."""

    def __init__(self, port: int, scale: float, identities: dict[str, tuple[Path, Path]]) -> None:
        self.port = port
        self.scale = scale
        self.identities = identities
        self.signer: Signer | None = None
        """Mallory's key, once she is logged in."""
        self.opened = 0
        self.refused = 0
        self.closed = 0
        self.frames = 0
        self.first_link = asyncio.Event()

    def n(self, count: int) -> int:
        return max(1, int(count * self.scale))

    def context(self, name: str) -> ssl.SSLContext:
        return tls.client(*self.identities[name])


async def _until_closed(reader: asyncio.StreamReader, stop: asyncio.Event) -> bytes:
    """What the victim sends until it closes the connection (b"" if ``stop`` came first)."""
    read = asyncio.ensure_future(reader.read())
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({read, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if not read.done():
        read.cancel()
        return b""
    try:
        return read.result()
    except (ConnectionError, OSError):
        return b""


async def _pause(stop: asyncio.Event, seconds: float = REOPEN) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


def _client_hello() -> bytes:
    """The first flight of a TLS client: what a connection sends before it never goes on."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls_object = tls.client().wrap_bio(incoming, outgoing, server_side=False)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls_object.do_handshake()
    return outgoing.read()


async def attack_none(ctx: Ctx, stop: asyncio.Event) -> None:
    ctx.first_link.set()
    await stop.wait()


async def _hold(
    ctx: Ctx, stop: asyncio.Event, address: str, context: ssl.SSLContext | None, first: bytes
) -> None:
    """A connection to alice from ``address`` (in TLS with ``context``, if any) that sends
    ``first`` and never goes further; reopened ``REOPEN`` s after alice closes it."""
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1",
                ctx.port,
                local_addr=(address, 0),
                ssl=context,
                server_hostname="" if context is not None else None,
            )
        except OSError:  # refused at accept (before TLS), or the handshake failed
            ctx.refused += 1
            await _pause(stop)
            continue
        ctx.opened += 1
        writer.write(first)
        said = await _until_closed(reader, stop)
        if said.startswith(b'{"type":"peer_error"'):
            ctx.refused += 1
        elif not stop.is_set():
            ctx.closed += 1
        writer.transport.abort()
        await _pause(stop)


async def attack_idle_connections(ctx: Ctx, stop: asyncio.Event) -> None:
    hello = _client_hello()
    ctx.first_link.set()
    await asyncio.gather(
        *(
            _hold(ctx, stop, _address(i % 20), None, hello if i % 2 else b"")
            for i in range(ctx.n(400))
        )
    )


async def attack_hello_holders(ctx: Ctx, stop: asyncio.Event) -> None:
    holders = [f"holder{i:02d}" for i in range(HOLDERS)]
    contexts = [ctx.context(name) for name in holders]
    ctx.first_link.set()
    await asyncio.gather(
        *(
            _hold(ctx, stop, _address(i % HOLDERS), contexts[i % HOLDERS], b"")
            for i in range(ctx.n(200))
        )
    )


Body = Callable[[asyncio.StreamWriter, asyncio.Event], Coroutine[Any, Any, None]]


async def _as_member(ctx: Ctx, stop: asyncio.Event, body: Body) -> None:
    """Mallory's links to alice, made by hand: TLS with her certificate, ``peer_hello``,
    ``mesh``; then ``body`` writes until the link is cut, and she links again at once."""
    context = ctx.context(MEMBER)
    hello = encode(PeerHello(version=PROTOCOL_VERSION, username=MEMBER, nonce=HELLO_NONCE))
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1",
                ctx.port,
                local_addr=(_address(0), 0),
                ssl=context,
                server_hostname="",
                limit=1 << 17,
            )
            writer.write(hello)
            welcome = await asyncio.wait_for(reader.readline(), 10)
        except (OSError, TimeoutError, ValueError):
            ctx.refused += 1
            await _pause(stop, 0.05)
            continue
        if b'"peer_welcome"' not in welcome:
            ctx.refused += 1
            writer.transport.abort()
            await _pause(stop, 0.05)
            continue
        ctx.opened += 1
        writer.write(encode(MeshRooms(rooms=[LOBBY])))
        ctx.first_link.set()
        cut = asyncio.Event()
        tasks = [
            asyncio.create_task(_discard(reader, cut)),
            asyncio.create_task(body(writer, cut)),
            asyncio.create_task(stop.wait()),
            asyncio.create_task(cut.wait()),
        ]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        if not stop.is_set():
            ctx.closed += 1
        writer.transport.abort()
        await asyncio.sleep(0)


async def _discard(reader: asyncio.StreamReader, cut: asyncio.Event) -> None:
    """Read and drop what alice sends; ``cut`` once she closes the link."""
    with contextlib.suppress(ConnectionError, OSError, ValueError):
        while await reader.read(1 << 16):
            pass
    cut.set()


async def _write_all(
    ctx: Ctx, writer: asyncio.StreamWriter, cut: asyncio.Event, frames: Callable[[], list[bytes]]
) -> None:
    """Write ``frames()`` batch after batch, as fast as the link takes them, until cut."""
    with contextlib.suppress(ConnectionError, OSError):
        while not cut.is_set() and not writer.transport.is_closing():
            batch = frames()
            writer.write(b"".join(batch))
            ctx.frames += len(batch)
            await writer.drain()
            await asyncio.sleep(0)  # drain() need not yield: let the loop see a cut link


async def attack_huge_ids(ctx: Ctx, stop: asyncio.Event) -> None:
    count = itertools.count()

    def frames() -> list[bytes]:
        return [
            encode(
                RoomMessage(
                    id=f"{next(count):x}".rjust(60_000, "f"),
                    room=LOBBY,
                    origin=MEMBER,
                    seq=1,
                    text="x",
                    ts=time.time(),
                    hops=8,
                    sig="A" * 86,
                )
            )
            for _ in range(4)
        ]

    await _as_member(ctx, stop, lambda writer, cut: _write_all(ctx, writer, cut, frames))


async def attack_room_flood(ctx: Ctx, stop: asyncio.Event) -> None:
    assert ctx.signer is not None
    identity = Identity(ctx.signer)
    seqs = itertools.count(1)
    rng = random.Random(7)

    def frames() -> list[bytes]:
        batch = []
        for _ in range(50):
            seq = next(seqs)
            msg = RoomMessage(
                id=f"{rng.getrandbits(128):032x}",
                room=LOBBY,
                origin=MEMBER,
                seq=seq,
                text=f"flood {seq}",
                ts=time.time(),
                hops=8,
            )
            batch.append(encode(msgspec.structs.replace(msg, sig=identity.sign_message(msg))))
        return batch

    await _as_member(ctx, stop, lambda writer, cut: _write_all(ctx, writer, cut, frames))


async def attack_fuzz(ctx: Ctx, stop: asyncio.Event) -> None:
    from tests.peer.test_fuzz import hostile

    rng = random.Random(20261126)

    def frames() -> list[bytes]:
        return [hostile(rng) for _ in range(20)]

    await _as_member(ctx, stop, lambda writer, cut: _write_all(ctx, writer, cut, frames))


ATTACK: dict[str, Callable[[Ctx, asyncio.Event], Coroutine[Any, Any, None]]] = {
    "none": attack_none,
    "idle-connections": attack_idle_connections,
    "hello-holders": attack_hello_holders,
    "huge-ids": attack_huge_ids,
    "room-flood": attack_room_flood,
    "fuzz": attack_fuzz,
}
MEMBER_ATTACKS = {"huge-ids", "room-flood", "fuzz"}


# ---------------------------------------------------------------- the coordinator


def make_db(db: Path, folder: Path) -> dict[str, tuple[Path, Path]]:
    """The accounts (alice, bob and mallory in ``lobby``; carol; the holders), the
    registry's CA beside the database, and the holders' certificates from it."""
    from tests.registry.harness import identity_files

    holders = [f"holder{i:02d}" for i in range(HOLDERS)]
    store = SqliteStore(db)
    populate(
        store,
        [VICTIM, HONEST, SENDER, MEMBER, *holders],
        {LOBBY: [VICTIM, HONEST, MEMBER]},
    )
    store.close()
    authority, _ = load_or_create_authority(db)
    return {name: identity_files(folder, authority, name, Signer()) for name in holders}


async def member_login(ctx: Ctx, registry_port: int, authority: Authority, folder: Path) -> Any:
    """Mallory logs in with a key of hers (so alice learns it from the registry); her
    certificate is issued for it by the same CA. She publishes port 1, where nobody listens,
    so the others' dials to her fail at once."""
    from tests.registry.harness import identity_files

    signer = Signer()
    client = await RegistryClient.connect("127.0.0.1", registry_port)
    await client.login(MEMBER, PASSWORD, 1, heartbeat=0, key=signer.public_key)
    ctx.signer = signer
    ctx.identities[MEMBER] = identity_files(folder, authority, MEMBER, signer)
    return client


async def run_attack(
    name: str, registry: Registry, args: argparse.Namespace, folder: Path, ctx_ids: dict[str, Any]
) -> dict[str, Any]:
    victim = await Worker.start("victim", registry.port, args.victim_nofile)
    honest: Worker | None = None
    stop = asyncio.Event()
    attack: asyncio.Task[None] | None = None
    client: RegistryClient | None = None
    try:
        port = (await victim.read(60))["port"]
        ctx = Ctx(port, args.scale, dict(ctx_ids))
        if name in MEMBER_ATTACKS:
            authority, _ = load_or_create_authority(folder / "registry.db")
            client = await member_login(ctx, registry.port, authority, folder)
        attack = asyncio.create_task(ATTACK[name](ctx, stop))
        await asyncio.wait_for(ctx.first_link.wait(), 30)
        await asyncio.sleep(1.0)  # the attack under way first
        honest = await Worker.start("honest", registry.port, args.victim_nofile)
        link_s = (await honest.read(60)).get("link_s")
        cpu0, wall0 = sum(cpu_seconds(victim.proc.pid)), time.monotonic()
        for process in (victim, honest):
            process.send(f"go {args.seconds} {args.rate}")
        alice = await victim.read(args.seconds + 60)
        bob = await honest.read(args.seconds + 60)
        victim_cpu = (sum(cpu_seconds(victim.proc.pid)) - cpu0) / (time.monotonic() - wall0)
        victim_rss = rss_bytes(victim.proc.pid) / 2**20
    finally:
        stop.set()
        if attack is not None:
            try:
                await asyncio.wait_for(attack, 15)
            except TimeoutError:
                attack.cancel()
        if client is not None:
            await client.close()
        for running in (honest, victim):
            if running is not None:
                await running.stop()
    room = [*alice["from_honest"], *bob["from_victim"]]
    said = alice["said"] + bob["said"]
    dms = bob["dm_latencies"]
    return {
        "attack": name,
        "attacker_opened": ctx.opened,
        "attacker_frames": ctx.frames,
        "attacker_refused": ctx.refused,
        "attacker_closed": ctx.closed,
        "room_said": said,
        "room_delivered": len(room),
        "room_p50_ms": percentile(room, 50),
        "room_p99_ms": percentile(room, 99),
        "room_max_ms": max(room, default=float("nan")),
        "dm_sent": bob["dm_sent"],
        "dm_delivered": len(dms),
        "dm_p50_ms": percentile(dms, 50),
        "dm_max_ms": max(dms, default=float("nan")),
        "link_s": link_s if link_s is not None else float("nan"),
        "attacker_shown": alice["from_attacker"],
        "victim_refused": alice["refused"],
        "victim_evicted": alice["evicted"],
        "victim_cpu": victim_cpu,
        "victim_rss_mib": victim_rss,
    }


async def coordinate(args: argparse.Namespace) -> int:
    raise_nofile()
    names = [a.strip() for a in args.attacks.split(",") if a.strip()]
    unknown = set(names) - set(ATTACK)
    if unknown:
        print(f"unknown attacks: {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    command = command_line(MODULE)
    print(header("Peers under abuse: an honest pair of members while alice is attacked", command))
    rows = []
    with tempfile.TemporaryDirectory(prefix="p2pchat-peer-abuse-") as name:
        folder = Path(name)
        db = folder / "registry.db"
        identities = make_db(db, folder)
        for attack in names:
            registry = Registry(db, "cheapest")  # a fresh process for each attack
            try:
                row = await run_attack(attack, registry, args, folder, identities)
            finally:
                registry.stop()
            rows.append(row)
            print(
                f"  {attack}: room p99 {row['room_p99_ms']:.1f} ms, max "
                f"{row['room_max_ms']:.1f} ms, {row['room_delivered']}/{row['room_said']} "
                f"delivered; direct {row['dm_delivered']}/{row['dm_sent']}",
                flush=True,
            )
    print()
    print(
        table(
            [
                "attack",
                "opened",
                "frames",
                "refused",
                "closed",
                "room p50 ms",
                "p99 ms",
                "max ms",
                "delivered",
                "direct ok",
                "direct p50 ms",
                "max ms",
                "link s",
                "victim CPU",
                "RSS MiB",
            ],
            [
                [
                    r["attack"],
                    r["attacker_opened"],
                    r["attacker_frames"],
                    r["attacker_refused"],
                    r["attacker_closed"],
                    r["room_p50_ms"],
                    r["room_p99_ms"],
                    r["room_max_ms"],
                    f"{r['room_delivered']}/{r['room_said']}",
                    f"{r['dm_delivered']}/{r['dm_sent']}",
                    r["dm_p50_ms"],
                    r["dm_max_ms"],
                    r["link_s"],
                    r["victim_cpu"],
                    r["victim_rss_mib"],
                ]
                for r in rows
            ],
        )
    )
    path = save_results("peer_abuse", command, rows, path=args.json)
    print(f"\nresults: {shown(path)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(format=f"{args.role}: %(name)s: %(message)s")
    if args.quick:
        args.seconds, args.scale = 2.0, 0.25
    if args.role in ("victim", "honest"):
        asyncio.run(worker(args))
        return 0
    return asyncio.run(coordinate(args))


if __name__ == "__main__":
    sys.exit(main())
