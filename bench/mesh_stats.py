"""The room mesh's shape: links per member, diameter, and links changed per join and leave,
for the old chordal ring and the new three-ring mesh, in one run.

    .venv/bin/python -m bench.mesh_stats                 # N = 100 ... 100,000, ~2 minutes
    .venv/bin/python -m bench.mesh_stats --quick         # N = 100, 1,000, seconds

Pure computation on the graphs both designs derive from a member list (no peers, no network).
The diameter is exact: the new mesh's by all-sources bit-set breadth-first search
(``mesh.diameter``), the old one's by one breadth-first search, which is exact because a
chordal ring with an even number of members looks the same from every member (for an odd
number, by the bit-set search up to 10,000 members, beyond it a lower bound, flagged). Links
changed are the edges in one graph and not the other (added plus removed), over random joins of
new names and leaves of random members.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import random
import sys
import time
from collections.abc import Callable, Mapping, Set
from pathlib import Path
from typing import Any

from bench.common import command_line, header, int_list, save_results, shown, table, usernames
from p2pchat.peer.mesh import RoomMesh, diameter, eccentricity

MODULE = "bench.mesh_stats"

Graph = Mapping[str, Set[str]]


# ---------------------------------------------------------------- the old mesh, for comparison
# The chordal ring the project used before the three-ring mesh (ring over sorted names plus one
# chord per member at a width chosen per room size), as it was; only the comparison uses it.


@functools.lru_cache(maxsize=64)
def old_chord_width(n: int) -> int:
    if n < 6:
        return 0
    m = n - (n & 1)
    if n <= 2048:
        candidates = range(3, m // 2 + 1, 2)
    else:
        root = math.isqrt(n)
        candidates = range((2 * root) | 1, 3 * root + 1, 2)
    best_w, best_d = 0, m
    for w in candidates:
        d = _chorded_ring_diameter(m, w, best_d)
        if d < best_d:
            best_w, best_d = w, d
    return best_w


def _chorded_ring_diameter(m: int, w: int, cutoff: int) -> int:
    full = (1 << m) - 1
    even = full // 3
    back, wrap = m - 1, m - w
    seen = frontier = 1
    level = 0
    while seen != full:
        level += 1
        if level > cutoff:
            return level
        ev = frontier & even
        od = frontier ^ ev
        reach = (
            (frontier << 1)
            | (frontier >> back)
            | (frontier >> 1)
            | (frontier << back)
            | (ev << w)
            | (ev >> wrap)
            | (od >> w)
            | (od << wrap)
        ) & full
        frontier = reach & ~seen
        seen |= frontier
    return level


def old_mesh_graph(members: Set[str]) -> dict[str, set[str]]:
    ordered = sorted(members)
    n = len(ordered)
    w = old_chord_width(n)
    graph: dict[str, set[str]] = {v: set() for v in ordered}
    if n < 2:
        return graph
    m = n - (n & 1)
    for i, v in enumerate(ordered):
        graph[v].add(ordered[(i + 1) % n])
        graph[ordered[(i + 1) % n]].add(v)
        if w and i < m and i % 2 == 0:
            u = ordered[(i + w) % m]
            graph[v].add(u)
            graph[u].add(v)
    for v in ordered:
        graph[v].discard(v)
    return graph


# ---------------------------------------------------------------- measures


def edge_set(graph: Graph) -> set[tuple[str, str]]:
    return {(a, b) for a, us in graph.items() for b in us if a < b}


def changes(
    build: Callable[[set[str]], Graph],
    members: set[str],
    events: int,
    rng: random.Random,
) -> tuple[list[int], list[int]]:
    """Links changed by ``events`` joins and as many leaves, alternating, from ``members``."""
    members = set(members)
    before = edge_set(build(members))
    joins: list[int] = []
    leaves: list[int] = []
    for k in range(2 * events):
        if k % 2 == 0:
            name = f"j{rng.getrandbits(40):010x}"
            members.add(name)
        else:
            members.discard(rng.choice(sorted(members)))
        after = edge_set(build(members))
        (joins if k % 2 == 0 else leaves).append(len(before ^ after))
        before = after
    return joins, leaves


def new_builder(members: set[str]) -> Graph:
    return RoomMesh(members).graph()


def measure(design: str, n: int, events: int, exact_limit: int, seed: int) -> dict[str, Any]:
    names = usernames(n)
    start = time.perf_counter()
    graph: Graph = new_builder(set(names)) if design == "new" else old_mesh_graph(set(names))
    build_s = time.perf_counter() - start
    degrees = [len(v) for v in graph.values()]
    start = time.perf_counter()
    if design == "old" and n % 2 == 0:
        diam, how = eccentricity(graph, names[0]), "exact (symmetric)"
    elif n <= exact_limit:
        diam, how = diameter(graph), "exact"
    else:
        rng = random.Random(seed)
        diam = max(eccentricity(graph, v) for v in rng.sample(names, 16))
        how = "lower bound (16 BFS)"
    diam_s = time.perf_counter() - start
    row: dict[str, Any] = {
        "members": n,
        "mesh": design,
        "degree_max": max(degrees),
        "degree_mean": round(sum(degrees) / n, 3),
        "diameter": diam,
        "diameter_method": how,
        "edges": sum(degrees) // 2,
        "build_s": round(build_s, 3),
        "diameter_s": round(diam_s, 2),
    }
    if events:
        build = new_builder if design == "new" else old_mesh_graph
        joins, leaves = changes(build, set(names), events, random.Random(seed + n))
        row |= {
            "events": events,
            "changed_per_join_mean": round(sum(joins) / len(joins), 2),
            "changed_per_join_max": max(joins),
            "changed_per_leave_mean": round(sum(leaves) / len(leaves), 2),
            "changed_per_leave_max": max(leaves),
        }
    return row


COLUMNS = [
    ("N", "members"),
    ("mesh", "mesh"),
    ("deg max", "degree_max"),
    ("deg mean", "degree_mean"),
    ("diameter", "diameter"),
    ("how", "diameter_method"),
    ("join: mean", "changed_per_join_mean"),
    ("max", "changed_per_join_max"),
    ("leave: mean", "changed_per_leave_mean"),
    ("max", "changed_per_leave_max"),
    ("events", "events"),
]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"python -m {MODULE}",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--sizes", type=int_list, default=[100, 1000, 5000, 10_000, 100_000])
    p.add_argument("--events", type=int, default=100, help="joins (and as many leaves) per size")
    p.add_argument(
        "--events-large",
        type=int,
        default=10,
        help="joins (and leaves) per size above 10,000 members, where each costs more",
    )
    p.add_argument(
        "--exact-limit",
        type=int,
        default=100_000,
        help="largest N whose diameter is computed exactly (half a minute at 100,000)",
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="N = 100 and 1,000, 20 events")
    p.add_argument("--out", type=Path, default=None, help="also write the rows to this JSON file")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quick:
        parser.set_defaults(sizes=[100, 1000], events=20)
        args = parser.parse_args(argv)
    command = command_line(MODULE)
    print(header("mesh_stats: the old chordal ring against the three-ring mesh", command))
    rows = []
    for n in args.sizes:
        for design in ("old", "new"):
            events = args.events if n <= 10_000 else args.events_large
            row = measure(design, n, events, args.exact_limit, args.seed)
            rows.append(row)
            print(
                f"  N={n:,} {design}: diameter {row['diameter']} ({row['diameter_s']} s)",
                file=sys.stderr,
                flush=True,
            )
    print(table([c for c, _ in COLUMNS], [[r.get(k, "-") for _, k in COLUMNS] for r in rows]))
    print(
        "\nlinks changed: edges added plus edges removed by one join (a new name) or one leave "
        "(a random member)"
    )
    if args.out is not None:
        print(f"results: {shown(save_results('mesh_stats', command, rows, path=args.out))}")
    print(json.dumps({"benchmark": "mesh_stats", "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
