"""Tree push (Plumtree, ``peer/plumtree.py``) against flooding (``peer/router.py``) on the same
room mesh, on a simulated network in virtual time.

    .venv/bin/python -m bench.tree_vs_flood               # N = 1,000 and 10,000, a few minutes
    .venv/bin/python -m bench.tree_vs_flood --quick       # N = 300, seconds

The real pure routers, one per member, linked along the three-ring mesh, on the deterministic
network of ``tests/peer/simnet.py``: each link's latency is drawn once around ``--latency-ms``
(uniform within +-50%), each frame adds up to ``--jitter`` of it, links are FIFO. Scenarios,
for each design on the same mesh and seed:

- steady: ``--senders`` members each send a first message (which builds their trees), then
  ``--messages`` more, one every 0.5 s, are measured;
- burst: 20 members send their first message at the same instant;
- kill 20% / 40%: after a first round, that share of the room dies at random, the living
  recompute the mesh (as the registry's ``offline`` events make them), then messages are sent.

Figures count what the network carried: payload frames (``room_msg``) per delivery, ``ihave``
frames per delivery, ``graft`` and ``prune`` frames, delivery ratio to the living members,
latency from sending to showing (nearest-rank percentiles), and the most links a message crossed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from bench._rooms import FIGURE_COLUMNS, room_row, router_room, spaced
from bench.common import command_line, header, int_list, save_results, shown, table, usernames
from tests.peer.simnet import burst, killed, steady

MODULE = "bench.tree_vs_flood"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"python -m {MODULE}",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--sizes", type=int_list, default=[1000, 10_000], help="room sizes N")
    p.add_argument("--designs", default="tree,flood")
    p.add_argument("--scenarios", default="steady,burst,kill20,kill40")
    p.add_argument("--senders", type=int, default=10, help="members sending in steady state")
    p.add_argument("--messages", type=int, default=30, help="messages measured per scenario")
    p.add_argument("--latency-ms", type=float, default=100.0, help="mean latency of a link")
    p.add_argument("--jitter", type=float, default=0.1, help="per-frame jitter, share of latency")
    p.add_argument("--loss", type=float, default=0.0, help="share of frames lost")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="N = 300, fewer messages")
    p.add_argument("--out", type=Path, default=None, help="also write the rows to this JSON file")
    return p


def run_one(args: argparse.Namespace, n: int, design: str, scenario: str) -> dict[str, Any]:
    members = usernames(n)
    sim = router_room(
        members,
        design,  # type: ignore[arg-type]
        seed=args.seed,
        latency_ms=args.latency_ms,
        jitter=args.jitter,
        loss=args.loss,
    )
    senders = spaced(members, args.senders)
    start = time.perf_counter()
    if scenario == "steady":
        stats = steady(sim, senders, args.messages)
    elif scenario == "burst":
        stats = burst(sim, spaced(members, 20))
    else:
        fraction = int(scenario.removeprefix("kill")) / 100
        stats = killed(sim, fraction, args.senders, args.messages, seed=args.seed)
    row: dict[str, Any] = {"members": n, "design": design, "scenario": scenario}
    row |= room_row(sim, stats)
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


COLUMNS = [
    ("N", "members"),
    ("design", "design"),
    ("scenario", "scenario"),
    ("msgs", "messages"),
    *FIGURE_COLUMNS,
    ("grafted", "grafted"),
    ("s", "seconds"),
]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quick:
        parser.set_defaults(sizes=[300], messages=10)
        args = parser.parse_args(argv)
    command = command_line(MODULE)
    print(header("tree_vs_flood: tree push against flooding on the same mesh", command))
    print(
        f"links {args.latency_ms:g} ms mean (+-50% per link), jitter {args.jitter:g}, "
        f"loss {args.loss:g}; {args.senders} senders, {args.messages} messages measured\n"
    )
    rows = []
    for n in args.sizes:
        for scenario in args.scenarios.split(","):
            for design in args.designs.split(","):
                row = run_one(args, n, design, scenario)
                rows.append(row)
                print(
                    f"  N={n:,} {scenario} {design}: delivered {row['delivered_ratio']}, "
                    f"p99 {row['p99_ms']} ms ({row['seconds']} s)",
                    file=sys.stderr,
                    flush=True,
                )
    print(table([c for c, _ in COLUMNS], [[r.get(k, "-") for _, k in COLUMNS] for r in rows]))
    ratios = {}
    for n in args.sizes:
        by = {(r["design"], r["scenario"]): r for r in rows if r["members"] == n}
        if ("tree", "steady") in by and ("flood", "steady") in by:
            ratios[n] = round(by["tree", "steady"]["p99_ms"] / by["flood", "steady"]["p99_ms"], 3)
    if ratios:
        print("\np99 of tree push over p99 of flooding, steady state: ", end="")
        print(", ".join(f"N={n:,}: {r}" for n, r in ratios.items()))
    if args.out is not None:
        print(f"results: {shown(save_results('tree_vs_flood', command, rows, path=args.out))}")
    print(json.dumps({"benchmark": "tree_vs_flood", "p99_ratio": ratios, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
