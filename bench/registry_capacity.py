"""Registry capacity: K concurrent logged-in sessions, heartbeats, and a mix of requests.

    .venv/bin/python -m bench.registry_capacity               # K = 1,000 5,000 10,000; ~4 min
    .venv/bin/python -m bench.registry_capacity --quick       # K = 200, a few seconds

The registry runs in a process of its own: the ``p2pchat registry`` command as shipped (the real
``RegistryServer`` and SQLite store), its database file pre-filled with K accounts and K/20
public rooms of 20 members. This process is the load generator: K ``RegistryClient`` sessions,
logged in, each sending its UDP heartbeat every 20 s with the phases spread evenly (one socket
for all). Then, for ``--seconds``, requests arrive open-loop at ``--rate`` per second from
random sessions: searches, member listings, and room joins/leaves (``--mix``); latency counts
from the moment each request was due, so a stalled generator or registry shows. A closed-loop
run with ``--concurrency`` requests in flight follows, to find the ceiling. CPU share is the
registry process's user+system time over wall time (1.0 = one core); memory per session is its
RSS growth from empty to K sessions, over K.

Every session speaks TLS 1.3 (protocol version 2) and each heartbeat is the session's next
MAC'd ping (a replayed one would be ignored).

Login cost is measured apart (``--logins``): the default Argon2id profile (RFC 9106 low-memory,
t=3, 64 MiB), one login at a time and then all at once. So is coming back after a registry
restart (``--resumes``): that many peers, each with a certificate of the registry's CA for its
key (as a peer keeps from its last login), connect showing it and ``resume``, 64 at a time,
against the same registry with the default Argon2id profile: no password is hashed, so this
is what issue 10's "10,000 returning peers back within 60 s" needs.
The returning peers are members of rooms of ``--room-size``, so each comeback also tells the
members already back.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.common import (
    PASSWORD,
    RESULTS_DIR,
    bench_registry_config,
    command_line,
    cpu_seconds,
    header,
    int_list,
    median,
    percentile,
    populate,
    raise_nofile,
    rss_bytes,
    save_results,
    shown,
    table,
    usernames,
)
from p2pchat.protocol.messages import encode
from p2pchat.registry.client import RegistryClient, RegistryError
from p2pchat.store import SqliteStore
from p2pchat.trust.certs import cert_pem, private_pem
from p2pchat.trust.files import load_or_create_authority
from p2pchat.trust.signing import Signer

MODULE = "bench.registry_capacity"
HEARTBEAT = 20.0
CONNECT_CONCURRENCY = 64


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"python -m {MODULE}",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--sessions", type=int_list, default=[1000, 5000, 10000])
    p.add_argument("--rate", type=float, default=1000.0, help="requests per second (open loop)")
    p.add_argument("--seconds", type=float, default=10.0, help="length of the open-loop run")
    p.add_argument(
        "--mix", default="search:45,members:45,join_leave:10", help="request kinds and weights"
    )
    p.add_argument("--concurrency", type=int, default=64, help="closed-loop requests in flight")
    p.add_argument("--saturate-seconds", type=float, default=5.0)
    p.add_argument("--room-size", type=int, default=20)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument(
        "--logins",
        type=int,
        default=20,
        help="logins timed with the default Argon2id profile (0: skip)",
    )
    p.add_argument(
        "--resumes",
        type=int,
        default=10_000,
        help="returning peers timed coming back with their certificate (0: skip)",
    )
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument(
        "--quick", action="store_true", help="K=200, 2 s runs, 1 repeat, 3 logins, 200 resumes"
    )
    return p


class Registry:
    """The registry subprocess: the ``p2pchat registry`` command itself, on 127.0.0.1, with
    the registration rate limit out of reach (see ``common.bench_registry_config``) and info
    logging off (one line per login). Its open-files limit is inherited from this process,
    which raises it to the hard limit first."""

    def __init__(self, db: Path, profile: str = "cheapest") -> None:
        cfg = bench_registry_config()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "p2pchat",
                "registry",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--udp-port",
                "0",
                "--db",
                str(db),
                "--password-hash",
                profile,
                "--max-connections",
                "20000",
                "--heartbeat-interval",
                f"{cfg.heartbeat_interval:g}",
                "--timeout",
                f"{cfg.timeout:g}",
                "--register-rate",
                f"{cfg.register_rate:g}",
                "--register-burst",
                str(cfg.register_burst),
                "--log-level",
                "warning",
            ],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        # "registry listening on 127.0.0.1 tcp PORT udp PORT (database FILE)"
        words = line.split()
        try:
            self.port = int(words[words.index("tcp") + 1])
            self.udp_port = int(words[words.index("udp") + 1])
        except (ValueError, IndexError):
            self.stop()
            raise RuntimeError(f"registry did not start: {line!r}") from None
        self.pid = self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def make_db(path: Path, k: int, room_size: int, profile: str = "cheapest") -> list[str]:
    users = usernames(k)
    rooms = {
        f"r{i:05d}": users[i * room_size : (i + 1) * room_size]
        for i in range(max(1, k // room_size))
    }
    store = SqliteStore(path)
    populate(store, users, {r: m for r, m in rooms.items() if m}, profile)
    store.close()
    return list(rooms)


class _Heartbeats(asyncio.DatagramProtocol):
    pass


async def heartbeats(
    udp_port: int, clients: list[RegistryClient], stop: asyncio.Event, sent: list[int]
) -> None:
    """Each session's next ping every 20 s, the phases spread evenly over the period."""
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        _Heartbeats, remote_addr=("127.0.0.1", udp_port)
    )
    start = loop.time()
    done = 0  # pings sent so far, counting whole periods
    try:
        while not stop.is_set():
            k = len(clients)
            if k:
                due = int((loop.time() - start) / HEARTBEAT * k)
                while done < due:
                    transport.sendto(encode(clients[done % k].next_ping()))
                    done += 1
            sent[0] = done
            await asyncio.sleep(0.01)
    finally:
        transport.close()


