"""A small deterministic discrete-event network, and a room of pure routers on it.

``SimNet`` is generic: virtual time, a heap of (time, seq, event), links with a latency drawn
once per link and jitter drawn per frame from one seeded ``random.Random``, FIFO order per
directed link (as TCP gives), random loss, and killed nodes that neither receive nor act. The
same seed gives the same run.

``RoomSim`` puts one room's members on it, linked along the room's mesh (``RoomMesh``), each
with a ``TreeRouter`` (tree push) or a ``FloodRouter`` (flooding), and measures delivery,
latency, hops and frames. Used by the tests and by ``bench/tree_vs_flood.py``.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import random
from collections.abc import Callable, Hashable, Iterable, Mapping, Set
from dataclasses import dataclass, field
from typing import Any, Literal

from p2pchat.peer.mesh import RoomMesh
from p2pchat.peer.plumtree import Send, TreeRouter
from p2pchat.peer.router import FloodRouter
from p2pchat.protocol.messages import Graft, IHave, Prune, RoomMessage, peer_decoder

ROOM = "room"
HOP_LIMIT = 64
"""The hops a room message starts with (the routers' default): it may cross this many links."""
_KIND = {RoomMessage: "room_msg", IHave: "ihave", Graft: "graft", Prune: "prune"}
Design = Literal["tree", "flood"]
LinkLatency = Callable[[Hashable, Hashable], float]
"""A link's latency before jitter, given its two ends (must not depend on their order)."""
MeshBuilder = Callable[[set[str]], Mapping[str, Set[str]]]
"""Every member's neighbours, from the set of members (online, alive) of the room."""


def hashed_uniform(*parts: object) -> float:
    """A number in [0, 1) drawn from a hash of ``parts``: the same parts, the same number."""
    data = "\0".join(map(str, parts)).encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big") / 2**64


def links_crossed(hops: int) -> int:
    """How many links a room message arriving with ``hops`` left has crossed."""
    return HOP_LIMIT + 1 - hops


class SimNet:
    """Virtual time and links. ``handler(dst, src, payload)`` receives what ``send`` sends.

    A frame from ``src`` to ``dst`` takes the link's latency (``latency`` times a factor drawn
    uniformly in [1 - spread, 1 + spread] once per link, so the mean is ``latency``) plus a
    jitter drawn per frame, uniform in [0, jitter * link latency], and never overtakes an
    earlier frame on the same directed link. It is lost with probability ``loss``, and dropped
    if either end is dead when it is sent or when it arrives.

    With ``latency_of``, a link's latency before jitter is ``latency_of(a, b)`` instead (then
    ``latency`` and ``spread`` are not used, and the draws of links do not consume the seed).
    With ``hashed_draws``, a frame's jitter and loss come from a hash of the seed, the directed
    link and the frame's number on it instead of one random stream: the run then does not
    depend on the order of sends made at the same instant, which follows the iteration order
    of sets of names and so changes from one Python process to the next (string hashing is
    randomised); the same seed gives the same run in any process.
    """

    def __init__(
        self,
        handler: Callable[[Hashable, Hashable, Any], None],
        *,
        seed: int = 0,
        latency: float = 0.1,
        spread: float = 0.5,
        jitter: float = 0.1,
        loss: float = 0.0,
        latency_of: LinkLatency | None = None,
        hashed_draws: bool = False,
    ) -> None:
        self.handler = handler
        self.latency_of = latency_of
        self.seed = seed
        self.hashed_draws = hashed_draws
        self._frames_on: dict[tuple[Hashable, Hashable], int] = {}
        self.rng = random.Random(seed)
        self.latency, self.spread, self.jitter, self.loss = latency, spread, jitter, loss
        self.now = 0.0
        self.dead: set[Hashable] = set()
        self.sent = 0
        self.lost = 0
        self._heap: list[tuple[float, int, Hashable, Hashable, Any]] = []
        self._seq = 0
        self._link: dict[tuple[Hashable, Hashable], float] = {}
        self._last: dict[tuple[Hashable, Hashable], float] = {}

    def link_latency(self, a: Hashable, b: Hashable) -> float:
        """The link's latency before jitter: drawn at its first use, the same both ways."""
        lat = self._link.get((a, b))
        if lat is None:
            if self.latency_of is not None:
                lat = self.latency_of(a, b)
            else:
                lat = self.latency * (1 + self.spread * (2 * self.rng.random() - 1))
            self._link[a, b] = self._link[b, a] = lat
        return lat

    def send(self, src: Hashable, dst: Hashable, payload: Any) -> None:
        if src in self.dead or dst in self.dead:
            return
        self.sent += 1
        if self.hashed_draws:
            k = self._frames_on[src, dst] = self._frames_on.get((src, dst), 0) + 1
            if self.loss and hashed_uniform(self.seed, "loss", src, dst, k) < self.loss:
                self.lost += 1
                return
            lat = self.link_latency(src, dst)
            t = self.now + lat + self.jitter * lat * hashed_uniform(self.seed, src, dst, k)
        else:
            if self.loss and self.rng.random() < self.loss:
                self.lost += 1
                return
            lat = self.link_latency(src, dst)
            t = self.now + lat + self.jitter * lat * self.rng.random()
        last = self._last.get((src, dst), 0.0)
        if t < last:
            t = last
        self._last[src, dst] = t
        self._push(t, dst, src, payload)

    def at(self, t: float, node: Hashable, fn: Callable[[], None]) -> None:
        """Run ``fn`` at time ``t`` unless ``node`` is dead by then."""
        self._push(max(t, self.now), node, None, fn)

    def _push(self, t: float, dst: Hashable, src: Hashable, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, dst, src, payload))

    def kill(self, node: Hashable) -> None:
        self.dead.add(node)

    def run(self, until: float = math.inf, max_events: int = 50_000_000) -> int:
        """Process events up to time ``until`` (or until none are left); returns how many."""
        heap = self._heap
        done = 0
        while heap and heap[0][0] <= until:
            t, _, dst, src, payload = heapq.heappop(heap)
            self.now = t
            done += 1
            if done > max_events:
                raise RuntimeError("too many events: a runaway protocol?")
            if dst in self.dead:
                continue
            if src is None:
                payload()
            else:
                self.handler(dst, src, payload)
        if until != math.inf:
            self.now = max(self.now, until)
        return done

    @property
    def idle(self) -> bool:
        return not self._heap


