"""Flooding must reach every member exactly once, at a predictable cost, and stop what it should."""

from __future__ import annotations

import itertools
import random
from collections import Counter, deque
from collections.abc import Mapping, Set
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pchat.peer.mesh import mesh_graph
from p2pchat.peer.router import Drop, FloodRouter, Forward, Route
from p2pchat.protocol.messages import RoomMessage, encode, peer_decoder

SETTINGS = settings(derandomize=True, database=None, deadline=None, max_examples=120)
ROOM = "lobby"


@dataclass
class Network:
    """Routers wired along ``graph``, with links that deliver frames in FIFO order."""

    graph: Mapping[str, Set[str]]
    hops: int = 64
    routers: dict[str, FloodRouter] = field(init=False)
    queue: deque[tuple[bytes, str, str]] = field(init=False, default_factory=deque)
    delivered: Counter[tuple[str, str]] = field(init=False, default_factory=Counter)
    frames: Counter[str] = field(init=False, default_factory=Counter)
    now: float = 0.0

    def __post_init__(self) -> None:
        self.routers = {v: FloodRouter(v, default_hops=self.hops) for v in self.graph}

    def send(self, sender: str, fwd: Forward) -> None:
        assert fwd.frame == encode(fwd.msg)
        assert sender not in fwd.targets
        for to in fwd.targets:
            assert to in self.graph[sender], "sent over a link that does not exist"
            self.queue.append((fwd.frame, sender, to))

    def originate(self, origin: str, text: str = "hi") -> RoomMessage:
        fwd = self.routers[origin].originate(ROOM, text, self.now, self.graph[origin])
        assert sorted(fwd.targets) == sorted(self.graph[origin])
        self.send(origin, fwd)
        return fwd.msg

    def run(self, members: Set[str] | None = None) -> None:
        members = set(self.graph) if members is None else members
        while self.queue:
            frame, sender, to = self.queue.popleft()
            msg = peer_decoder.decode(frame)
            assert isinstance(msg, RoomMessage)
            self.frames[msg.id] += 1
            route = self.routers[to].receive(msg, sender, self.now, self.graph[to], members)
            if route.deliver:
                assert route.dropped is None
                self.delivered[to, msg.id] += 1
            else:
                assert route.dropped is not None and route.forward is None
            if route.forward is not None:
                assert route.forward.msg.id == msg.id
                self.send(to, route.forward)
            self.now += 0.001


@st.composite
def connected_graphs(draw: st.DrawFn) -> dict[str, set[str]]:
    """A random spanning tree (so connected) plus random extra edges."""
    n = draw(st.integers(1, 80))
    nodes = [f"p{i}" for i in range(n)]
    graph: dict[str, set[str]] = {v: set() for v in nodes}

    def link(a: int, b: int) -> None:
        if a != b:
            graph[nodes[a]].add(nodes[b])
            graph[nodes[b]].add(nodes[a])

    for i in range(1, n):
        link(i, draw(st.integers(0, i - 1)))
    for a, b in draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=n)):
        link(a, b)
    return graph


@SETTINGS
@given(graph=connected_graphs(), data=st.data())
def test_flood_reaches_everyone_once(graph: dict[str, set[str]], data: st.DataObject) -> None:
    net = Network(graph, hops=len(graph))  # enough hops for any path in the graph
    origins = data.draw(st.lists(st.sampled_from(sorted(graph)), min_size=1, max_size=4))
    msgs = [net.originate(o) for o in origins]
    net.run()
    for msg in msgs:
        receivers = [v for v in graph if (v, msg.id) in net.delivered]
        assert sorted(receivers) == sorted(v for v in graph if v != msg.origin)
        assert all(net.delivered[v, msg.id] == 1 for v in receivers)
        # FIFO links: every neighbour of the origin hears it from the origin first, so each
        # receiver sends to all its neighbours but the one it heard it from.
        expected = len(graph[msg.origin]) + sum(len(graph[v]) - 1 for v in receivers)
        assert net.frames[msg.id] == expected
    routers = net.routers.values()
    total = sum(net.frames.values())
    assert sum(r.frames_out for r in routers) == total
    assert sum(r.delivered for r in routers) == len(msgs) * (len(graph) - 1)
    assert sum(r.delivered + r.duplicates for r in routers) == total
    assert sum(r.dropped for r in routers) == 0


