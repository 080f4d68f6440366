"""Room events of a big room, and what they do to everyone else's requests.

    .venv/bin/python -m bench.registry_fanout              # 10,000 members; ~3 min
    .venv/bin/python -m bench.registry_fanout --quick      # 300 members, a few seconds

The registry runs in a process of its own (the ``p2pchat registry`` command, as the capacity
benchmark runs it) with one public room of ``--members`` members, all online: load worker
processes (``bench._sessions``) hold their sessions, each reading every event it is sent (and
counting it). A churn worker makes ``--churners`` of the members log out and in again, at
each ``--rates`` presence changes a second in all: each change is an ``offline`` or ``online``
event for every other online member. A probe worker, also a member, sends
``--search-rate`` searches a second and ``--page-rate`` requests for one page (200) of the
room's members, open loop (latency counted from when each request was due), and notes when
each presence event reaches it: the event's delay is from the churn request's sending to
that arrival (the processes share the machine's monotonic clock).

Per rate: search and page latency p50/p99/max, event delay p50/p99/max, events delivered a
second (all members), the registry's CPU share, and sessions the registry dropped. A rate of
0 is the quiet baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    RESULTS_DIR,
    command_line,
    cpu_seconds,
    header,
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
from bench.registry_capacity import (
    NOFILE,
    PER_ADDRESS,
    Registry,
    plan_workers,
    start_workers,
    stop_workers,
    worker_stats,
)
from p2pchat.store import SqliteStore

MODULE = "bench.registry_fanout"
ROOM = "big"


def float_list(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"python -m {MODULE}",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--members", type=int, default=10_000)
    p.add_argument("--procs", type=int, default=2, help="load worker processes for the members")
    p.add_argument("--churners", type=int, default=20)
    p.add_argument(
        "--rates", type=float_list, default=[0.0, 2.0, 8.0], help="presence changes a second"
    )
    p.add_argument("--seconds", type=float, default=15.0, help="length of each measurement")
    p.add_argument("--search-rate", type=float, default=100.0)
    p.add_argument("--page-rate", type=float, default=10.0)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--seed", type=int, default=5)
    p.add_argument(
        "--settle-limit",
        type=float,
        default=300.0,
        help="seconds to wait at most for the logins' events to be delivered",
    )
    p.add_argument("--out", type=Path, default=None)
    p.add_argument(
        "--quick", action="store_true", help="300 members, rates 0,4, 2 s runs, 1 repeat"
    )
    return p


def make_db(path: Path, members: int) -> list[str]:
    users = usernames(members)
    store = SqliteStore(path)
    populate(store, users, {ROOM: users})
    store.close()
    return users


def delays(changes: list[list[Any]], arrivals: list[list[Any]]) -> list[float]:
    """Each presence change's delay to the probe: matched in order per (user, change)."""
    seen: dict[tuple[str, str], list[float]] = {}
    for at, user, change in arrivals:
        seen.setdefault((user, change), []).append(at)
    out: list[float] = []
    for sent, user, change in changes:
        got = seen.get((user, change))
        if got:
            out.append((got.pop(0) - sent) * 1000)
    return out


async def settle(workers: list[Any], limit: float) -> tuple[float, float]:
    """Wait until the members have stopped receiving events (the logins' online events are
    all out: 1 s without one), at most ``limit`` seconds; how long it took, and how many."""
    t = time.perf_counter()
    last = -1.0
    quiet = 0
    while time.perf_counter() - t < limit:
        now = (await worker_stats(workers))["events"]
        quiet = quiet + 1 if now == last else 0
        if quiet >= 4:
            return time.perf_counter() - t - 1.0, now
        last = now
        await asyncio.sleep(0.25)
    return time.perf_counter() - t, last


async def measure(
    rate: float,
    args: argparse.Namespace,
    registry: Registry,
    probe: Any,
    churn: Any,
    holders: list[Any],
    users: list[str],
) -> dict[str, Any]:
    workers = [probe, churn, *holders]
    await probe.call("events")  # forget what came before
    before = await worker_stats(workers)
    cpu0, w0 = sum(cpu_seconds(registry.pid)), time.perf_counter()
    start_at = time.monotonic() + 0.5
    load = probe.call(
        "open_loop",
        rate=args.search_rate + args.page_rate,
        seconds=args.seconds,
        mix_text=f"search:{args.search_rate},page:{args.page_rate}",
        users=users,
        rooms=[ROOM],
        start_at=start_at,
    )
    if rate > 0:
        run, churned = await asyncio.gather(
            load,
            churn.call(
                "churn", count=args.churners, rate=rate, seconds=args.seconds, start_at=start_at
            ),
        )
    else:
        run, churned = await load, {"changes": [], "errors": 0}
    await asyncio.sleep(1.0)  # the last events on their way
    cpu1, w1 = sum(cpu_seconds(registry.pid)), time.perf_counter()
    after = await worker_stats(workers)
    arrivals = await probe.call("events")
    delay = delays(churned["changes"], arrivals)
    search = run["latency_ms"].get("search", [])
    page = run["latency_ms"].get("page", [])
    return {
        "rate": rate,
        "changes": float(len(churned["changes"])),
        "search_p50_ms": percentile(search, 50),
        "search_p99_ms": percentile(search, 99),
        "search_max_ms": max(search, default=float("nan")),
        "page_p50_ms": percentile(page, 50),
        "page_p99_ms": percentile(page, 99),
        "page_max_ms": max(page, default=float("nan")),
        "page_rows": median(run["page_rows"]) if run["page_rows"] else float("nan"),
        "page_kb": max(run["page_bytes"], default=0) / 1000,
        "event_p50_ms": percentile(delay, 50),
        "event_p99_ms": percentile(delay, 99),
        "event_max_ms": max(delay, default=float("nan")),
        "events_missed": float(len(churned["changes"]) - len(delay)),
        "events_per_s": (after["events"] - before["events"]) / (w1 - w0),
        "cpu_share": (cpu1 - cpu0) / (w1 - w0),
        "errors": float(run["errors"] + run["unanswered"] + churned["errors"]),
        "dropped": after["closed"],
    }


