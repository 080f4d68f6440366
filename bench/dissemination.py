"""Room dissemination: flooding over the bounded mesh against the naive send-to-every-member.

    .venv/bin/python -m bench.dissemination                  # full run, ~6 minutes
    .venv/bin/python -m bench.dissemination --quick          # smoke run, a few seconds

For each room size N and process count P, a fresh registry (this process) and N peers (real
``PeerNode``s, or the naive baseline of ``bench/naive.py``) spread round-robin over P worker
processes. After the mesh is built, M messages are sent at a fixed total rate from members drawn
from a pool of senders, ``--repeat`` times; every figure is the median over the repeats. With
P = 1 a saturation run follows: a window of messages kept in flight, to find the deliveries per
second the room sustains.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import pstats
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench._worker import SEQ_DIGITS, AnyWorker, InlineWorker, ProcessWorker, message_text
from bench.common import (
    ROOM,
    command_line,
    cpu_seconds,
    header,
    int_list,
    median,
    percentile,
    raise_nofile,
    results_path,
    save_results,
    shown,
    start_registry,
    table,
    trust_modes,
    usernames,
)
from p2pchat.protocol.messages import LIST_LIMIT

MODULE = "bench.dissemination"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"python -m {MODULE}",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--sizes", type=int_list, default=[10, 50, 100, 200], help="room sizes N")
    p.add_argument(
        "--procs",
        type=int_list,
        default=[1, 4],
        help="worker processes the peers are spread over (1 = all in one process)",
    )
    p.add_argument(
        "--designs",
        default="tree,flood,naive",
        help="tree (the real PeerNode as shipped: tree push), flood (the real PeerNode "
        "flooding) and/or naive (the baseline)",
    )
    p.add_argument(
        "--trust",
        type=trust_modes,
        default=["on", "off"],
        help="on: TLS links with certificates and signed room messages (as shipped); off: "
        "plain TCP, no certificates, no signatures (benchmark-only); unchecked: as on, but "
        "receivers skip the signature check (benchmark-only, to split the cost); several, "
        "comma-separated, side by side (the naive baseline has no identities: it runs with "
        "off when off is asked for)",
    )
    p.add_argument("--messages", type=int, default=200, help="messages M per run")
    p.add_argument("--rate", type=float, default=100.0, help="messages per second, in total")
    p.add_argument("--repeat", type=int, default=3, help="runs per configuration (median)")
    p.add_argument("--size", type=int, default=100, help="bytes of text per message")
    p.add_argument(
        "--senders",
        type=int,
        default=10,
        help="messages come from a random pool of this many members (the naive "
        "design keeps a connection from each to every member)",
    )
    p.add_argument("--max-links", type=int, default=6)
    p.add_argument("--window", type=int, default=16, help="saturation: messages in flight")
    p.add_argument(
        "--link-delay-ms",
        type=float,
        default=0.0,
        help="give each peer link a one-way latency around this (0: none), added in user "
        "space to every write, drawn per link from --seed as bench.simulate draws it",
    )
    p.add_argument(
        "--link-spread",
        type=float,
        default=0.5,
        help="with --link-delay-ms: latencies uniform within DELAY x (1 +- SPREAD)",
    )
    p.add_argument(
        "--saturate-seconds", type=float, default=3.0, help="saturation run length (0: none)"
    )
    p.add_argument(
        "--inline",
        action="store_true",
        help="run the peers in this very process (P = 1 only; for the smoke test)",
    )
    p.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="cProfile the saturation run of the largest flood room (P = 1) into "
        "this file and print the top functions",
    )
    p.add_argument(
        "--gc-freeze",
        action="store_true",
        help="gc.freeze() the workers once the mesh is built (all peers' long-lived state "
        "out of the collector's full passes), to see what garbage collection costs",
    )
    p.add_argument("--profile-size", type=int, default=100, help="room size to profile")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results JSON (default bench/results/dissemination.json; "
        "--quick: not written unless given)",
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--quick", action="store_true", help="smoke run: N=10, 1 process, 20 messages, 1 repeat"
    )
    return p


QUICK = {
    "sizes": [10],
    "procs": [1],
    "messages": 20,
    "rate": 50.0,
    "repeat": 1,
    "saturate_seconds": 0.5,
}
"""``--quick`` changes these defaults; options given explicitly still win."""


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quick:
        parser.set_defaults(**QUICK)
        args = parser.parse_args(argv)
    return args


async def _configuration(
    args: argparse.Namespace,
    n: int,
    procs: int,
    design: str,
    trust: str,
    rng: random.Random,
    seq: list[int],
) -> dict[str, Any]:
    secure = trust != "off"
    users = usernames(n)
    registry = await start_registry(users, {ROOM: users}, secure=secure)
    workers: list[AnyWorker] = []
    home = tempfile.TemporaryDirectory(prefix="p2pchat-bench-")
    try:
        workers = [InlineWorker() if args.inline else ProcessWorker() for _ in range(procs)]
        parts = [users[i::procs] for i in range(procs)]
        owner = {u: k for k, part in enumerate(parts) for u in part}
        setups = await asyncio.gather(
            *(
                w.call(
                    "setup",
                    registry_port=registry.port,
                    users=part,
                    mode=design,
                    max_links=args.max_links,
                    secure=secure,
                    home=os.path.join(home.name, f"w{k}"),
                    check_signatures=trust != "unchecked",
                    link_delay_ms=args.link_delay_ms,
                    link_spread=args.link_spread,
                    delay_seed=args.seed,
                )
                for k, (w, part) in enumerate(zip(workers, parts, strict=True))
            )
        )
        pool = rng.sample(users, min(args.senders, n))
        if design == "naive":
            await asyncio.gather(*(w.call("warm", senders=pool) for w in workers))
        conv = await asyncio.gather(
            *(
                w.call("converge", online=users, timeout=30.0, tidy=8.0, gc_freeze=args.gc_freeze)
                for w in workers
            )
        )
        links = [x for c in conv for x in c["links"]]
        row: dict[str, Any] = {
            "n": n,
            "procs": procs,
            "design": design,
            "trust": trust,
            "load_before": os.getloadavg()[0],
            "login_s": max(s["login_s"] for s in setups),
            "converged": all(c["converged"] for c in conv),
            "converge_s": max(c["seconds"] for c in conv),
        }
        runs = []
        for _ in range(args.repeat):
            sends = []
            for i in range(args.messages):
                sends.append((i / args.rate, rng.choice(pool), message_text(seq[0], args.size)))
                seq[0] += 1
            per_worker: list[list[tuple[float, str, str]]] = [[] for _ in workers]
            expected = [0] * procs
            for s in sends:
                per_worker[owner[s[1]]].append(s)
                for k in range(procs):
                    expected[k] += len(parts[k]) - (1 if owner[s[1]] == k else 0)
            t0 = time.time() + 0.3
            cpu0 = cpu_seconds()
            results = await asyncio.gather(
                *(
                    w.call(
                        "run", sends=per_worker[k], t0=t0, expected=expected[k], last=sends[-1][0]
                    )
                    for k, w in enumerate(workers)
                )
            )
            cpu1 = cpu_seconds()
            runs.append(
                _run_stats(design, n, parts, sends, t0, results, registry_cpu=sum(cpu1) - sum(cpu0))
            )
        for key in runs[0]:
            row[key] = median(r[key] for r in runs)
        row["repeats"] = [{k: round(v, 4) for k, v in r.items()} for r in runs]
        row["links_after_converge"] = sum(links) / len(links)
        if args.saturate_seconds > 0 and (procs == 1 or design != "naive"):
            row.update(await _saturate(args, workers, parts, n, design, pool, seq))
        return row
    finally:
        for w in workers:
            try:
                await w.call("stop")
            except Exception as exc:  # keep going: a broken worker must not hide the others
                print(f"worker stop failed: {exc}", file=sys.stderr)
            await w.close()
        await registry.close()
        registry.core.store.close()
        home.cleanup()


def _run_stats(
    design: str,
    n: int,
    parts: list[list[str]],
    sends: list[tuple[float, str, str]],
    t0: float,
    results: list[dict[str, Any]],
    registry_cpu: float,
) -> dict[str, float]:
    sender_of = {text[:SEQ_DIGITS]: s for _, s, text in sends}
    seen: Counter[tuple[str, str]] = Counter()
    lat: list[float] = []
    last = t0
    for part, res in zip(parts, results, strict=True):
        for index, text, ts, now in res["recs"]:
            key = text[:SEQ_DIGITS]
            if key in sender_of:
                seen[part[index], key] += 1
                lat.append((now - ts) * 1000.0)
                last = max(last, now)
    expected = len(sends) * (n - 1)
    unique = len(seen)
    counters = [c for res in results for c in res["counters"]]
    frames = sum(c[0] for c in counters)
    dups = sum(c[1] for c in counters)
    delivered = sum(c[2] for c in counters)
    fanouts = [f for res in results for f in res["fanouts"]]
    cpu_user = sum(r["cpu_user"] for r in results)
    cpu_sys = sum(r["cpu_sys"] for r in results)
    peak = sum(r["peak_rss"] - r["rss_base"] for r in results)
    lags = [x * 1000.0 for r in results for x in r["lags"]]
    conns = [x for r in results for x in r["links"]]
    return {
        "delivery": unique / expected if expected else 1.0,
        "shown_twice": float(sum(seen.values()) - unique),
        "p50_ms": percentile(lat, 50),
        "p95_ms": percentile(lat, 95),
        "p99_ms": percentile(lat, 99),
        "max_ms": max(lat, default=float("nan")),
        "msgs_per_s": len(sends) / (last - t0) if last > t0 else float("nan"),
        "frames_per_delivery": frames / delivered if delivered else float("nan"),
        "dups_per_delivery": dups / delivered if delivered else float("nan"),
        "fanout": sum(fanouts) / len(fanouts) if fanouts else float("nan"),
        "registry_req_per_msg": float(math.ceil(n / LIST_LIMIT)) if design == "naive" else 0.0,
        "cpu_us_per_delivery": (cpu_user + cpu_sys) / unique * 1e6 if unique else float("nan"),
        "cpu_sys_share": cpu_sys / (cpu_user + cpu_sys) if cpu_user + cpu_sys else float("nan"),
        "registry_cpu_s": registry_cpu,
        "peak_kib_per_peer": peak / n / 1024,
        "send_lag_p99_ms": percentile(lags, 99),
        "links_mean": sum(conns) / len(conns) if conns else 0.0,
        "links_max": float(max(conns, default=0)),
    }


async def _saturate(
    args: argparse.Namespace,
    workers: list[AnyWorker],
    parts: list[list[str]],
    n: int,
    design: str,
    pool: list[str],
    seq: list[int],
) -> dict[str, Any]:
    """``--window`` messages in flight in all, shared by the workers that hold senders; each
    worker learns from the others over UDP when their peers have shown one of its messages."""
    procs = len(workers)
    profile = None
    if args.profile is not None and design != "naive" and n == args.profile_size and procs == 1:
        profile = str(args.profile)
    senders = [[u for u in pool if u in set(part)] for part in parts]
    sending = [k for k in range(procs) if senders[k]]
    windows = [0] * procs
    for i in range(max(args.window, len(sending))):
        windows[sending[i % len(sending)]] += 1
    ports = (
        [p["port"] for p in await asyncio.gather(*(w.call("sat_open") for w in workers))]
        if procs > 1
        else []
    )
    start = time.time() + 0.3
    runs = await asyncio.gather(
        *(
            w.call(
                "saturate",
                senders=senders[k],
                window=max(1, windows[k]),
                total=1_000_000,
                seconds=args.saturate_seconds,
                size=args.size,
                first_seq=seq[0],
                profile=profile,
                index=k,
                stride=procs,
                ports=ports,
                start=start,
            )
            for k, w in enumerate(workers)
        )
    )
    ends = await asyncio.gather(*(w.call("sat_end") for w in workers))
    seq[0] += procs * max(r["sent"] for r in runs) + procs
    elapsed = max(r["wall1"] for r in runs) - min(r["wall0"] for r in runs)
    sent = sum(r["sent"] for r in runs)
    complete = sum(r["complete"] for r in runs)
    counters = [c for e in ends for c in e["counters"]]
    delivered = sum(c[2] for c in counters)
    frames = sum(c[0] for c in counters)
    cpu_user = sum(e["cpu_user"] for e in ends)
    cpu_sys = sum(e["cpu_sys"] for e in ends)
    cpu = cpu_user + cpu_sys
    out = {
        "sat_deliveries_per_s": sum(e["deliveries"] for e in ends) / elapsed,
        "sat_msgs_per_s": complete / elapsed,
        "sat_complete": complete / sent if sent else float("nan"),
        "sat_p99_ms": percentile([x * 1000 for e in ends for x in e["latencies"]], 99),
        "sat_frames_per_delivery": frames / delivered if delivered else float("nan"),
        "sat_cpu_share": cpu / elapsed,
        "sat_sys_share": cpu_sys / cpu if cpu else float("nan"),
        "sat_cpu_us_per_delivery": cpu / delivered * 1e6 if delivered else float("nan"),
    }
    if profile:
        print(f"\nprofile of the N={n} saturation run ({profile}), top 30 by own time:")
        stats = pstats.Stats(profile)
        stats.sort_stats("tottime").print_stats(30)
    return out


COLUMNS = [
    ("N", "n"),
    ("P", "procs"),
    ("design", "design"),
    ("trust", "trust"),
    ("deliv", "delivery"),
    ("p50 ms", "p50_ms"),
    ("p99 ms", "p99_ms"),
    ("max ms", "max_ms"),
    ("msg/s", "msgs_per_s"),
    ("frames/dlv", "frames_per_delivery"),
    ("dups/dlv", "dups_per_delivery"),
    ("fan-out", "fanout"),
    ("reg req/msg", "registry_req_per_msg"),
    ("links", "links_mean"),
    ("KiB/peer", "peak_kib_per_peer"),
    ("CPU us/dlv", "cpu_us_per_delivery"),
    ("sat dlv/s", "sat_deliveries_per_s"),
    ("sat p99 ms", "sat_p99_ms"),
    ("sat CPU", "sat_cpu_share"),
]
RATIOS = [
    ("p50", "p50_ms"),
    ("p99", "p99_ms"),
    ("max", "max_ms"),
    ("frames/dlv", "frames_per_delivery"),
    ("fan-out", "fanout"),
    ("CPU us/dlv", "cpu_us_per_delivery"),
    ("sat dlv/s", "sat_deliveries_per_s"),
]
TRUST_RATIOS = [
    ("p50", "p50_ms"),
    ("p99", "p99_ms"),
    ("max", "max_ms"),
    ("CPU us/dlv", "cpu_us_per_delivery"),
    ("KiB/peer", "peak_kib_per_peer"),
    ("login s", "login_s"),
    ("sat dlv/s", "sat_deliveries_per_s"),
    ("sat p99", "sat_p99_ms"),
    ("sat CPU us/dlv", "sat_cpu_us_per_delivery"),
]


def render(rows: list[dict[str, Any]]) -> str:
    cells = []
    for r in rows:
        line = []
        for _, key in COLUMNS:
            v = r.get(key, float("nan"))
            line.append(f"{v * 100:.1f}%" if key == "delivery" else v)
        cells.append(line)
    out = table([c for c, _ in COLUMNS], cells)
    nan = float("nan")
    by = {(r["n"], r["procs"], r["design"], r.get("trust", "on")): r for r in rows}
    for design, base in (("naive", "tree"), ("naive", "flood"), ("flood", "tree")):
        pairs = []
        for (n, procs, d, trust), r in by.items():
            other = by.get((n, procs, base, trust))
            if d == design and other is not None:
                ratios = [_ratio(r.get(k), other.get(k)) for _, k in RATIOS]
                pairs.append([n, procs, trust, *ratios])
        if pairs:
            out += f"\n\n{design} / {base}, same run, same trust:\n" + table(
                ["N", "P", "trust", *[c for c, _ in RATIOS]], pairs
            )
    for mode in ("on", "unchecked"):
        costs = []
        for (n, procs, design, trust), r in by.items():
            off = by.get((n, procs, design, "off"))
            if trust == mode and off is not None:
                costs.append(
                    [n, procs, design] + [_ratio(r.get(k), off.get(k)) for _, k in TRUST_RATIOS]
                )
        if costs:
            out += f"\n\ntrust {mode} / trust off, same run:\n" + table(
                ["N", "P", "design", *[c for c, _ in TRUST_RATIOS]], costs
            )
    split = []
    for (n, procs, design, trust), on in by.items():
        off, unchecked = by.get((n, procs, design, "off")), by.get((n, procs, design, "unchecked"))
        if trust != "on" or off is None or unchecked is None:
            continue
        for regime, key in (
            ("100 msg/s", "cpu_us_per_delivery"),
            ("saturated", "sat_cpu_us_per_delivery"),
        ):
            a, b, c = off.get(key, nan), unchecked.get(key, nan), on.get(key, nan)
            split.append([n, procs, regime, a, b, c, b - a, c - b])
    if split:
        out += "\n\nCPU us per delivery: what trust adds (TLS and larger frames; the checks):\n"
        out += table(["N", "P", "regime", "off", "unchecked", "on", "TLS+frames", "checks"], split)
    return out


def _ratio(a: Any, b: Any) -> float:
    try:
        return float(a) / float(b)
    except (TypeError, ZeroDivisionError, ValueError):
        return float("nan")


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    raise_nofile()
    rng = random.Random(args.seed)
    seq = [0]
    rows = []
    designs = [d.strip() for d in args.designs.split(",") if d.strip()]
    for n in args.sizes:
        for procs in args.procs:
            if args.inline and procs != 1:
                continue
            for design in designs:
                for trust in args.trust:
                    if design == "naive" and trust != "off" and "off" in args.trust:
                        continue  # the baseline has no identities: measured once, with off
                    t = time.perf_counter()
                    row = await _configuration(args, n, procs, design, trust, rng, seq)
                    row["wall_s"] = time.perf_counter() - t
                    rows.append(row)
                    print(
                        f"  N={n} P={procs} {design} trust {row['trust']}: delivery "
                        f"{row['delivery'] * 100:.1f}%, p99 {row['p99_ms']:.1f} ms, "
                        f"sat {row.get('sat_deliveries_per_s', float('nan')):,.0f} dlv/s "
                        f"({row['wall_s']:.0f} s)",
                        flush=True,
                    )
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    command = command_line(MODULE, argv)
    print(
        header("room dissemination: flooding over the mesh vs. sending to every member", command),
        flush=True,
    )
    print(
        f"M={args.messages} messages at {args.rate:g}/s from a pool of {args.senders} senders, "
        f"{args.size} B each; median of {args.repeat} runs\n",
        flush=True,
    )
    rows = asyncio.run(main_async(args))
    print()
    print(render(rows))
    out = results_path(args.out, args.quick, "dissemination")
    if out is not None:
        for r in rows:
            r.pop("repeats_raw", None)
        path = save_results(
            "dissemination",
            command,
            rows,
            {
                "settings": {
                    k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                }
            },
            out,
        )
        print(f"\nresults: {shown(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