@pytest.mark.parametrize("n", [100, 200])
def test_flood_over_mesh_costs_two_frames_per_delivery(n: int) -> None:
    members = [f"member{i:03d}" for i in range(n)]
    net = Network(mesh_graph(members))
    rng = random.Random(n)
    msgs = [net.originate(rng.choice(members), f"m{k}") for k in range(5)]
    net.run()
    bound = sum(map(len, net.graph.values())) / n - 0.9  # a flood costs the mean degree - 1
    for msg in msgs:
        assert all(net.delivered[v, msg.id] == 1 for v in members if v != msg.origin)
        assert net.delivered[msg.origin, msg.id] == 0
        assert net.frames[msg.id] / (n - 1) <= bound
    delivered = sum(r.delivered for r in net.routers.values())
    assert delivered == 5 * (n - 1)
    assert sum(r.frames_out for r in net.routers.values()) / delivered <= bound


def test_hop_limit() -> None:
    line = [f"p{i}" for i in range(10)]
    graph: dict[str, set[str]] = {v: set() for v in line}
    for a, b in itertools.pairwise(line):
        graph[a].add(b)
        graph[b].add(a)
    net = Network(graph, hops=3)
    msg = net.originate("p0")
    assert msg.hops == 3
    net.run()
    # Sent with hops=3: each receiver forwards while hops > 0, so it crosses 3 + 1 links.
    reached = [v for v in line if (v, msg.id) in net.delivered]
    assert reached == ["p1", "p2", "p3", "p4"]


def make_msg(origin: str = "alice", hops: int = 5, mid: str = "0" * 32) -> RoomMessage:
    return RoomMessage(id=mid, room=ROOM, origin=origin, seq=1, text="hello", ts=1.0, hops=hops)


MEMBERS = frozenset({"me", "alice", "bob", "carol", "dave"})


def test_forwards_to_all_but_sender_and_origin() -> None:
    router = FloodRouter("me")
    route = router.receive(make_msg(), "bob", 0.0, ["alice", "bob", "carol", "dave"], MEMBERS)
    assert route.deliver and route.dropped is None
    assert route.forward is not None
    assert sorted(route.forward.targets) == ["carol", "dave"]
    assert route.forward.msg.hops == 4
    assert route.forward.frame == encode(route.forward.msg)
    assert router.frames_out == 2 and router.delivered == 1


def test_nobody_left_to_forward_to() -> None:
    route = FloodRouter("me").receive(make_msg(), "bob", 0.0, ["bob", "alice"], MEMBERS)
    assert route == Route(True, None, None)


def test_duplicates_dropped_and_counted() -> None:
    router = FloodRouter("me")
    nbrs = ["bob", "carol"]
    assert router.receive(make_msg(), "bob", 0.0, nbrs, MEMBERS).deliver
    for sender in ("carol", "bob"):
        route = router.receive(make_msg(hops=9), sender, 1.0, nbrs, MEMBERS)
        assert route == Route(False, None, Drop.DUPLICATE)
    assert (router.delivered, router.duplicates, router.dropped) == (1, 2, 0)


@pytest.mark.parametrize(
    ("sender", "origin", "reason"),
    [
        ("mallory", "alice", Drop.SENDER_NOT_MEMBER),
        ("bob", "mallory", Drop.ORIGIN_NOT_MEMBER),
        ("mallory", "mallory", Drop.SENDER_NOT_MEMBER),
    ],
)
def test_non_members_dropped(sender: str, origin: str, reason: Drop) -> None:
    router = FloodRouter("me")
    route = router.receive(make_msg(origin), sender, 0.0, ["bob"], MEMBERS)
    assert route == Route(False, None, reason)
    assert (router.delivered, router.dropped, router.duplicates) == (0, 1, 0)
    assert router.seen_size == 0  # outsiders cannot fill the cache


def test_own_message_echo_is_a_duplicate() -> None:
    router = FloodRouter("me")
    fwd = router.originate(ROOM, "hi", 0.0, ["bob", "carol"])
    assert fwd.msg.origin == "me" and fwd.msg.hops == 64 and fwd.msg.ts == 0.0
    assert fwd.targets == ["bob", "carol"] and router.frames_out == 2
    echo = router.receive(fwd.msg, "carol", 0.5, ["bob", "carol"], MEMBERS)
    assert echo.dropped is Drop.DUPLICATE and not echo.deliver
    assert router.delivered == 0


def test_unknown_own_message_dropped() -> None:
    router = FloodRouter("me")
    route = router.receive(make_msg(origin="me"), "bob", 0.0, ["bob", "carol"], MEMBERS)
    assert route == Route(False, None, Drop.OWN_MESSAGE)
    assert router.dropped == 1


