"""Which online members of a room a peer links to: few links each, few hops across, few changes.

Every peer derives the same graph from the same member set, so both ends of an edge agree
without negotiating. The graph is the union of three rings over the members, each in its own
order:

- ring 0 in name order (Python string order): connected by construction;
- ring 1 in the order of a stable hash of the names (keyed BLAKE2b of the UTF-8 name as given);
- ring 2 in the order of another such hash, keeping only the edges whose pair of names hashes
  to a 0 top bit: about half of them.

A member has at most 2 + 2 + 2 = 6 links, about 5 on average. The hashed rings make the graph
behave like a random 5-regular graph, whose diameter grows as log N: 5 hops at 100 members,
9 at 10,000, 11 at 100,000 (``bench/mesh_stats.py``). Positions come from the names alone, not
from ranks, so a join or leave touches only the two neighbours on each ring: it breaks or makes
one edge per ring and adds or removes the member's own, 7.5 edges on average, 9 at most.

Names are hashed as given, not casefolded: peers use the names exactly as the registry spells
them, and the registry keeps them unique ignoring case. Ties between equal hashes are broken by
name, so any set of strings gives a total order on every ring.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Hashable, Iterable, Iterator, Mapping
from typing import TypeVar

MIN_LINKS = 2
"""The smallest ``max_links``: ring 0 alone, which keeps the room connected."""
MESH_DEGREE = 6
"""The most links any member has in a room, with the default ``max_links`` or more."""

_PERSONS = (b"p2pchat-ring-1", b"p2pchat-ring-2")
_PAIR_PERSON = b"p2pchat-pair"
_KEY_CACHE_NAME_MAX = 64
"""Only names this short are cached, so the cache is bounded in bytes as well as in count."""
_KEY_CACHE: dict[str, tuple[int, int]] = {}
_KEY_CACHE_MAX = 1 << 15

_T = TypeVar("_T", bound=Hashable)


def rings_for(max_links: int) -> int:
    """How many rings a cap of ``max_links`` links per room allows (each ring adds at most 2)."""
    if max_links < MIN_LINKS:
        raise ValueError(f"max_links must be at least {MIN_LINKS}, not {max_links}")
    return min(3, max_links // 2)


def _digest(data: bytes, person: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8, person=person).digest(), "big")


def ring_keys(name: str) -> tuple[int, int]:
    """A name's positions on rings 1 and 2: 64-bit BLAKE2b digests of its UTF-8 bytes."""
    keys = _KEY_CACHE.get(name)
    if keys is None:
        data = name.encode("utf-8", "surrogatepass")
        keys = (_digest(data, _PERSONS[0]), _digest(data, _PERSONS[1]))
        if len(name) <= _KEY_CACHE_NAME_MAX:
            if len(_KEY_CACHE) >= _KEY_CACHE_MAX:
                _KEY_CACHE.clear()  # crude but bounded; refilled at a few microseconds a name
            _KEY_CACHE[name] = keys
    return keys


def half_ring_keeps(a: str, b: str) -> bool:
    """Whether ring 2 keeps its edge between ``a`` and ``b``: a coin both ends flip alike.

    The coin is the top bit of BLAKE2b over the two names in string order, the first one
    prefixed with its UTF-8 length (4 bytes, big-endian).
    """
    if b < a:
        a, b = b, a
    first = a.encode("utf-8", "surrogatepass")
    data = len(first).to_bytes(4, "big") + first + b.encode("utf-8", "surrogatepass")
    return hashlib.blake2b(data, digest_size=1, person=_PAIR_PERSON).digest()[0] < 128


