"""Which online members of a room a peer links to, so that a flood reaches all of them cheaply.

Every peer derives the same graph from the same member list, so both ends of an edge agree
without negotiating. The graph is a ring over the sorted names (connected by construction) plus
one chord per member in the pattern of a chordal ring (Arden & Lee, 1981): the chords cut the
diameter from N/2 to about sqrt(2N/3) while the degree stays at 3, so a flood costs about two
frames per peer reached.
"""

from __future__ import annotations

import functools
import math
from bisect import bisect_left
from collections import deque
from collections.abc import Hashable, Iterable, Mapping
from typing import TypeVar

MIN_LINKS = 2
"""The smallest ``max_links`` that still keeps the ring, and so the room, connected."""
CHORD_MIN_MEMBERS = 6
"""Below this a chord would only duplicate a ring edge."""
EXHAUSTIVE_LIMIT = 2048
"""Up to this many members the chord width is the best of all widths; beyond, of a window."""

_T = TypeVar("_T", bound=Hashable)


@functools.lru_cache(maxsize=4096)
def chord_width(n: int) -> int:
    """The chord width ``w`` for a room of ``n`` online members, 0 when there is no chord.

    It depends on ``n`` alone so that every peer picks the same one, and it is the odd width
    giving the smallest diameter (ties go to the smallest). Widths ``w`` and ``M - w`` give
    mirror-image graphs, so only ``w <= M/2`` is tried. For odd ``n`` the extra member sits on
    the ring between the last and first chorded ones, adding at most 1 to the diameter of the
    chorded ring, which is what is minimised. Above ``EXHAUSTIVE_LIMIT`` members only widths in
    [2*sqrt(n), 3*sqrt(n)], where the best ones lie, are tried, to keep this cheap.
    """
    if n < CHORD_MIN_MEMBERS:
        return 0
    m = n - (n & 1)
    if n <= EXHAUSTIVE_LIMIT:
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
    """Diameter of the chordal ring on ``m`` (even) nodes, or some value > ``cutoff``.

    The ring is vertex-transitive (``i -> i+2`` and ``i -> m-1-i`` are automorphisms), so the
    eccentricity of node 0 is the diameter; one breadth-first search over Python ints used as
    bit sets does it, a whole level per handful of big-int operations.
    """
    full = (1 << m) - 1
    even = full // 3  # bits 0, 2, 4, ...: the nodes whose chord goes forward
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


def _links(i: int, n: int, w: int) -> list[int]:
    """Indices (into the sorted members) that member ``i`` links to; ``w`` 0 means no chord."""
    if n <= 2:
        return [] if n == 1 else [1 - i]
    out = [(i - 1) % n, (i + 1) % n]
    m = n - (n & 1)
    if w and i < m:
        j = (i + w) % m if i % 2 == 0 else (i - w) % m
        if j != i and j not in out:
            out.append(j)
    return out


def _width_for(n: int, max_links: int) -> int:
    if max_links < MIN_LINKS:
        raise ValueError(f"max_links must be at least {MIN_LINKS}, not {max_links}")
    return chord_width(n) if max_links >= 3 else 0


def mesh_neighbours(members: Iterable[str], me: str, max_links: int = 6) -> frozenset[str]:
    """The members ``me`` links to in a room whose online members (``me`` included) are given.

    Empty when ``me`` is not among ``members``: the others do not count us either, so a link
    would be one-sided. Cheap enough to call on every membership change (a sort and a lookup).
    """
    ordered = sorted(set(members))
    n = len(ordered)
    w = _width_for(n, max_links)
    i = bisect_left(ordered, me)
    if i == n or ordered[i] != me:
        return frozenset()
    return frozenset([ordered[j] for j in _links(i, n, w)])


def mesh_graph(members: Iterable[str], max_links: int = 6) -> dict[str, frozenset[str]]:
    """The whole mesh of a room, as each member's ``mesh_neighbours`` would give it."""
    ordered = sorted(set(members))
    n = len(ordered)
    w = _width_for(n, max_links)
    return {
        name: frozenset([ordered[j] for j in _links(i, n, w)]) for i, name in enumerate(ordered)
    }


def diameter(graph: Mapping[_T, Iterable[_T]]) -> int:
    """Longest shortest path, in links: how many hops a flood needs to reach everyone.

    Raises ``ValueError`` if the graph is not connected. Quadratic; for tests and docs.
    """
    nodes = list(graph)
    longest = 0
    for source in nodes:
        dist = {source: 0}
        queue = deque([source])
        while queue:
            v = queue.popleft()
            for u in graph[v]:
                if u not in dist:
                    dist[u] = dist[v] + 1
                    queue.append(u)
        if len(dist) != len(nodes):
            raise ValueError("graph is not connected")
        longest = max(longest, *dist.values())
    return longest