@dataclass
class Stats:
    """Figures over a set of messages, counted from what the network carried."""

    messages: int
    expected: int
    """Deliveries wanted: each message to every member alive at the end but its origin."""
    delivered: int
    payload_frames: int
    ihave_frames: int
    control_frames: int
    """``graft`` and ``prune`` frames."""
    latencies: list[float] = field(repr=False)
    max_hops: int

    @property
    def delivered_ratio(self) -> float:
        return self.delivered / self.expected if self.expected else 1.0

    @property
    def payload_per_delivery(self) -> float:
        return self.payload_frames / self.delivered if self.delivered else math.nan

    def percentile(self, q: float) -> float:
        """Nearest-rank percentile of the delivery latencies, in seconds."""
        if not self.latencies:
            return math.nan
        ordered = sorted(self.latencies)
        k = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
        return ordered[k]

    def row(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "delivered_ratio": round(self.delivered_ratio, 6),
            "payload_frames_per_delivery": round(self.payload_per_delivery, 3),
            "ihave_frames_per_delivery": round(self.ihave_frames / max(1, self.delivered), 3),
            "control_frames_per_delivery": round(self.control_frames / max(1, self.delivered), 4),
            "p50_ms": round(self.percentile(50) * 1000, 1),
            "p95_ms": round(self.percentile(95) * 1000, 1),
            "p99_ms": round(self.percentile(99) * 1000, 1),
            "max_ms": round(self.percentile(100) * 1000, 1),
            "max_hops": self.max_hops,
        }


