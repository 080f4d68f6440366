"""Shared pieces of the simulated-room benchmarks (``tree_vs_flood``, ``simulate``): a room of
pure routers on the simulated network, its figures as a row, and link latencies that every
engine draws alike."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

from tests.peer.simnet import Design, LinkLatency, MeshBuilder, RoomSim, Stats, hashed_uniform

FIGURE_COLUMNS = [
    ("delivered", "delivered_ratio"),
    ("payload/deliv", "payload_frames_per_delivery"),
    ("ihave/deliv", "ihave_frames_per_delivery"),
    ("graft+prune/deliv", "control_frames_per_delivery"),
    ("p50 ms", "p50_ms"),
    ("p95 ms", "p95_ms"),
    ("p99 ms", "p99_ms"),
    ("max ms", "max_ms"),
    ("max hops", "max_hops"),
]
"""Table columns (heading, key of ``Stats.row``) of a simulated room's figures."""


def pair_latency(seed: int, mean: float, spread: float) -> LinkLatency:
    """Each link's latency before jitter, uniform in ``mean * [1 - spread, 1 + spread]``.

    Drawn from a hash of the seed and the two ends' names (in either order), not from a
    random stream, so that the router-level and the whole-peer simulations give every link of
    the same room the same latency whatever else they draw.
    """

    def latency(a: Hashable, b: Hashable) -> float:
        x, y = sorted((str(a), str(b)))
        return mean * (1 + spread * (2 * hashed_uniform(seed, "link", x, y) - 1))

    return latency


def router_room(
    members: Sequence[str],
    design: Design,
    *,
    seed: int,
    latency_ms: float,
    jitter: float,
    loss: float,
    latency_of: LinkLatency | None = None,
    mesh_builder: MeshBuilder | None = None,
    hashed_draws: bool = False,
) -> RoomSim:
    """One room of real pure routers (``TreeRouter`` or ``FloodRouter``), one per member."""
    return RoomSim(
        members,
        design,
        seed=seed,
        latency=latency_ms / 1000,
        jitter=jitter,
        loss=loss,
        latency_of=latency_of,
        mesh_builder=mesh_builder,
        hashed_draws=hashed_draws,
    )


def spaced(members: Sequence[str], count: int) -> list[str]:
    """``count`` members spread evenly over the (sorted) list."""
    return list(members[:: max(1, len(members) // count)][:count])


def room_row(sim: RoomSim, stats: Stats) -> dict[str, Any]:
    """The figures of one scenario: delivery and latency, then the routers' own counters."""
    row: dict[str, Any] = stats.row()
    row["alive"] = len(sim.alive)
    row["shown_twice"] = sim.shown_twice
    if sim.design == "tree":
        routers = sim.trees.values()
        row["grafted"] = sum(r.repaired for r in routers)
        row["given_up"] = sum(r.given_up for r in routers)
    row["links_per_member_max"] = max(len(v) for v in sim.graph.values())
    return row
