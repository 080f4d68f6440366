"""Rooms at scale, simulated in virtual time: delivery, latency, hops and frames of one room.

    .venv/bin/python -m bench.simulate --members 1000 --design tree      # 3 seconds
    .venv/bin/python -m bench.simulate --members 10000 --design tree     # about a minute
    .venv/bin/python -m bench.simulate --members 200 --engine core       # whole peers, ~10 s

Engines:
  router  one room's members, each with the real pure router (``TreeRouter`` for tree push with
          lazy repair, ``FloodRouter`` for flooding), linked along the room's mesh as the real
          mesh code computes it (``RoomMesh``), on the discrete-event network of
          tests/peer/simnet.py. Any size: a 10,000-member room takes about a minute.
  core    every member is a whole ``PeerCore`` (registry session, links, handshakes, catch-up,
          signatures, the router inside) and the registry is a real ``RegistryCore``, on the
          simulated network of tests/simnet.py. Each member holds the whole member list, so
          this is for rooms up to a few hundred (at most 500 here), to check the router engine.

Links: a link's one-way latency is drawn once, uniformly in MEAN * [1 - SPREAD, 1 + SPREAD]
(--latency-ms, --spread; 100 ms +- 50% by default), from a hash of the seed and the two ends'
names, so both engines give the same link the same latency. Each frame (router) or write
(core) then adds a jitter drawn uniformly in [0, JITTER * the link's latency] (--jitter, 0.1 by
default: mean one-way delay 105 ms). Links are FIFO, like TCP. With --loss, each frame is lost
with that probability: the router engine drops it (the design must repair it: tree push grafts
it from a neighbour that announced it, flooding relies on its other copies), the core engine,
like TCP, delivers it a retransmission timeout later (max(200 ms, 3 x the link's latency)). All
draws come from hashes of the seed, so a seed gives the same run in any process.

The run: --senders members, chosen at random, each send a first message (one a second), which
builds their trees under tree push; then, with --kill, that share of the room dies at random and
the living recompute the mesh (router: at once, as the registry's offline events make them;
core: the registry sees the connections reset and sends those events); then --messages
messages are sent by the living senders in turn, one every --gap seconds, and measured.

Figures: delivered_ratio is deliveries over (messages x living members other than the origin);
latency is send to shown (nearest-rank percentiles over every delivery); max_hops the most links
a delivered copy crossed; payload_frames_per_delivery the room_msg frames the network carried
for the measured messages over their deliveries (ihave and graft+prune likewise);
links_per_member_max the most links a member holds; link_changes_per_join the links added plus
removed by one member joining or leaving, averaged over --mesh-events joins of new names and as
many leaves of random members, computed with the mesh code (the same as bench/mesh_stats.py).

The last line printed is one JSON object with all of these; --out also adds it to a results file.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench._rooms import FIGURE_COLUMNS, pair_latency, room_row, router_room
from bench.common import RESULTS_DIR, command_line, header, save_results, shown, table, usernames
from bench.mesh_stats import changes, new_builder, old_mesh_graph
from p2pchat.peer.core import PeerConfig
from p2pchat.peer.events import PeerEvent, RoomText
from p2pchat.protocol.messages import RoomMessage, peer_decoder
from tests.peer.simnet import LinkLatency, Stats, hashed_uniform, killed, links_crossed, tally
from tests.simnet import PASSWORD, REGISTRY_HOST, REGISTRY_PORT, Conn, _End
from tests.simnet import SimNet as WholeNet

MODULE = "bench.simulate"
CORE_MAX_MEMBERS = 500
"""The whole-peer engine keeps every member's full state: beyond this it takes too long."""
ROOM = "room"
WARM_UP_GAP = 1.0
"""Seconds between the senders' first messages."""
SETTLE = 5.0
"""Simulated seconds the core engine runs on after the last delivery, so that the lazy
announcements and prunes still due are counted (the router engine runs until quiet)."""
DEFAULT_RESULTS = RESULTS_DIR / "simulate.json"


# ---------------------------------------------------------------- options