class RoomSim:
    """One room's online members on a ``SimNet``, linked along the room's mesh.

    The registry's member list (for the routers' membership checks) is everyone given, dead or
    alive; ``update_mesh`` recomputes the mesh over the living, as members do when the registry
    tells them someone went offline.

    ``mesh_builder`` links the members along another graph than ``RoomMesh``'s (e.g. an older
    mesh, for comparison); ``latency_of`` fixes each link's latency and ``hashed_draws`` makes
    the run independent of Python's string hashing (see ``SimNet``).
    """

    def __init__(
        self,
        members: Iterable[str],
        design: Design = "tree",
        *,
        seed: int = 0,
        latency: float = 0.1,
        spread: float = 0.5,
        jitter: float = 0.1,
        loss: float = 0.0,
        max_links: int = 6,
        tree_options: dict[str, Any] | None = None,
        mesh_builder: MeshBuilder | None = None,
        latency_of: LinkLatency | None = None,
        hashed_draws: bool = False,
    ) -> None:
        self.members = sorted(set(members))
        self.member_set = frozenset(self.members)
        self.design = design
        self.net = SimNet(
            self._on_frame,
            seed=seed,
            latency=latency,
            spread=spread,
            jitter=jitter,
            loss=loss,
            latency_of=latency_of,
            hashed_draws=hashed_draws,
        )
        ids = random.Random(seed ^ 0x5EED)
        self.mesh = RoomMesh(self.members, max_links)
        self.mesh_builder = mesh_builder
        self.graph = self._build(set(self.members)) if mesh_builder else self.mesh.graph()
        self.trees: dict[str, TreeRouter] = {}
        self.floods: dict[str, FloodRouter] = {}
        for v in self.members:
            if design == "tree":
                r = TreeRouter(
                    v, new_id=lambda: f"{ids.getrandbits(128):032x}", **(tree_options or {})
                )
                for u in self.graph[v]:
                    r.neighbour_up(ROOM, u)
                self.trees[v] = r
            else:
                self.floods[v] = FloodRouter(v)
        self.sent: dict[str, tuple[str, float]] = {}
        """id -> (origin, time sent)."""
        self.got: dict[str, dict[str, tuple[float, int]]] = {}
        """id -> member -> (time shown, links crossed)."""
        self.shown_twice = 0
        self.frames: dict[str, int] = {"room_msg": 0, "ihave": 0, "graft": 0, "prune": 0}
        self._wake: dict[str, float] = {}
        self._decoded: dict[int, RoomMessage | IHave | Graft | Prune] = {}

    # ------------------------------------------------------------------ wiring

    def _dispatch(self, src: str, sends: Iterable[Any]) -> None:
        net = self.net
        for s in sends:
            msg = peer_decoder.decode(s.frame)  # what the wire carries, decoded once per frame
            assert isinstance(msg, RoomMessage | IHave | Graft | Prune)
            assert src not in s.targets
            self.frames[_KIND[type(msg)]] += len(s.targets)
            for dst in s.targets:
                net.send(src, dst, msg)

    def _schedule(self, v: str) -> None:
        r = self.trees.get(v)
        if r is None:
            return
        t = r.next_deadline()
        if t is not None and t < self._wake.get(v, math.inf):
            self._wake[v] = t
            self.net.at(t, v, lambda: self._on_timer(v, t))

    def _on_timer(self, v: str, t: float) -> None:
        if self._wake.get(v) == t:
            del self._wake[v]
        r = self.trees[v]
        due = r.next_deadline()
        if due is not None and due <= self.net.now:
            self._dispatch(v, r.on_timer(self.net.now))
        self._schedule(v)

    def _on_frame(self, dst: Hashable, src: Hashable, msg: Any) -> None:
        assert isinstance(dst, str) and isinstance(src, str)
        now = self.net.now
        if self.design == "tree":
            r = self.trees[dst]
            res = r.receive(msg, src, now, self.member_set)
            if res.deliver:
                self._shown(dst, msg)
            if res.sends:
                self._dispatch(dst, res.sends)
            self._schedule(dst)
        else:
            route = self.floods[dst].receive(msg, src, now, self.graph[dst], self.member_set)
            if route.deliver:
                self._shown(dst, msg)
            if route.forward is not None:
                fwd = route.forward
                self._dispatch(dst, [Send(fwd.msg, fwd.frame, fwd.targets)])

    def _shown(self, v: str, msg: RoomMessage) -> None:
        seen = self.got.setdefault(msg.id, {})
        if v in seen:
            self.shown_twice += 1
        seen[v] = (self.net.now, links_crossed(msg.hops))

    # ------------------------------------------------------------------ actions

    def say(self, origin: str, text: str = "hello") -> str:
        """``origin`` writes a message now; returns its id."""
        now = self.net.now
        if self.design == "tree":
            o = self.trees[origin].originate(ROOM, text, now)
            msg, sends = o.msg, o.sends
        else:
            fwd = self.floods[origin].originate(ROOM, text, now, self.graph[origin])
            msg, sends = fwd.msg, [Send(fwd.msg, fwd.frame, fwd.targets)]
        self.sent[msg.id] = (origin, now)
        self.got[msg.id] = {}
        self._dispatch(origin, sends)
        self._schedule(origin)
        return msg.id

    def say_at(self, t: float, origin: str, out: list[str], text: str = "hello") -> None:
        """``origin`` writes at time ``t``; its id is appended to ``out`` then."""
        self.net.at(t, origin, lambda: out.append(self.say(origin, text)))

    def kill(self, names: Iterable[str]) -> None:
        for v in names:
            self.net.kill(v)

    @property
    def alive(self) -> list[str]:
        return [v for v in self.members if v not in self.net.dead]

    def update_mesh(self) -> None:
        """Every living member recomputes the mesh over the living and adjusts its links."""
        for v in self.net.dead:
            self.mesh.remove(v)
        new = self._build(set(self.alive)) if self.mesh_builder else self.mesh.graph()
        for v in self.alive:
            old, now_ = self.graph.get(v, frozenset()), new[v]
            r = self.trees.get(v)
            if r is not None:
                for u in now_ - old:
                    r.neighbour_up(ROOM, u)
                for u in old - now_:
                    self._dispatch(v, r.neighbour_down(ROOM, u))
                self._schedule(v)
        self.graph = {v: new.get(v, frozenset()) for v in self.members}

    def _build(self, members: set[str]) -> dict[str, frozenset[str]]:
        assert self.mesh_builder is not None
        graph = self.mesh_builder(members)
        return {v: frozenset(graph.get(v, ())) for v in members}

    def run(self, until: float = math.inf) -> None:
        self.net.run(until)

    def counters(self) -> dict[str, int]:
        return dict(self.frames)

    def stats(self, ids: Iterable[str], since: dict[str, int] | None = None) -> Stats:
        """Figures over the messages ``ids``; frames counted since ``since`` (a ``counters()``)."""
        base = since or dict.fromkeys(self.frames, 0)
        return tally(
            [(*self.sent[mid], self.got[mid]) for mid in ids],
            set(self.alive),
            {k: self.frames[k] - base[k] for k in self.frames},
        )


