"""Churn: kill 10% of a room's peers abruptly while messages flow, bring them back, measure.

    .venv/bin/python -m bench.churn                 # N=100, 3 repeats, ~1.5 minutes
    .venv/bin/python -m bench.churn --quick         # N=20, 1 repeat

The survivors run in ``--procs`` worker processes, the victims in one more process of their own.
Messages flow at ``--rate`` from random survivors for ``--duration`` seconds. At ``--kill-at``
the victims' process gets SIGKILL (the kernel resets its connections: the registry and the
neighbours see them drop at once, as after a crash of the program; a machine that vanishes
from the network would instead be noticed by the 60 s heartbeat timeout). At ``--back-at`` a
new process logs the same users in again. Reported: delivery to the survivors (every message)
and to the returning peers (messages sent after they logged in again), and how long the mesh
takes to repair: from the kill until every survivor holds its links of the mesh without the
victims, and from the restart until everyone holds the full mesh again.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench._worker import SEQ_DIGITS, ProcessWorker, message_text
from bench.common import (
    RESULTS_DIR,
    ROOM,
    command_line,
    header,
    median,
    percentile,
    raise_nofile,
    save_results,
    shown,
    start_registry,
    table,
    usernames,
)

MODULE = "bench.churn"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"python -m {MODULE}",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--size", type=int, default=100, help="room size N")
    p.add_argument("--kill", type=float, default=0.10, help="share of the peers killed")
    p.add_argument("--procs", type=int, default=1, help="processes for the survivors")
    p.add_argument("--rate", type=float, default=100.0, help="messages per second")
    p.add_argument("--duration", type=float, default=12.0, help="seconds of messages")
    p.add_argument("--kill-at", type=float, default=3.0)
    p.add_argument("--back-at", type=float, default=7.0)
    p.add_argument("--text-size", type=int, default=100)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--seed", type=int, default=2)
    p.add_argument(
        "--trust",
        choices=["on", "off"],
        default="on",
        help="on: TLS links, certificates and signed messages (as shipped); off: none "
        "(benchmark-only), to compare",
    )
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--quick", action="store_true", help="N=20, 4 s, 1 repeat")
    return p


async def one_run(args: argparse.Namespace, rng: random.Random, run: int) -> dict[str, Any]:
    n = args.size
    users = usernames(n)
    victims = sorted(rng.sample(users, max(1, round(n * args.kill))))
    survivors = [u for u in users if u not in set(victims)]
    secure = args.trust == "on"
    registry = await start_registry(users, {ROOM: users}, secure=secure)
    home = tempfile.TemporaryDirectory(prefix="p2pchat-bench-")
    setup = {"registry_port": registry.port, "secure": secure}
    parts = [survivors[i :: args.procs] for i in range(args.procs)]
    owner = {u: k for k, part in enumerate(parts) for u in part}
    workers = [ProcessWorker() for _ in parts]
    doomed = ProcessWorker()
    back: ProcessWorker | None = None
    try:
        await asyncio.gather(
            *(
                w.call("setup", users=part, home=os.path.join(home.name, f"w{k}"), **setup)
                for k, (w, part) in enumerate(zip(workers, parts, strict=True))
            ),
            # the victims come back with the keys they had (a restarted program)
            doomed.call("setup", users=victims, home=os.path.join(home.name, "victims"), **setup),
        )
        conv = await asyncio.gather(
            *(w.call("converge", online=users, timeout=30.0, tidy=5.0) for w in [*workers, doomed])
        )
        if not all(c["converged"] for c in conv):
            print(
                "warning: the mesh did not converge before the run:",
                *[m for c in conv for m in c["missing"]],
                sep="\n  ",
                file=sys.stderr,
            )
        count = int(args.duration * args.rate)
        sends = [
            (
                i / args.rate,
                rng.choice(survivors),
                message_text(run * 1_000_000 + i, args.text_size),
            )
            for i in range(count)
        ]
        per_worker: list[list[tuple[float, str, str]]] = [[] for _ in parts]
        expected = [0] * len(parts)
        for s in sends:
            per_worker[owner[s[1]]].append(s)
            for k in range(len(parts)):
                expected[k] += len(parts[k]) - (1 if owner[s[1]] == k else 0)
        t0 = time.time() + 0.3
        monitor = {"survivors": survivors, "full": users}
        runs = [
            asyncio.ensure_future(
                w.call(
                    "run",
                    sends=per_worker[k],
                    t0=t0,
                    expected=expected[k],
                    drain=3.0,
                    monitor=monitor,
                    last=sends[-1][0] if sends else 0.0,
                )
            )
            for k, w in enumerate(workers)
        ]
        doomed_run = asyncio.ensure_future(
            doomed.call("run", sends=[], t0=t0, expected=1 << 40, drain=args.duration + 3.0)
        )
        await asyncio.sleep(max(0.0, t0 + args.kill_at - time.time()))
        t_kill = time.time()
        doomed.kill()
        await asyncio.sleep(max(0.0, t0 + args.back_at - time.time()))
        t_back = time.time()
        back = ProcessWorker()
        await back.call("setup", users=victims, home=os.path.join(home.name, "victims"), **setup)
        t_logged_in = time.time()
        remaining = t0 + args.duration - time.time()
        back_res = await back.call(
            "run",
            sends=[],
            t0=time.time(),
            expected=1 << 40,
            drain=max(0.0, remaining) + 3.0,
            monitor={"full": users},
        )
        results = await asyncio.gather(*runs)
        doomed_run.cancel()
    finally:
        for w in [*workers, *([back] if back else [])]:
            try:
                await w.call("stop")
            except Exception as exc:
                print(f"worker stop failed: {exc}", file=sys.stderr)
            await w.close()
        await doomed.close()
        await registry.close()
        registry.core.store.close()
        home.cleanup()

    send_time = {text[:SEQ_DIGITS]: t0 + off for off, _, text in sends}
    got: Counter[tuple[str, str]] = Counter()
    lat: list[float] = []
    for part, res in zip(parts, results, strict=True):
        for index, text, ts, now in res["recs"]:
            got[part[index], text[:SEQ_DIGITS]] += 1
            lat.append((now - ts) * 1000)
    survivor_expected = len(sends) * (len(survivors) - 1)
    survivor_ratio = len(got) / survivor_expected
    during = [k for k, t in send_time.items() if t_kill <= t < t_kill + 2.0]
    sender_of = {text[:SEQ_DIGITS]: s for _, s, text in sends}
    lost_during = sum(
        1 for k in during for u in survivors if u != sender_of[k] and (u, k) not in got
    )
    back_got = {(victims[i], text[:SEQ_DIGITS]) for i, text, _, _ in back_res["recs"]}
    after_login = [k for k, t in send_time.items() if t >= t_logged_in]
    back_expected = len(after_login) * len(victims)
    back_ratio = (
        sum(1 for k in after_login for v in victims if (v, k) in back_got) / back_expected
        if back_expected
        else float("nan")
    )

    def first(transitions: list[list[Any]], name: str, after: float) -> float:
        return min(
            (t for t, nm, ok in transitions if nm == name and ok and t >= after),
            default=float("nan"),
        )

    repair_kill = max(first(r["transitions"], "survivors", t_kill) for r in results) - t_kill
    full_again = max(
        max(first(r["transitions"], "full", t_back) for r in results),
        first(back_res["transitions"], "full", t_back),
    )
    return {
        "n": n,
        "trust": args.trust,
        "killed": len(victims),
        "messages": len(sends),
        "survivor_delivery": survivor_ratio,
        "survivor_lost_first_2s": float(lost_during),
        "returned_delivery": back_ratio,
        "p50_ms": percentile(lat, 50),
        "p99_ms": percentile(lat, 99),
        "max_ms": max(lat, default=float("nan")),
        "repair_after_kill_s": repair_kill,
        "relogin_s": t_logged_in - t_back,
        "repair_after_login_s": full_again - t_logged_in,
    }


COLUMNS = [
    ("N", "n"),
    ("trust", "trust"),
    ("killed", "killed"),
    ("msgs", "messages"),
    ("survivors deliv", "survivor_delivery"),
    ("lost 2s", "survivor_lost_first_2s"),
    ("returned deliv", "returned_delivery"),
    ("p50 ms", "p50_ms"),
    ("p99 ms", "p99_ms"),
    ("max ms", "max_ms"),
    ("repair kill s", "repair_after_kill_s"),
    ("relogin s", "relogin_s"),
    ("repair back s", "repair_after_login_s"),
]


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    raise_nofile()
    rng = random.Random(args.seed)
    runs = []
    for r in range(args.repeat):
        res = await one_run(args, rng, r)
        print(
            f"  run {r + 1}: survivors {res['survivor_delivery'] * 100:.2f}%, repair "
            f"{res['repair_after_kill_s']:.2f} s / {res['repair_after_login_s']:.2f} s",
            flush=True,
        )
        runs.append(res)
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quick:  # new defaults; options given explicitly still win
        parser.set_defaults(size=20, duration=4.0, kill_at=1.0, back_at=2.0, repeat=1)
        args = parser.parse_args(argv)
    command = command_line(MODULE)
    print(header("churn: 10% of a room killed abruptly and brought back", command), flush=True)
    print(
        f"N={args.size}, trust {args.trust}, {args.rate:g} msg/s for {args.duration:g} s, kill at "
        f"{args.kill_at:g} s, back at {args.back_at:g} s; median of {args.repeat}\n",
        flush=True,
    )
    runs = asyncio.run(main_async(args))
    row = {k: v if isinstance(v, str) else median(r[k] for r in runs) for k, v in runs[0].items()}
    cells = []
    for r in [*runs, row]:
        cells.append([f"{r[k] * 100:.2f}%" if k.endswith("delivery") else r[k] for _, k in COLUMNS])
    labels = [f"run {i + 1}" for i in range(len(runs))] + ["median"]
    print()
    print(
        table(
            ["", *[c for c, _ in COLUMNS]],
            [[lbl, *c] for lbl, c in zip(labels, cells, strict=True)],
        )
    )
    out = args.out if args.out is not None else (None if args.quick else RESULTS_DIR / "churn.json")
    if out is not None:
        path = save_results("churn", command, [row], {"runs": runs}, out)
        print(f"\nresults: {shown(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
