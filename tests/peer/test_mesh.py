"""The mesh must be connected and degree-bounded by construction, agreed on by all peers,
short across, cheap to change, and the incremental structure must match recomputation."""

from __future__ import annotations

import hashlib
import random
from collections import deque
from collections.abc import Mapping, Set

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pchat.peer import mesh
from p2pchat.peer.mesh import (
    RoomMesh,
    diameter,
    eccentricity,
    half_ring_keeps,
    mesh_graph,
    mesh_neighbours,
    ring_keys,
    rings_for,
)

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


def cap(max_links: int) -> int:
    return 2 * min(3, max_links // 2)


def check_mesh(members: list[str], max_links: int = 6) -> dict[str, frozenset[str]]:
    """Every property a mesh must have; returns the graph for further checks."""
    graph = mesh_graph(members, max_links)
    assert set(graph) == set(members)
    assert is_connected(graph)
    room = RoomMesh(members, max_links)
    for v, nbrs in graph.items():
        assert v not in nbrs
        assert len(nbrs) <= min(max_links, 6)
        for u in nbrs:
            assert v in graph[u], f"{u} -> {v} is one-sided"
        assert mesh_neighbours(members, v, max_links) == nbrs
        assert room.neighbours(v) == nbrs
    return graph


def reference_mesh(members: list[str], max_links: int = 6) -> dict[str, set[str]]:
    """The construction, written out plainly from its description (docs/design.md)."""
    members = sorted(set(members))
    graph: dict[str, set[str]] = {v: set() for v in members}

    def key(ring: int, name: str) -> tuple[int, str]:
        person = b"p2pchat-ring-%d" % ring
        digest = hashlib.blake2b(name.encode(), digest_size=8, person=person).digest()
        return int.from_bytes(digest, "big"), name

    def coin(a: str, b: str) -> bool:
        a, b = sorted([a, b])
        data = len(a.encode()).to_bytes(4, "big") + a.encode() + b.encode()
        return hashlib.blake2b(data, digest_size=1, person=b"p2pchat-pair").digest()[0] < 128

    orders = [members, sorted(members, key=lambda v: key(1, v))]
    orders.append(sorted(members, key=lambda v: key(2, v)))
    for ring, order in enumerate(orders[: min(3, max_links // 2)]):
        for i, a in enumerate(order):
            b = order[(i + 1) % len(order)]
            if a != b and (ring < 2 or coin(a, b)):
                graph[a].add(b)
                graph[b].add(a)
    return graph


@pytest.mark.parametrize("n", range(1, 41))
@pytest.mark.parametrize("max_links", [2, 3, 4, 5, 6, 9])
def test_small_rooms(n: int, max_links: int) -> None:
    graph = check_mesh(names(n), max_links)
    assert graph == reference_mesh(names(n), max_links)
    degrees = sorted(len(v) for v in graph.values())
    if n == 1:
        assert degrees == [0]
    elif n == 2:
        assert degrees == [1, 1]
    elif max_links < 4:
        assert degrees == [2] * n  # the ring over sorted names, as before


@pytest.mark.parametrize("n", [100, 1000])
def test_matches_the_construction(n: int) -> None:
    members = [f"m{random.Random(n).getrandbits(40):x}{i}" for i in range(n)]
    assert mesh_graph(members) == reference_mesh(members)


def test_pinned_values() -> None:
    # For other implementations to check theirs against.
    assert ring_keys("alice") == (0x0FB34F5EDC21C886, 0x917309D19DE5BAB4)
    assert half_ring_keeps("alice", "bob") is half_ring_keeps("bob", "alice")
    assert [half_ring_keeps("alice", x) for x in ("bob", "carol", "dave", "erin")] == [
        False,
        False,
        False,
        True,
    ]
    seven = mesh_graph(["a", "b", "c", "d", "e", "f", "g"])
    assert {v: "".join(sorted(us)) for v, us in seven.items()} == {
        "a": "bdg",
        "b": "acde",
        "c": "bdef",
        "d": "abce",
        "e": "bcdf",
        "f": "ceg",
        "g": "af",
    }


name_lists = st.lists(st.text(min_size=1, max_size=6), min_size=1, max_size=60)


@SETTINGS
@given(members=name_lists, max_links=st.sampled_from([2, 3, 4, 6, 7]))
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


events = st.lists(
    st.tuples(st.booleans(), st.sampled_from([f"n{i}" for i in range(40)] + ["", "Ä", "a\0b"])),
    max_size=120,
)


@SETTINGS
@given(
    initial=st.lists(st.text(max_size=4), max_size=20), steps=events, max_links=st.integers(2, 8)
)
def test_incremental_equals_recomputation(
    initial: list[str], steps: list[tuple[bool, str]], max_links: int
) -> None:
    room = RoomMesh(initial, max_links)
    members = set(initial)
    for add, name in steps:
        if add:
            assert room.add(name) is (name not in members)
            members.add(name)
        else:
            assert room.remove(name) is (name in members)
            members.discard(name)
        assert len(room) == len(members) and list(room) == sorted(members)
        assert all(name in room for name in members)
    assert room.graph() == mesh_graph(members, max_links)
    for name in members:
        assert room.neighbours(name) == mesh_neighbours(members, name, max_links)
    assert room.neighbours("not a member") == frozenset()


def test_not_a_member_links_to_nobody() -> None:
    assert mesh_neighbours(names(10), "stranger") == frozenset()
    assert mesh_neighbours([], "me") == frozenset()
    assert RoomMesh().graph() == {}


def test_single_member_and_pair() -> None:
    assert mesh_neighbours(["me"], "me") == frozenset()
    assert mesh_neighbours(["me", "you"], "me") == {"you"}
    assert mesh_graph(["me"]) == {"me": frozenset()}


def test_names_compared_exactly() -> None:
    graph = mesh_graph(["a", "A", "a ", "ä"])
    assert len(graph) == 4
    assert mesh_neighbours(["a", "A"], "A") == {"a"}


@pytest.mark.parametrize("max_links", [1, 0, -3])
def test_max_links_below_two_rejected(max_links: int) -> None:
    with pytest.raises(ValueError):
        mesh_neighbours(names(5), "user000", max_links)
    with pytest.raises(ValueError):
        mesh_graph(names(5), max_links)
    with pytest.raises(ValueError):
        RoomMesh(names(5), max_links)


def test_rings_for_cap() -> None:
    assert [rings_for(c) for c in (2, 3, 4, 5, 6, 7, 100)] == [1, 1, 2, 2, 3, 3, 3]


@pytest.mark.parametrize(("n", "limit"), [(100, 6), (1000, 8), (10_000, 12)])
def test_degree_and_diameter_of_large_rooms(n: int, limit: int) -> None:
    members = [f"member{i}" for i in range(n)]
    graph = RoomMesh(members).graph()
    degrees = [len(v) for v in graph.values()]
    assert max(degrees) <= 6
    assert 4.8 <= sum(degrees) / n <= 5.2
    # Measured (bench/mesh_stats.py): 5, 7 and 9; the old chordal ring: 9, 27 and 83.
    assert diameter(graph) <= limit


def edges(graph: Mapping[str, Set[str]]) -> set[frozenset[str]]:
    return {frozenset((a, b)) for a, us in graph.items() for b in us}


def test_a_join_or_leave_changes_few_links() -> None:
    rng = random.Random(5)
    members = {f"p{rng.getrandbits(32):08x}" for _ in range(300)}
    room = RoomMesh(members)
    before = edges(room.graph())
    changed = []
    for _ in range(200):
        if rng.random() < 0.5:
            name = f"p{rng.getrandbits(32):08x}"
            room.add(name)
        else:
            room.remove(rng.choice(sorted(room)))
        after = edges(room.graph())
        changed.append(len(before ^ after))
        before = after
    assert max(changed) <= 9  # 3 edges per ring: the broken one and the member's two
    assert sum(changed) / len(changed) <= 8  # expected 7.5: ring 2 keeps half its edges


def test_key_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mesh, "_KEY_CACHE_MAX", 50)
    monkeypatch.setattr(mesh, "_KEY_CACHE", {})
    for i in range(500):
        ring_keys(f"name{i}")
        assert len(mesh._KEY_CACHE) <= 50
    long_name = "x" * 65
    assert ring_keys(long_name) == ring_keys(long_name)
    assert long_name not in mesh._KEY_CACHE


def bfs_diameter(graph: Mapping[int, Set[int]]) -> int:
    return max(eccentricity(graph, v) for v in graph) if graph else 0


@SETTINGS
@given(n=st.integers(1, 40), extra=st.lists(st.tuples(st.integers(0, 39), st.integers(0, 39))))
def test_diameter_is_exact(n: int, extra: list[tuple[int, int]]) -> None:
    graph: dict[int, set[int]] = {i: set() for i in range(n)}
    for a, b in [(i, i + 1) for i in range(n - 1)] + extra:
        if a != b and a < n and b < n:
            graph[a].add(b)
            graph[b].add(a)
    want = bfs_diameter(graph)
    assert diameter(graph) == want
    original = mesh._SOURCES_PER_PASS
    try:
        mesh._SOURCES_PER_PASS = 3  # several passes of sources
        assert diameter(graph) == want
    finally:
        mesh._SOURCES_PER_PASS = original


def test_diameter_helper() -> None:
    assert diameter({}) == 0
    assert diameter({"a": set()}) == 0
    assert diameter({1: {2}, 2: {1, 3}, 3: {2}}) == 2
    with pytest.raises(ValueError):
        diameter({"a": set(), "b": set()})