def _number(kind: Callable[[str], float], low: float, high: float, what: str) -> Any:
    """An argparse type: ``kind`` of the text, within [low, high] (bounds given as text)."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not (low <= value <= high) or value != value:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"python -m {MODULE}",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    whole = _number(int, 1, 10**7, "a whole number of at least 1")
    p.add_argument(
        "--members",
        type=_number(int, 2, 10**6, "a room size between 2 and 1,000,000"),
        default=1000,
        help="N, the room's members, all online at first (default 1000)",
    )
    p.add_argument(
        "--design",
        choices=("tree", "flood"),
        default="tree",
        help="tree: tree push with lazy repair (the peers' default); flood: flooding",
    )
    p.add_argument(
        "--engine",
        choices=("router", "core"),
        default="router",
        help=f"router: pure routers, any size; core: whole peers and registry, N <= "
        f"{CORE_MAX_MEMBERS} (default router)",
    )
    p.add_argument(
        "--mesh",
        choices=("new", "old"),
        default="new",
        help="new: the three-ring mesh of peer/mesh.py; old: the chordal ring it replaced "
        "(kept in bench/mesh_stats.py; router engine only) (default new)",
    )
    p.add_argument(
        "--latency-ms",
        type=_number(float, 1e-3, 1e5, "a latency in ms above 0"),
        default=100.0,
        metavar="MEAN",
        help="mean one-way latency of a link before jitter, in ms (default 100)",
    )
    p.add_argument(
        "--spread",
        type=_number(float, 0.0, 0.99, "a share between 0 and 0.99"),
        default=0.5,
        help="links' latencies are uniform within MEAN x (1 +- SPREAD) (default 0.5)",
    )
    p.add_argument(
        "--jitter",
        type=_number(float, 0.0, 10.0, "a share between 0 and 10"),
        default=0.1,
        help="each frame adds up to this share of its link's latency, uniformly (default 0.1)",
    )
    p.add_argument(
        "--loss",
        type=_number(float, 0.0, 0.5, "a fraction between 0 and 0.5"),
        default=0.0,
        metavar="FRACTION",
        help="share of frames lost (router: dropped; core: retransmitted late) (default 0)",
    )
    p.add_argument(
        "--kill",
        type=_number(float, 0.0, 0.9, "a fraction between 0 and 0.9"),
        default=0.0,
        metavar="FRACTION",
        help="share of the room that dies at random after the first round (default 0)",
    )
    p.add_argument(
        "--messages", type=whole, default=30, metavar="M", help="messages measured (default 30)"
    )
    p.add_argument(
        "--senders",
        type=whole,
        default=10,
        help="members sending, chosen at random; at most N (default 10)",
    )
    p.add_argument(
        "--gap",
        type=_number(float, 1e-3, 3600.0, "a number of seconds above 0"),
        default=0.5,
        metavar="SECONDS",
        help="time between measured messages, simulated (default 0.5)",
    )
    p.add_argument(
        "--seed", type=_number(int, 0, 2**63, "a whole number >= 0"), default=1, help="(default 1)"
    )
    p.add_argument(
        "--mesh-events",
        type=_number(int, 0, 10_000, "a whole number between 0 and 10,000"),
        default=20,
        metavar="E",
        help="joins (and as many leaves) over which link changes are averaged (default 20)",
    )
    p.add_argument(
        "--quick", action="store_true", help="a smoke run: N = 100, 10 messages, 5 mesh events"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="FILE",
        help=f"add this run to a results file (e.g. {shown(DEFAULT_RESULTS)}): its other runs "
        "are kept, a run of the same command is replaced",
    )
    return p


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quick:
        parser.set_defaults(members=100, messages=10, mesh_events=5)
        args = parser.parse_args(argv)
    if args.senders > args.members:
        parser.error(f"--senders {args.senders} is more than --members {args.members}")
    if args.members - round(args.kill * args.members) < 2:
        parser.error(f"--kill {args.kill} leaves fewer than 2 of {args.members} members alive")
    if args.engine == "core":
        if args.members > CORE_MAX_MEMBERS:
            parser.error(
                f"--engine core holds every member's whole peer: at most {CORE_MAX_MEMBERS} "
                f"members, not {args.members} (use --engine router)"
            )
        if args.mesh != "new":
            parser.error("--engine core runs the peers' own mesh: --mesh old is router only")
    return args


# ---------------------------------------------------------------- the router engine


def run_router(args: argparse.Namespace, names: list[str]) -> tuple[Stats, dict[str, Any]]:
    sim = router_room(
        names,
        args.design,
        seed=args.seed,
        latency_ms=args.latency_ms,
        jitter=args.jitter,
        loss=args.loss,
        latency_of=pair_latency(args.seed, args.latency_ms / 1000, args.spread),
        mesh_builder=old_mesh_graph if args.mesh == "old" else None,
        hashed_draws=True,
    )
    stats = killed(sim, args.kill, args.senders, args.messages, seed=args.seed, gap=args.gap)
    extra = {k: v for k, v in room_row(sim, stats).items() if k not in stats.row()}
    extra["frames_lost"] = sim.net.lost
    return stats, extra


# ---------------------------------------------------------------- the whole-peer engine


class CoreNet(WholeNet):
    """The whole-peer network with the router engine's links: each link's latency from
    ``pair_latency`` (the registry is one more end, named ``registry``), jitter a share of it
    per write, loss a retransmission delay, all drawn from hashes. Records when each member
    showed each message and how many links its first copy crossed."""

    def __init__(
        self, seed: int, latency_of: LinkLatency, jitter: float, loss: float, design: str
    ) -> None:
        config = PeerConfig(
            registry_host=REGISTRY_HOST,
            registry_port=REGISTRY_PORT,
            dial_timeout=3.0,
            design=design,  # type: ignore[arg-type]
        )
        super().__init__(seed, loss=loss, peer_config=config)
        self.latency_of = latency_of
        self.relative_jitter = jitter
        self.names: dict[str, str] = {REGISTRY_HOST: "registry"}
        self._base: dict[tuple[str, str], float] = {}
        self._draws: dict[tuple[str, str], int] = {}
        self.shown: dict[tuple[str, str], dict[str, float]] = {}
        """(origin, text) -> member -> when it was shown."""
        self.shown_twice = 0
        self.first_hops: dict[tuple[str, str, str], int] = {}
        """(member, origin, text) -> links crossed by the first copy that reached it."""

    def join(self, name: str) -> None:
        peer = self.add_peer(name, register=False, login=False, record=self._recorder(name))
        self.names[peer.host] = name
        peer.do("register", name, PASSWORD)
        peer.do("login", name, PASSWORD)

    def _recorder(self, name: str) -> Callable[[PeerEvent], bool]:
        def record(event: PeerEvent) -> bool:
            if isinstance(event, RoomText) and not event.mine:
                got = self.shown.setdefault((event.sender, event.text), {})
                if name in got:
                    self.shown_twice += 1
                else:
                    got[name] = self.now
            return False  # kept here, not in the peer's list of events

        return record

    def _delay(self, a: str, b: str) -> float:
        base = self._base.get((a, b))
        if base is None:
            base = self.latency_of(self.names.get(a, a), self.names.get(b, b))
            self._base[a, b] = self._base[b, a] = base
        k = self._draws[a, b] = self._draws.get((a, b), 0) + 1
        delay = base * (1 + self.relative_jitter * hashed_uniform(self.seed, a, b, k))
        if self.loss and hashed_uniform(self.seed, "loss", a, b, k) < self.loss:
            delay += max(0.2, 3 * base)  # a retransmission timeout
        return delay

    def _arrive(self, conn: Conn, src: _End, dst: _End, batch: list[bytes]) -> None:
        if dst.alive:
            name = self.names.get(dst.host, dst.host)
            for data in batch:
                if b'"room_msg"' not in data:
                    continue
                for line in data.split(b"\n"):
                    if b'"type":"room_msg"' in line:
                        msg = peer_decoder.decode(line)
                        if isinstance(msg, RoomMessage):
                            key = (name, msg.origin, msg.text)
                            self.first_hops.setdefault(key, links_crossed(msg.hops))
        super()._arrive(conn, src, dst, batch)

    def say_at(self, t: float, origin: str, text: str, sent: dict[tuple[str, str], float]) -> None:
        def say() -> None:
            peer = self.peers[origin]
            if not peer.crashed:
                sent[origin, text] = self.now
                peer.start("say", ROOM, text)

        self.at(t, say)

    def wait_shown(self, keys: list[tuple[str, str]], alive: set[str], timeout: float) -> None:
        """Run until every living member but the origin showed every message, or ``timeout``."""

        def done() -> bool:
            return all(
                sum(1 for v in self.shown.get(k, ()) if v in alive) >= len(alive - {k[0]})
                for k in keys
            )

        with contextlib.suppress(TimeoutError):  # what was not delivered shows in the figures
            self.run_until(done, timeout=timeout, poll=0.05)
        self.run_for(SETTLE)


def run_core(args: argparse.Namespace, names: list[str]) -> tuple[Stats, dict[str, Any]]:
    net = CoreNet(
        args.seed,
        pair_latency(args.seed, args.latency_ms / 1000, args.spread),
        args.jitter,
        args.loss,
        args.design,
    )
    for name in names:
        net.join(name)
    net.room(ROOM, names)
    # The same draws, in the same order, as the router engine's scenario (simnet.killed).
    rng = random.Random(args.seed)
    pool = rng.sample(names, args.senders)
    sent: dict[tuple[str, str], float] = {}
    first = [(s, f"first {k}") for k, s in enumerate(pool)]
    for k, (s, text) in enumerate(first):
        net.say_at(net.now + k * WARM_UP_GAP, s, text, sent)
    net.wait_shown(first, set(names), timeout=len(pool) * WARM_UP_GAP + 60)
    victims = set(rng.sample(names, round(args.kill * len(names))))
    for v in sorted(victims):
        net.crash(v)
    alive = [v for v in names if v not in victims]
    if victims:
        net.wait_mesh(ROOM, timeout=120)
    speakers = [v for v in pool if v not in victims] or alive[: args.senders]
    before = Counter(net.frames)
    keys = [(speakers[k % len(speakers)], f"message {k}") for k in range(args.messages)]
    start = net.now
    for k, (s, text) in enumerate(keys):
        net.say_at(start + k * args.gap, s, text, sent)
    living = set(alive)
    net.wait_shown(keys, living, timeout=args.messages * args.gap + 60)

    frames = Counter(net.frames)
    frames.subtract(before)
    shown = [
        (
            key[0],
            sent[key],
            {v: (t, net.first_hops.get((v, *key), 0)) for v, t in net.shown.get(key, {}).items()},
        )
        for key in keys
    ]
    stats = tally(shown, set(alive), frames)
    extra: dict[str, Any] = {"alive": len(alive), "shown_twice": net.shown_twice}
    if args.design == "tree":
        routers = [net.peers[v].core.router for v in alive]
        extra["grafted"] = sum(getattr(r, "repaired", 0) for r in routers)
        extra["given_up"] = sum(getattr(r, "given_up", 0) for r in routers)
    extra["links_per_member_max"] = max(len(net.peers[v].core.links) for v in alive)
    extra["catch_up_frames"] = frames["sync_batch"]
    return stats, extra


# ---------------------------------------------------------------- one run


def link_changes(args: argparse.Namespace, names: list[str]) -> dict[str, Any]:
    """Links changed per join and per leave, by the mesh code alone (no network)."""
    if not args.mesh_events:
        return {"link_changes_per_join": None}
    build = old_mesh_graph if args.mesh == "old" else new_builder
    joins, leaves = changes(build, set(names), args.mesh_events, random.Random(args.seed))
    return {
        "link_changes_per_join": round((sum(joins) + sum(leaves)) / (len(joins) + len(leaves)), 2),
        "link_changes_joins_mean": round(sum(joins) / len(joins), 2),
        "link_changes_leaves_mean": round(sum(leaves) / len(leaves), 2),
        "link_changes_max": max(joins + leaves),
    }


def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """One simulated room; its figures as one flat row (the JSON line)."""
    start = time.perf_counter()
    names = usernames(args.members)
    engine = run_core if args.engine == "core" else run_router
    stats, extra = engine(args, names)
    row: dict[str, Any] = {
        "benchmark": "simulate",
        "members": args.members,
        "design": args.design,
        "engine": args.engine,
        "mesh": args.mesh,
        "seed": args.seed,
        "latency_ms": args.latency_ms,
        "spread": args.spread,
        "jitter": args.jitter,
        "loss": args.loss,
        "kill": args.kill,
        "senders": args.senders,
        "gap_s": args.gap,
    }
    row |= stats.row()
    row |= extra
    row |= link_changes(args, names)
    row["wall_seconds"] = round(time.perf_counter() - start, 2)
    row["command"] = command
    for key, value in row.items():
        if isinstance(value, float) and math.isnan(value):
            row[key] = None  # JSON has no NaN
    return row


COLUMNS = [
    ("N", "members"),
    ("engine", "engine"),
    ("design", "design"),
    ("mesh", "mesh"),
    ("alive", "alive"),
    *FIGURE_COLUMNS,
    ("links max", "links_per_member_max"),
    ("changes/join", "link_changes_per_join"),
    ("wall s", "wall_seconds"),
]


def add_run(path: Path, command: str, row: dict[str, Any]) -> Path:
    """Add ``row`` to the results file at ``path``, replacing a run of the same command."""
    rows: list[dict[str, Any]] = []
    if path.exists():
        try:
            old = json.loads(path.read_text())
            rows = [r for r in old.get("rows", []) if r.get("command") != command]
        except (ValueError, AttributeError):
            rows = []
    return save_results("simulate", command, [*rows, row], path=path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = command_line(MODULE, argv)
    print(header("simulate: one room in virtual time", command))
    print(
        f"{args.engine} engine, {args.design}, {args.mesh} mesh; links {args.latency_ms:g} ms "
        f"mean (+-{args.spread:.0%} per link), jitter up to {args.jitter:g} of it per frame, "
        f"loss {args.loss:g}, kill {args.kill:g}; {args.senders} senders, {args.messages} "
        f"messages measured, one every {args.gap:g} s; seed {args.seed}\n"
    )
    row = run(args, command)
    print(table([c for c, _ in COLUMNS], [[row.get(k, "-") for _, k in COLUMNS]]))
    if args.out is not None:
        print(f"results: {shown(add_run(args.out, command, row))}")
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
