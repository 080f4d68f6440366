"""The simulator checked against real peers: the same room, the same link latencies, in real
processes and in virtual time.

    .venv/bin/python -m bench.calibrate                  # 60 peers at 50 ms a link, ~2 minutes
    .venv/bin/python -m bench.calibrate --quick          # 20 peers, under a minute

Real: a registry and ``--members`` real ``PeerNode``s (TLS, certificates, signatures, history:
as shipped, tree push) spread over ``--procs`` worker processes, each link's writes held for
that link's one-way latency in user space (``bench._worker.DelayedNode``; the kernel here has
no netem), the latency drawn per link from ``--seed`` exactly as ``bench.simulate`` draws it.
``--messages`` messages from 10 senders, one every ``1/--rate`` seconds; latency is from
sending to shown, over every delivery.

Simulated: ``bench.simulate`` with the same members' names, seed, latencies (no jitter: a
real link adds only what the machine adds), messages and spacing, with both engines: whole
peers (``core``) and pure routers (``router``).

The figure that matters is the ratio of the real p95 to the simulated one (target: within
25%). What the simulator leaves out shows in it: the real peers' CPU (TLS, signature checks,
history writes) on two shared cores, and the event loop's timer granularity.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
from pathlib import Path
from typing import Any

from bench import dissemination, simulate
from bench.common import command_line, header, results_path, save_results, table

MODULE = "bench.calibrate"
SENDERS = 10


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"python -m {MODULE}",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--members", type=int, default=60, help="room size N (default 60)")
    p.add_argument("--procs", type=int, default=4, help="worker processes (default 4)")
    p.add_argument(
        "--latency-ms", type=float, default=50.0, help="mean one-way link latency (default 50)"
    )
    p.add_argument(
        "--spread", type=float, default=0.5, help="latencies within MEAN x (1 +- SPREAD)"
    )
    p.add_argument("--messages", type=int, default=100, help="messages measured (default 100)")
    p.add_argument("--rate", type=float, default=5.0, help="messages per second (default 5)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="20 peers in 2 processes, 30 messages")
    p.add_argument(
        "--inline", action="store_true", help="the peers in this process (for tests; --procs 1)"
    )
    p.add_argument("--out", type=Path, default=None, help="results file (default: bench/results)")
    return p


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quick:
        parser.set_defaults(members=20, procs=2, messages=30)
        args = parser.parse_args(argv)
    if args.members < 3 or args.procs < 1 or args.messages < 1 or args.rate <= 0:
        parser.error("need at least 3 members, 1 process, 1 message and a positive rate")
    return args


async def real_room(args: argparse.Namespace) -> dict[str, Any]:
    argv = [
        "--sizes", str(args.members),
        "--procs", str(args.procs),
        "--designs", "tree",
        "--trust", "on",
        "--messages", str(args.messages),
        "--rate", str(args.rate),
        "--repeat", "1",
        "--senders", str(min(SENDERS, args.members)),
        "--saturate-seconds", "0",
        "--link-delay-ms", str(args.latency_ms),
        "--link-spread", str(args.spread),
        "--seed", str(args.seed),
        *(["--inline"] if args.inline else []),
    ]  # fmt: skip
    opts = dissemination.parse(argv)
    rng = random.Random(args.seed)
    row: dict[str, Any] = await dissemination._configuration(
        opts, args.members, args.procs, "tree", "on", rng, [0]
    )
    return row


def simulated_room(args: argparse.Namespace, engine: str) -> dict[str, Any]:
    argv = [
        "--members", str(args.members),
        "--engine", engine,
        "--design", "tree",
        "--latency-ms", str(args.latency_ms),
        "--spread", str(args.spread),
        "--jitter", "0",
        "--messages", str(args.messages),
        "--senders", str(min(SENDERS, args.members)),
        "--gap", str(1 / args.rate),
        "--seed", str(args.seed),
        "--mesh-events", "0",
    ]  # fmt: skip
    opts = simulate.parse_args(argv)
    return simulate.run(opts, command_line(simulate.MODULE, argv))


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    command = command_line(MODULE, argv)
    print(header("calibrate: the simulator against real peers, same room and links", command))
    real = asyncio.run(real_room(args))
    sims = {engine: simulated_room(args, engine) for engine in ("core", "router")}
    rows = [
        ["real", real["delivery"], real["p50_ms"], real["p95_ms"], real["p99_ms"]],
        *(
            [f"sim {e}", s["delivered_ratio"], s["p50_ms"], s["p95_ms"], s["p99_ms"]]
            for e, s in sims.items()
        ),
    ]
    print(
        f"\nN={args.members} in {args.procs} processes, links {args.latency_ms:g} ms "
        f"+- {args.spread:.0%}, {args.messages} messages at {args.rate:g}/s, seed {args.seed}\n"
    )
    print(table(["room", "delivered", "p50 ms", "p95 ms", "p99 ms"], rows))
    ratios = {e: real["p95_ms"] / s["p95_ms"] for e, s in sims.items() if s["p95_ms"]}
    for engine, ratio in ratios.items():
        verdict = "within" if abs(ratio - 1) <= 0.25 else "outside"
        print(f"real p95 / simulated ({engine}) p95: {ratio:.2f} ({verdict} 25%)")
    result = {
        "members": args.members,
        "procs": args.procs,
        "latency_ms": args.latency_ms,
        "spread": args.spread,
        "messages": args.messages,
        "rate": args.rate,
        "seed": args.seed,
        "real": {k: real[k] for k in ("delivery", "p50_ms", "p95_ms", "p99_ms")},
        "sim": {e: {k: s[k] for k in ("delivered_ratio", "p50_ms", "p95_ms", "p99_ms")}
                for e, s in sims.items()},
        "p95_ratio": {e: round(r, 3) for e, r in ratios.items()},
    }  # fmt: skip
    path = results_path(args.out, args.quick, "calibrate")
    if path is not None:
        print(f"results: {save_results('calibrate', command, [result], path=path)}")
    print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