async def login_all(port: int, users: list[str]) -> list[RegistryClient]:
    clients: list[RegistryClient] = [None] * len(users)  # type: ignore[list-item]
    sem = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def one(i: int, user: str) -> None:
        async with sem:
            client = await RegistryClient.connect("127.0.0.1", port, on_event=lambda e: None)
            await client.login(user, PASSWORD, 40000 + i % 20000, heartbeat=0)
            clients[i] = client

    await asyncio.gather(*(one(i, u) for i, u in enumerate(users)))
    return clients


async def request(
    client: RegistryClient,
    kind: str,
    users: list[str],
    rooms: list[str],
    rng: random.Random,
    joined: dict[int, str],
    who: int,
) -> None:
    if kind == "search":
        await client.search(rng.choice(users))
    elif kind == "members":
        await client.members(rng.choice(rooms))
    else:
        room = joined.pop(who, None)
        if room is not None:
            await client.leave_room(room)
        else:
            room = rng.choice(rooms)
            joined[who] = room
            try:
                await client.join_room(room)
            except RegistryError:  # already a member: its own room
                joined.pop(who, None)


async def open_loop(
    clients: list[RegistryClient],
    users: list[str],
    rooms: list[str],
    args: argparse.Namespace,
    rng: random.Random,
) -> dict[str, list[float]]:
    kinds, weights = [], []
    for part in args.mix.split(","):
        name, _, w = part.partition(":")
        kinds.append(name.strip())
        weights.append(float(w or 1))
    loop = asyncio.get_running_loop()
    lat: dict[str, list[float]] = {k: [] for k in kinds}
    errors = [0]
    joined: dict[int, str] = {}
    tasks: set[asyncio.Task[None]] = set()
    busy: set[int] = set()

    async def timed(kind: str, who: int, due: float) -> None:
        try:
            await request(clients[who], kind, users, rooms, rng, joined, who)
            lat[kind].append((loop.time() - due) * 1000)
        except (RegistryError, ConnectionError):
            errors[0] += 1
        finally:
            busy.discard(who)

    start = loop.time() + 0.05
    total = int(args.seconds * args.rate)
    for i in range(total):
        due = start + i / args.rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        who = rng.randrange(len(clients))
        while who in busy:  # one request at a time per session, as a peer does
            who = rng.randrange(len(clients))
        busy.add(who)
        kind = rng.choices(kinds, weights)[0]
        task = asyncio.create_task(timed(kind, who, due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks, timeout=10.0)
    lat["_errors"] = [float(errors[0])]
    lat["_elapsed"] = [loop.time() - start]
    return lat


async def closed_loop(
    clients: list[RegistryClient],
    users: list[str],
    rooms: list[str],
    concurrency: int,
    seconds: float,
    rng: random.Random,
) -> tuple[int, float, list[float]]:
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    lat: list[float] = []
    count = [0]

    async def lane(j: int) -> None:
        client = clients[j * len(clients) // concurrency]
        while loop.time() < end:
            t = loop.time()
            if rng.random() < 0.5:
                await client.search(rng.choice(users))
            else:
                await client.members(rng.choice(rooms))
            lat.append((loop.time() - t) * 1000)
            count[0] += 1

    t0 = loop.time()
    await asyncio.gather(*(lane(j) for j in range(concurrency)))
    return count[0], loop.time() - t0, lat


async def capacity_run(k: int, args: argparse.Namespace, rng: random.Random) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="p2pchat-bench-") as tmp:
        db = Path(tmp) / "registry.db"
        rooms = make_db(db, k, args.room_size)
        users = usernames(k)
        registry = Registry(db)
        stop = asyncio.Event()
        clients: list[RegistryClient] = []
        try:
            await asyncio.sleep(0.3)
            rss0 = rss_bytes(registry.pid)
            t = time.perf_counter()
            pingers: list[RegistryClient] = []
            sent = [0]
            beat = asyncio.create_task(heartbeats(registry.udp_port, pingers, stop, sent))
            clients = await login_all(registry.port, users)
            pingers.extend(clients)
            setup_s = time.perf_counter() - t
            gc.collect()
            gc.freeze()  # the generator's 10,000 clients: keep its full collections short
            # and none at all while measuring: with gc.callbacks timing, the generator's own
            # collections (a 22-38 ms gen1 pass once per 10 s window at K = 10,000) showed up
            # as the slowest requests; the registry's collections are what is measured
            gc.disable()
            await asyncio.sleep(1.0)
            rss1 = rss_bytes(registry.pid)
            cpu0, w0, sent0 = sum(cpu_seconds(registry.pid)), time.perf_counter(), sent[0]
            lat = await open_loop(clients, users, rooms, args, rng)
            cpu1, w1, sent1 = sum(cpu_seconds(registry.pid)), time.perf_counter(), sent[0]
            n_ops = sum(len(v) for key, v in lat.items() if not key.startswith("_"))
            count, elapsed, sat_lat = await closed_loop(
                clients, users, rooms, args.concurrency, args.saturate_seconds, rng
            )
            cpu2, w2 = sum(cpu_seconds(registry.pid)), time.perf_counter()
            dropped = sum(1 for c in clients if c.closed.is_set())
            read_list = lat.get("search", []) + lat.get("members", [])
            row = {
                "sessions": k,
                "setup_s": setup_s,
                "ops_per_s": n_ops / lat["_elapsed"][0],
                "read_p50_ms": percentile(read_list, 50),
                "read_p99_ms": percentile(read_list, 99),
                "search_p99_ms": percentile(lat.get("search", []), 99),
                "members_p99_ms": percentile(lat.get("members", []), 99),
                "join_leave_p99_ms": percentile(lat.get("join_leave", []), 99),
                "max_ms": max(
                    (x for key, v in lat.items() if not key.startswith("_") for x in v),
                    default=float("nan"),
                ),
                "errors": lat["_errors"][0],
                "heartbeats_per_s": (sent1 - sent0) / (w1 - w0),
                "cpu_share": (cpu1 - cpu0) / (w1 - w0),
                "kib_per_session": (rss1 - rss0) / k / 1024,
                "rss_mib": rss1 / 2**20,
                "sat_ops_per_s": count / elapsed,
                "sat_p99_ms": percentile(sat_lat, 99),
                "sat_cpu_share": (cpu2 - cpu1) / (w2 - w1),
                "dropped_sessions": float(dropped),
            }
        finally:
            stop.set()
            registry.stop()
            for c in clients:
                if c is not None:
                    with contextlib.suppress(Exception):
                        await c.close()
            with contextlib.suppress(Exception):
                await beat
            gc.enable()
            gc.unfreeze()
    return row


async def login_cost(n: int) -> dict[str, Any]:
    """Logins with the default Argon2id profile: one at a time, then ``n`` at once."""
    with tempfile.TemporaryDirectory(prefix="p2pchat-bench-") as tmp:
        db = Path(tmp) / "registry.db"
        users = usernames(n, "login")
        t = time.perf_counter()
        store = SqliteStore(db)
        populate(store, users, {}, "default")
        store.close()
        hash_ms = (time.perf_counter() - t) * 1000
        registry = Registry(db, "default")
        try:
            seq: list[float] = []
            for user in users:
                client = await RegistryClient.connect("127.0.0.1", registry.port)
                t = time.perf_counter()
                await client.login(user, PASSWORD, 40000, heartbeat=0)
                seq.append((time.perf_counter() - t) * 1000)
                await client.close()
            await asyncio.sleep(0.2)
            clients = [await RegistryClient.connect("127.0.0.1", registry.port) for _ in users]
            cpu0 = sum(cpu_seconds(registry.pid))
            t = time.perf_counter()
            times = await asyncio.gather(
                *(_timed_login(c, u) for c, u in zip(clients, users, strict=True))
            )
            wall = time.perf_counter() - t
            cpu1 = sum(cpu_seconds(registry.pid))
            for c in clients:
                await c.close()
        finally:
            registry.stop()
    return {
        "logins": n,
        "hash_once_ms": hash_ms,
        "sequential_p50_ms": median(seq),
        "sequential_max_ms": max(seq),
        "concurrent_p50_ms": median(times),
        "concurrent_max_ms": max(times),
        "concurrent_logins_per_s": n / wall,
        "concurrent_cpu_share": (cpu1 - cpu0) / wall,
    }


async def resume_cost(n: int, room_size: int) -> dict[str, Any]:
    """``n`` peers back after a restart, each with its certificate: no password hash."""
    with tempfile.TemporaryDirectory(prefix="p2pchat-bench-") as tmp:
        folder = Path(tmp)
        db = folder / "registry.db"
        make_db(db, n, room_size, "default")
        users = usernames(n)
        authority, _ = load_or_create_authority(db)  # the registry's CA, kept beside its db
        store = SqliteStore(db)
        identities: list[tuple[Path, Path]] = []
        now = time.time()
        for user in users:
            signer = Signer()
            store.set_key(user, signer.public_key)
            cert, key = folder / f"{user}.cert.pem", folder / f"{user}.key.pem"
            cert.write_bytes(cert_pem(authority.issue(user, signer.public_key, now)))
            key.write_bytes(private_pem(_private_key(signer)))
            identities.append((cert, key))
        store.close()
        registry = Registry(db, "default")
        clients: list[RegistryClient] = []
        try:
            await asyncio.sleep(0.3)
            sem = asyncio.Semaphore(CONNECT_CONCURRENCY)
            times: list[float] = []
            refused = [0]

            async def one(i: int) -> None:
                async with sem:
                    t = time.perf_counter()
                    try:
                        client = await RegistryClient.connect(
                            "127.0.0.1", registry.port, cert=identities[i], on_event=lambda e: None
                        )
                        clients.append(client)
                        await client.resume(40000 + i % 20000, heartbeat=0)
                    except (RegistryError, ConnectionError):
                        refused[0] += 1
                        return
                    times.append((time.perf_counter() - t) * 1000)

            cpu0 = sum(cpu_seconds(registry.pid))
            t = time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(n)))
            wall = time.perf_counter() - t
            cpu1 = sum(cpu_seconds(registry.pid))
        finally:
            registry.stop()
            for c in clients:
                with contextlib.suppress(Exception):
                    await c.close()
    return {
        "resumes": n,
        "resumed": len(times),
        "refused": refused[0],
        "wall_s": wall,
        "resumes_per_s": len(times) / wall,
        "p50_ms": median(times),
        "p99_ms": percentile(times, 99),
        "cpu_share": (cpu1 - cpu0) / wall,
        "registry_cpu_ms_each": (cpu1 - cpu0) * 1000 / max(1, len(times)),
    }