class RoomMesh:
    """The online members of one room, kept in the order of each ring, for cheap queries.

    ``neighbours`` costs a few binary searches and hashes (O(log N)); ``add`` and ``remove``
    one insertion or deletion per ring (O(N) memmove at worst, fast in practice). Meant to be
    kept per room and updated on every membership event rather than rebuilt.
    """

    __slots__ = ("_by_name", "_hashed", "_keys", "_rings", "max_links")

    def __init__(self, members: Iterable[str] = (), max_links: int = MESH_DEGREE) -> None:
        self._rings = rings_for(max_links)
        self.max_links = max_links
        self._keys: dict[str, tuple[int, int]] = {}
        for name in members:
            if name not in self._keys:
                self._keys[name] = ring_keys(name)
        self._by_name = sorted(self._keys)
        self._hashed: list[list[tuple[int, str]]] = [
            sorted((keys[r], name) for name, keys in self._keys.items())
            for r in range(self._rings - 1)
        ]

    def __len__(self) -> int:
        return len(self._by_name)

    def __contains__(self, name: object) -> bool:
        return name in self._keys

    def __iter__(self) -> Iterator[str]:
        """The members in name order."""
        return iter(self._by_name)

    def add(self, name: str) -> bool:
        """Add a member; False (and nothing changes) if it is there already."""
        if name in self._keys:
            return False
        keys = self._keys[name] = ring_keys(name)
        insort(self._by_name, name)
        for r, order in enumerate(self._hashed):
            insort(order, (keys[r], name))
        return True

    def remove(self, name: str) -> bool:
        """Remove a member; False (and nothing changes) if it is not there."""
        keys = self._keys.pop(name, None)
        if keys is None:
            return False
        del self._by_name[bisect_left(self._by_name, name)]
        for r, order in enumerate(self._hashed):
            del order[bisect_left(order, (keys[r], name))]
        return True

    def neighbours(self, me: str) -> frozenset[str]:
        """The members ``me`` links to; empty if ``me`` is not a member (nobody counts it)."""
        keys = self._keys.get(me)
        n = len(self._by_name)
        if keys is None or n < 2:
            return frozenset()
        order = self._by_name
        i = bisect_left(order, me)
        out = {order[i - 1], order[(i + 1) % n]}
        for r, ring in enumerate(self._hashed):
            i = bisect_left(ring, (keys[r], me))
            before, after = ring[i - 1][1], ring[(i + 1) % n][1]
            if r == 0:
                out.add(before)
                out.add(after)
            else:
                if half_ring_keeps(me, before):
                    out.add(before)
                if half_ring_keeps(me, after):
                    out.add(after)
        out.discard(me)
        return frozenset(out)

    def graph(self) -> dict[str, frozenset[str]]:
        """Every member's neighbours, as ``neighbours`` gives them, in O(N)."""
        adj: dict[str, set[str]] = {name: set() for name in self._by_name}
        n = len(self._by_name)
        if n < 2:
            return {name: frozenset() for name in adj}
        rings: list[list[str]] = [self._by_name] + [[e[1] for e in h] for h in self._hashed]
        for r, ring in enumerate(rings):
            for i, a in enumerate(ring):
                b = ring[(i + 1) % n]
                if a == b or (r == 2 and not half_ring_keeps(a, b)):
                    continue
                adj[a].add(b)
                adj[b].add(a)
        return {name: frozenset(nbrs) for name, nbrs in adj.items()}


def mesh_neighbours(
    members: Iterable[str], me: str, max_links: int = MESH_DEGREE
) -> frozenset[str]:
    """The members ``me`` links to in a room whose online members (``me`` included) are given.

    Empty when ``me`` is not among ``members``: the others do not count us either, so a link
    would be one-sided. O(N log N); keep a ``RoomMesh`` to ask repeatedly.
    """
    return RoomMesh(members, max_links).neighbours(me)


def mesh_graph(members: Iterable[str], max_links: int = MESH_DEGREE) -> dict[str, frozenset[str]]:
    """The whole mesh of a room, as each member's ``mesh_neighbours`` would give it."""
    return RoomMesh(members, max_links).graph()


def eccentricity(graph: Mapping[_T, Iterable[_T]], source: _T) -> int:
    """Links from ``source`` to the member farthest from it (one breadth-first search): a
    lower bound of the diameter. Raises ``ValueError`` if the graph is not connected."""
    dist = {source: 0}
    queue = deque([source])
    while queue:
        v = queue.popleft()
        for u in graph[v]:
            if u not in dist:
                dist[u] = dist[v] + 1
                queue.append(u)
    if len(dist) != len(graph):
        raise ValueError("graph is not connected")
    return max(dist.values())


_SOURCES_PER_PASS = 4096


def diameter(graph: Mapping[_T, Iterable[_T]]) -> int:
    """Longest shortest path, in links: how many hops a flood needs to reach everyone.

    Exact. Raises ``ValueError`` if the graph is not connected. Every node keeps, as a Python
    int used as a bit set, which sources it is within ``t`` links of, and ORs in its
    neighbours' sets until all are full: ``t`` is the diameter. Sources go 4,096 at a time to
    bound memory; about a second for 10,000 nodes of degree 5, half a minute for 100,000.
    """
    nodes = list(graph)
    index = {v: i for i, v in enumerate(nodes)}
    adj = [[index[u] for u in graph[v]] for v in nodes]
    n = len(nodes)
    longest = 0
    for first in range(0, n, _SOURCES_PER_PASS):
        width = min(_SOURCES_PER_PASS, n - first)
        full = (1 << width) - 1
        reach = [0] * n
        for s in range(width):
            reach[first + s] = 1 << s
        level = 0
        while not all(r == full for r in reach):
            grown = []
            for v, r in enumerate(reach):
                for u in adj[v]:
                    r |= reach[u]
                grown.append(r)
            if grown == reach:
                raise ValueError("graph is not connected")
            reach = grown
            level += 1
        longest = max(longest, level)
    return longest