def tally(
    messages: Iterable[tuple[str, float, Mapping[str, tuple[float, int]]]],
    alive: Set[str],
    frames: Mapping[str, int],
) -> Stats:
    """Figures over ``messages``, each (origin, time sent, member -> (time shown, links
    crossed)), counting the deliveries to ``alive`` members; ``frames`` carried, by type."""
    messages = list(messages)
    expected = delivered = 0
    latencies: list[float] = []
    max_hops = 0
    for origin, t0, got in messages:
        expected += len(alive - {origin})
        for v, (t, hops) in got.items():
            if v in alive:
                delivered += 1
                latencies.append(t - t0)
                max_hops = max(max_hops, hops)
    return Stats(
        messages=len(messages),
        expected=expected,
        delivered=delivered,
        payload_frames=frames.get("room_msg", 0),
        ihave_frames=frames.get("ihave", 0),
        control_frames=frames.get("graft", 0) + frames.get("prune", 0),
        latencies=latencies,
        max_hops=max_hops,
    )


# ---------------------------------------------------------------- scenarios


def warm_up(sim: RoomSim, senders: list[str], gap: float = 1.0) -> list[str]:
    """Each sender's first message, one every ``gap`` seconds, then quiet."""
    ids: list[str] = []
    t = sim.net.now
    for k, s in enumerate(senders):
        sim.say_at(t + k * gap, s, ids)
    sim.run()
    return ids


def steady(sim: RoomSim, senders: list[str], messages: int, gap: float = 0.5) -> Stats:
    """``messages`` more messages from ``senders`` in turn, one every ``gap`` seconds,
    measured after the senders' first messages have built their trees."""
    warm_up(sim, senders)
    return rounds(sim, senders, messages, gap)


def rounds(sim: RoomSim, senders: list[str], messages: int, gap: float) -> Stats:
    """``messages`` from ``senders`` in turn, one every ``gap`` seconds, until quiet."""
    before = sim.counters()
    ids: list[str] = []
    t = sim.net.now
    for k in range(messages):
        sim.say_at(t + k * gap, senders[k % len(senders)], ids)
    sim.run()
    return sim.stats(ids, before)


def burst(sim: RoomSim, senders: list[str]) -> Stats:
    """Every sender writes its first message at the same instant."""
    before = sim.counters()
    ids = [sim.say(s) for s in senders]
    sim.run()
    return sim.stats(ids, before)


def killed(
    sim: RoomSim, fraction: float, senders: int, messages: int, seed: int = 0, gap: float = 0.5
) -> Stats:
    """Trees built by a first round of messages; then ``fraction`` of the room dies at random,
    the living recompute the mesh, and ``messages`` are sent by living members."""
    rng = random.Random(seed)
    pool = rng.sample(sim.members, senders)
    warm_up(sim, pool)
    victims = rng.sample(sim.members, round(fraction * len(sim.members)))
    sim.kill(victims)
    sim.update_mesh()
    alive = [v for v in pool if v not in sim.net.dead] or sim.alive[:senders]
    return rounds(sim, alive, messages, gap)