def _private_key(signer: Signer) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(signer.seed)


async def _timed_login(client: RegistryClient, user: str) -> float:
    t = time.perf_counter()
    await client.login(user, PASSWORD, 40000, heartbeat=0)
    return (time.perf_counter() - t) * 1000


COLUMNS = [
    ("sessions", "sessions"),
    ("setup s", "setup_s"),
    ("ops/s", "ops_per_s"),
    ("read p50 ms", "read_p50_ms"),
    ("read p99 ms", "read_p99_ms"),
    ("search p99", "search_p99_ms"),
    ("members p99", "members_p99_ms"),
    ("join/leave p99", "join_leave_p99_ms"),
    ("max ms", "max_ms"),
    ("beats/s", "heartbeats_per_s"),
    ("CPU", "cpu_share"),
    ("KiB/session", "kib_per_session"),
    ("sat ops/s", "sat_ops_per_s"),
    ("sat p99 ms", "sat_p99_ms"),
    ("sat CPU", "sat_cpu_share"),
    ("dropped", "dropped_sessions"),
    ("errors", "errors"),
]
RESUME_COLUMNS = [
    ("peers back", "resumed"),
    ("refused", "refused"),
    ("wall s", "wall_s"),
    ("resumes/s", "resumes_per_s"),
    ("p50 ms", "p50_ms"),
    ("p99 ms", "p99_ms"),
    ("registry CPU", "cpu_share"),
    ("registry CPU ms each", "registry_cpu_ms_each"),
]
LOGIN_COLUMNS = [
    ("logins", "logins"),
    ("one at a time p50 ms", "sequential_p50_ms"),
    ("max ms", "sequential_max_ms"),
    ("all at once p50 ms", "concurrent_p50_ms"),
    ("max ms", "concurrent_max_ms"),
    ("logins/s", "concurrent_logins_per_s"),
    ("CPU", "concurrent_cpu_share"),
]