def test_originate_ids_and_timestamp() -> None:
    router = FloodRouter("me", default_hops=7)
    ids = {router.originate(ROOM, "x", float(i), []).msg.id for i in range(100)}
    assert len(ids) == 100
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    fwd = router.originate(ROOM, "x", 5.0, ["bob"], ts=1_700_000_000.0)
    assert fwd.msg.ts == 1_700_000_000.0 and fwd.msg.hops == 7
    assert router.seen_size == 101


@pytest.mark.parametrize("hops", [0, -1])
def test_arriving_without_hops_delivered_not_forwarded(hops: int) -> None:
    route = FloodRouter("me").receive(make_msg(hops=hops), "bob", 0.0, ["bob", "carol"], MEMBERS)
    assert route == Route(True, None, None)


def test_arriving_hops_capped_at_ours() -> None:
    router = FloodRouter("me", default_hops=10)
    route = router.receive(make_msg(hops=10**9), "bob", 0.0, ["bob", "carol"], MEMBERS)
    assert route.forward is not None and route.forward.msg.hops == 9


def test_seen_ids_expire_after_ttl() -> None:
    router = FloodRouter("me", seen_ttl=10.0)
    nbrs = ["bob"]
    a, b = make_msg(mid="a" * 32), make_msg(mid="b" * 32)
    assert router.receive(a, "bob", 0.0, nbrs, MEMBERS).deliver
    assert router.receive(b, "bob", 6.0, nbrs, MEMBERS).deliver
    assert not router.receive(a, "bob", 9.999, nbrs, MEMBERS).deliver
    assert router.receive(a, "bob", 10.001, nbrs, MEMBERS).deliver  # expired: new again
    assert router.seen_size == 2
    assert not router.receive(b, "bob", 15.999, nbrs, MEMBERS).deliver
    assert router.receive(make_msg(mid="c" * 32), "bob", 100.0, nbrs, MEMBERS).deliver
    assert router.seen_size == 1  # a and b expired lazily
    assert router.receive(b, "bob", 100.0, nbrs, MEMBERS).deliver
    assert router.delivered == 5 and router.duplicates == 2


def test_own_ids_expire_too() -> None:
    router = FloodRouter("me", seen_ttl=10.0)
    msg = router.originate(ROOM, "hi", 0.0, ["bob"]).msg
    assert router.receive(msg, "bob", 5.0, ["bob"], MEMBERS).dropped is Drop.DUPLICATE
    assert router.receive(msg, "bob", 11.0, ["bob"], MEMBERS).dropped is Drop.OWN_MESSAGE


def test_seen_cache_bounded() -> None:
    router = FloodRouter("me", max_seen=3)
    ids = [f"{i:032x}" for i in range(6)]
    for i, mid in enumerate(ids):
        assert router.receive(make_msg(mid=mid), "bob", float(i), ["bob"], MEMBERS).deliver
        assert router.seen_size == min(i + 1, 3)
    # The three newest are remembered; the oldest were forgotten early and are new again.
    for mid in ids[3:]:
        assert router.receive(make_msg(mid=mid), "bob", 7.0, ["bob"], MEMBERS).dropped
    assert router.receive(make_msg(mid=ids[0]), "bob", 7.0, ["bob"], MEMBERS).deliver
    assert router.seen_size == 3


@pytest.mark.parametrize("kwargs", [{"seen_ttl": -1.0}, {"max_seen": 0}, {"default_hops": -1}])
def test_bad_settings_rejected(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        FloodRouter("me", **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("why", [Drop.BAD_SIGNATURE, Drop.OVER_BUDGET, Drop.RATE_LIMITED])
def test_what_a_refused_copy_says_of_the_message_decides_whether_it_is_remembered(
    why: Drop,
) -> None:
    """A bad signature or a link over its budget says nothing of the message: the same id on
    another link is still taken. An origin over its rate says it of the message itself."""
    alice = FloodRouter("a")
    bob = FloodRouter("b")
    members = {"a", "b", "c", "d"}
    msg = bob.originate(ROOM, "hi", 0.0, ["a"]).msg
    refused = alice.receive(msg, "b", 0.1, ["b", "c"], members, lambda m: why)
    assert refused.dropped is why and not refused.deliver
    again = alice.receive(msg, "c", 0.2, ["b", "c"], members)
    assert again.deliver == (why is not Drop.RATE_LIMITED)
