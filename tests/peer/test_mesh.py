"""The mesh must be connected and degree-bounded by construction, and agreed on by all peers."""

from __future__ import annotations

import math
import random
import time
from collections import deque
from collections.abc import Mapping, Set

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pchat.peer.mesh import chord_width, diameter, mesh_graph, mesh_neighbours

SETTINGS = settings(derandomize=True, database=None, deadline=None, max_examples=150)


def names(n: int) -> list[str]:
    return [f"user{i:03d}" for i in range(n)]


def is_connected(graph: Mapping[str, Set[str]]) -> bool:
    if not graph:
        return True
    start = next(iter(graph))
    seen = {start}
    queue = deque([start])
    while queue:
        for u in graph[queue.popleft()]:
            if u not in seen:
                seen.add(u)
                queue.append(u)
    return len(seen) == len(graph)


def check_mesh(members: list[str], max_links: int = 6) -> dict[str, frozenset[str]]:
    """Every property a mesh must have; returns the graph for further checks."""
    graph = mesh_graph(members, max_links)
    assert set(graph) == set(members)
    assert is_connected(graph)
    cap = 2 if max_links == 2 else 3
    for v, nbrs in graph.items():
        assert v not in nbrs
        assert len(nbrs) <= cap
        for u in nbrs:
            assert v in graph[u], f"{u} -> {v} is one-sided"
        assert mesh_neighbours(members, v, max_links) == nbrs
    return graph


def reference_mesh(n: int, w: int) -> dict[int, set[int]]:
    """The construction, written out plainly from its definition, on indices 0..n-1."""
    graph: dict[int, set[int]] = {i: set() for i in range(n)}

    def link(a: int, b: int) -> None:
        if a != b:
            graph[a].add(b)
            graph[b].add(a)

    for i in range(n):
        link(i, (i + 1) % n)
    m = n if n % 2 == 0 else n - 1
    if w:
        for i in range(0, m, 2):
            link(i, (i + w) % m)
    return graph


@pytest.mark.parametrize("n", range(1, 61))
@pytest.mark.parametrize("max_links", [2, 3, 6])
def test_small_rooms(n: int, max_links: int) -> None:
    graph = check_mesh(names(n), max_links)
    degrees = sorted(len(v) for v in graph.values())
    if n == 1:
        assert degrees == [0]
    elif n == 2:
        assert degrees == [1, 1]
    elif max_links == 2 or n < 6:
        assert degrees == [2] * n
    else:
        # The chords are a perfect matching of all but (for odd n) the last member.
        assert degrees == [2] * (n % 2) + [3] * (n - n % 2)


@pytest.mark.parametrize("n", range(1, 61))
def test_matches_the_chordal_ring_construction(n: int) -> None:
    w = chord_width(n)
    members = names(n)
    want = reference_mesh(n, w)
    got = mesh_graph(members)
    assert {members.index(v): {members.index(u) for u in us} for v, us in got.items()} == want
    if n < 6:
        assert w == 0
    else:
        m = n - n % 2
        assert w % 2 == 1 and 3 <= w <= m - 3
        # Each chord is a new edge: none duplicates a ring edge.
        assert sum(len(v) for v in want.values()) == 2 * n + m


@pytest.mark.parametrize("n", range(6, 61))
def test_chord_width_minimises_diameter(n: int) -> None:
    m = n - n % 2
    by_width = {w: diameter(reference_mesh(n, w)) for w in range(3, m - 2, 2)}
    best = min(by_width.values())
    chosen = diameter(reference_mesh(n, chord_width(n)))
    if n % 2 == 0:
        assert chosen == best
        assert chord_width(n) == min(w for w, d in by_width.items() if d == best)
    else:
        # Odd rooms minimise the chorded part; the extra member costs at most one hop.
        assert chosen <= best + 1


name_lists = st.lists(st.text(min_size=1, max_size=6), min_size=1, max_size=60)


@SETTINGS
@given(members=name_lists, max_links=st.sampled_from([2, 3, 6]))
def test_any_names(members: list[str], max_links: int) -> None:
    check_mesh(members, max_links)


@SETTINGS
@given(members=name_lists, data=st.data())
def test_independent_of_order_and_duplicates(members: list[str], data: st.DataObject) -> None:
    shuffled = data.draw(st.permutations(members + members[: len(members) // 2]))
    assert mesh_graph(shuffled) == mesh_graph(members)
    me = data.draw(st.sampled_from(members))
    assert mesh_neighbours(shuffled, me) == mesh_neighbours(members, me)


@SETTINGS
@given(members=st.lists(st.text(min_size=1, max_size=6), min_size=2, max_size=60, unique=True))
def test_stays_connected_when_anyone_leaves(members: list[str]) -> None:
    for gone in members:
        rest = [m for m in members if m != gone]
        assert is_connected(mesh_graph(rest))


def test_names_compared_exactly() -> None:
    graph = mesh_graph(["a", "A", "a ", "ä"])
    assert len(graph) == 4
    assert mesh_neighbours(["a", "A"], "A") == {"a"}


def test_not_a_member_links_to_nobody() -> None:
    assert mesh_neighbours(names(10), "stranger") == frozenset()
    assert mesh_neighbours([], "me") == frozenset()


def test_single_member_and_pair() -> None:
    assert mesh_neighbours(["me"], "me") == frozenset()
    assert mesh_neighbours(["me", "you"], "me") == {"you"}


@pytest.mark.parametrize("max_links", [1, 0, -3])
def test_max_links_below_two_rejected(max_links: int) -> None:
    with pytest.raises(ValueError):
        mesh_neighbours(names(5), "user000", max_links)
    with pytest.raises(ValueError):
        mesh_graph(names(5), max_links)


@pytest.mark.parametrize(("n", "measured"), [(100, 9), (101, 9), (200, 13), (201, 13)])
def test_diameter_of_large_rooms(n: int, measured: int) -> None:
    d = diameter(mesh_graph(names(n)))
    # Measured values; the ring alone would be n // 2.
    assert d == measured
    assert d <= 2 * math.sqrt(n / 1.5)


def test_large_room_choice_is_cheap_and_good() -> None:
    # Beyond the exhaustive limit only a window of widths is tried; check it still works well.
    n = 3000
    graph = mesh_graph(names(n))
    assert all(len(v) <= 3 for v in graph.values())
    w = chord_width(n)
    assert 2 * math.isqrt(n) <= w <= 3 * math.isqrt(n)
    # Distances from one node bound the diameter from below; sqrt(2n/3) is about the optimum.
    start = min(graph)
    dist = {start: 0}
    queue = deque([start])
    while queue:
        v = queue.popleft()
        for u in graph[v]:
            if u not in dist:
                dist[u] = dist[v] + 1
                queue.append(u)
    assert len(dist) == n
    assert max(dist.values()) <= 1.2 * math.sqrt(2 * n / 3)


def test_diameter_helper() -> None:
    assert diameter({}) == 0
    assert diameter({"a": set()}) == 0
    assert diameter({1: {2}, 2: {1, 3}, 3: {2}}) == 2
    with pytest.raises(ValueError):
        diameter({"a": set(), "b": set()})


def test_neighbours_fast_with_warm_cache() -> None:
    members = names(200)
    random.Random(7).shuffle(members)
    mesh_neighbours(members, "user000")
    rounds = 200
    start = time.perf_counter()
    for i in range(rounds):
        mesh_neighbours(members, members[i])
    per_call = (time.perf_counter() - start) / rounds
    assert per_call < 1e-3, f"{per_call * 1e6:.0f} us per call"