async def main_async(
    args: argparse.Namespace,
) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    raise_nofile()
    rng = random.Random(args.seed)
    rows = []
    for k in args.sessions:
        runs = []
        for r in range(args.repeat):
            res = await capacity_run(k, args, rng)
            print(
                f"  K={k} run {r + 1}: {res['ops_per_s']:.0f} ops/s, read p99 "
                f"{res['read_p99_ms']:.1f} ms, CPU {res['cpu_share']:.2f}",
                flush=True,
            )
            runs.append(res)
        row: dict[str, Any] = {key: median(x[key] for x in runs) for key in runs[0]}
        row["repeats"] = runs
        rows.append(row)
    logins = await login_cost(args.logins) if args.logins else {}
    resumes = await resume_cost(args.resumes, args.room_size) if args.resumes else {}
    return rows, logins, resumes


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quick:  # new defaults; options given explicitly still win
        parser.set_defaults(
            sessions=[200],
            seconds=2.0,
            saturate_seconds=1.0,
            repeat=1,
            logins=3,
            rate=200.0,
            resumes=200,
        )
        args = parser.parse_args(argv)
    command = command_line(MODULE)
    print(
        header("registry capacity: concurrent sessions, heartbeats and requests", command),
        flush=True,
    )
    print(
        f"{args.rate:g} requests/s ({args.mix}) for {args.seconds:g} s, heartbeats every "
        f"{HEARTBEAT:g} s; closed loop {args.concurrency} in flight for "
        f"{args.saturate_seconds:g} s; median of {args.repeat}\n",
        flush=True,
    )
    rows, logins, resumes = asyncio.run(main_async(args))
    print()
    print(table([c for c, _ in COLUMNS], [[r[k] for _, k in COLUMNS] for r in rows]))
    if logins:
        print(
            f"\nlogin cost, default Argon2id profile (one hash: {logins['hash_once_ms']:.0f} "
            "ms in this process):"
        )
        print(table([c for c, _ in LOGIN_COLUMNS], [[logins[k] for _, k in LOGIN_COLUMNS]]))
    if resumes:
        print(
            f"\ncoming back after a restart with a certificate (resume, no password hash), "
            f"{CONNECT_CONCURRENCY} at a time, same profile:"
        )
        print(table([c for c, _ in RESUME_COLUMNS], [[resumes[k] for _, k in RESUME_COLUMNS]]))
        if logins:
            each = resumes["resumes"]
            print(
                f"{each:,} peers back: {each / resumes['resumes_per_s']:.1f} s by resume, "
                f"{each / logins['concurrent_logins_per_s']:.0f} s by password login "
                f"({logins['concurrent_logins_per_s']:.1f} logins/s)"
            )
    out = (
        args.out
        if args.out is not None
        else (None if args.quick else RESULTS_DIR / "registry_capacity.json")
    )
    if out is not None:
        path = save_results(
            "registry_capacity", command, rows, {"logins": logins, "resumes": resumes}, out
        )
        print(f"\nresults: {shown(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