async def main_async(args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    raise_nofile(NOFILE)
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="p2pchat-bench-") as tmp:
        db = Path(tmp) / "registry.db"
        users = make_db(db, args.members)
        # the probe, the churners, then the holders, each with its own source addresses
        shares = [users[:1], users[1 : 1 + args.churners], users[1 + args.churners :]]
        plan = plan_workers(len(users), 2 + args.procs, PER_ADDRESS)
        exempt = [a for _, addresses in plan for a in addresses]
        registry = Registry(db, max_connections=args.members + 2000, exempt=exempt)
        workers: list[Any] = []
        try:
            await asyncio.sleep(0.3)
            rss0 = rss_bytes(registry.pid)
            t = time.perf_counter()
            probe_w, probe_setup = await start_workers(
                registry, shares[0], 1, PER_ADDRESS, rng.randrange(1 << 30), record=True
            )
            churn_w, _ = await start_workers(
                registry, shares[1], 1, PER_ADDRESS, rng.randrange(1 << 30)
            )
            holders, setups = await start_workers(
                registry, shares[2], args.procs, PER_ADDRESS, rng.randrange(1 << 30)
            )
            workers = [*probe_w, *churn_w, *holders]
            setup_s = time.perf_counter() - t
            logged_in = sum(s["sessions"] for s in [*probe_setup, *setups]) + args.churners
            print(f"  {logged_in:,} members logged in in {setup_s:.1f} s", flush=True)
            settle_s, events = await settle(workers, args.settle_limit)
            stats = await worker_stats(workers)
            print(
                f"  their {events:,.0f} online events delivered {settle_s:.1f} s later; "
                f"{stats['closed']:,.0f} sessions dropped by the registry",
                flush=True,
            )
            setup = {
                "members": args.members,
                "online": logged_in,
                "setup_s": setup_s,
                "settle_s": settle_s,
                "setup_events": events,
                "setup_dropped": stats["closed"],
                "registry_rss_mib": rss_bytes(registry.pid) / 2**20,
                "kib_per_session": (rss_bytes(registry.pid) - rss0) / args.members / 1024,
            }
            rows = []
            for rate in args.rates:
                runs = []
                for r in range(args.repeat):
                    res = await measure(
                        rate, args, registry, probe_w[0], churn_w[0], holders, users
                    )
                    print(
                        f"  rate {rate:g}/s run {r + 1}: search p99 {res['search_p99_ms']:.1f} "
                        f"ms (max {res['search_max_ms']:.0f}), event p99 "
                        f"{res['event_p99_ms']:.0f} ms, {res['events_per_s']:,.0f} events/s, "
                        f"CPU {res['cpu_share']:.2f}",
                        flush=True,
                    )
                    runs.append(res)
                row: dict[str, Any] = {key: median(x[key] for x in runs) for key in runs[0]}
                row["repeats"] = runs
                rows.append(row)
        finally:
            registry.stop()
            await stop_workers(workers)
    return rows, setup


COLUMNS = [
    ("changes/s", "rate"),
    ("search p50", "search_p50_ms"),
    ("p99", "search_p99_ms"),
    ("max", "search_max_ms"),
    ("page p50", "page_p50_ms"),
    ("p99", "page_p99_ms"),
    ("max", "page_max_ms"),
    ("rows", "page_rows"),
    ("kB", "page_kb"),
    ("event p50", "event_p50_ms"),
    ("p99", "event_p99_ms"),
    ("max", "event_max_ms"),
    ("events/s", "events_per_s"),
    ("CPU", "cpu_share"),
    ("missed", "events_missed"),
    ("dropped", "dropped"),
    ("errors", "errors"),
]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quick:  # new defaults; options given explicitly still win
        parser.set_defaults(
            members=300, churners=4, rates=[0.0, 4.0], seconds=2.0, repeat=1, procs=1
        )
        args = parser.parse_args(argv)
    command = command_line(MODULE, argv)
    print(header("registry fan-out: a big room's events against everyone's requests", command))
    print(
        f"{args.members:,} members of one room, all online; {args.churners} of them log out "
        f"and in again; {args.search_rate:g} searches and {args.page_rate:g} member pages a "
        f"second for {args.seconds:g} s per rate; latencies in ms; median of {args.repeat}\n",
        flush=True,
    )
    rows, setup = asyncio.run(main_async(args))
    print()
    print(table([c for c, _ in COLUMNS], [[r[k] for _, k in COLUMNS] for r in rows]))
    print(
        f"\nregistry: {setup['registry_rss_mib']:.0f} MiB with {setup['online']:,} sessions "
        f"({setup['kib_per_session']:.1f} KiB each); logged in in {setup['setup_s']:.1f} s, "
        f"their {setup['setup_events']:,.0f} online events delivered "
        f"{setup['settle_s']:.1f} s later; {setup['setup_dropped']:,.0f} dropped"
    )
    out = (
        args.out
        if args.out is not None
        else (None if args.quick else RESULTS_DIR / "registry_fanout.json")
    )
    if out is not None:
        path = save_results("registry_fanout", command, rows, {"setup": setup}, out)
        print(f"\nresults: {shown(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
