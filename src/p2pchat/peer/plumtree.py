"""Tree push of room messages with lazy repair (Plumtree: Leitão, Pereira and Rodrigues, 2007,
"Epidemic Broadcast Trees"), as pure decisions the caller carries out.

Flooding sends every message over every mesh link, about (degree - 1) payloads per member
reached. Here a peer pushes a message's payload only over its *eager* links, and announces its
id (``ihave``, batched on a short timer) over the *lazy* ones. A copy that arrives again is
redundant: the receiver asks the link's other end to stop pushing (``prune``), so after the
first message the eager links form a spanning tree and each member receives one payload. An
announced id whose payload does not follow in time is asked for (``graft``), which also makes
that link eager again: the tree repairs itself around lost links and dead members.

**One tree per origin.** A shared tree (per room) is the fastest path only from its root, and
concurrent messages from different origins prune each other's trees: a node that gets m1 first
over A and m2 first over B prunes both (riak_core issue 378). Trees are therefore kept per
(room, origin), as Riak's broadcast does; an origin's first message is flooded and prunes the
redundant links for that origin only, so a burst of first messages from many senders cannot
interfere. Unknown origins start fully eager; the states are bounded per room (least recently
used forgotten, which only costs one more flood).

**Links are directed.** A peer decides alone who pushes to it (its ``prune`` and ``graft``
frames), and pushes to every neighbour that has not pruned it. The riak_core 378 failure
remains possible within one origin (two of its messages in flight, first copies over different
links): a duplicate of message m therefore prunes its link only if the link that brought m
first is still one we have not pruned. So a peer never prunes away the last links that fed it
recently; at worst a redundant link stays eager until a later message settles it. Lazy repair
is the safety net either way: every peer announces every message it has to the neighbours it
does not push to, so a missing payload is always grafted from someone who has it.

No sockets and no clock: the caller passes ``now``, sends what we return, calls ``on_timer``
at ``next_deadline()``, and reports mesh changes with ``neighbour_up``/``neighbour_down``.
"""

from __future__ import annotations

import heapq
import os
from collections import OrderedDict
from collections.abc import Callable, Container
from dataclasses import dataclass, field

from msgspec.structs import replace as _replace

from p2pchat.peer.router import FORGETTABLE, Check, Drop, Origination, Result, Send, Signer
from p2pchat.peer.seen import SeenIds
from p2pchat.protocol.messages import (
    MAX_IDS_PER_FRAME,
    Graft,
    IHave,
    Prune,
    RoomMessage,
    encode,
    valid_message_id,
)

TreeFrame = RoomMessage | IHave | Graft | Prune

SEEN_ENTRY_BYTES = 200
"""Upper bound of the memory one seen id costs (a 32-character key, its expiry, the ordered
dict's entry); ids have a fixed format, so a count bound is a byte bound."""
CACHE_ENTRY_BYTES = 400
"""Memory a cached payload costs beyond its frame's bytes (message struct, entry, key)."""
MISSING_ENTRY_BYTES = 400
"""Memory one announced-but-missing id costs, announcers and heap entry included."""


def _random_id() -> str:
    return os.urandom(16).hex()


@dataclass(slots=True)
class _Tree:
    """One origin's tree in one room, as this peer sees its own links."""

    pruned: set[str] = field(default_factory=set)
    """Neighbours we asked not to push to us: their copies came second."""
    lazy: set[str] = field(default_factory=set)
    """Neighbours that asked us not to push to them: they get ids."""


@dataclass(slots=True)
class _Room:
    neighbours: set[str] = field(default_factory=set)
    trees: OrderedDict[str, _Tree] = field(default_factory=OrderedDict)


@dataclass(slots=True)
class _Cached:
    """A message we have, kept for a while to answer grafts and to know its first sender."""

    room: str
    origin: str
    parent: str | None
    """The neighbour whose copy came first; None for our own."""
    msg: RoomMessage | None
    """The copy we pass on (hops lowered); None if it may go no further."""
    frame: bytes
    expires: float
    size: int


@dataclass(slots=True)
class _Missing:
    """An id announced to us whose payload we have not got."""

    room: str
    origin: str
    announcers: list[str]
    deadline: float
    tries: int = 0
    grafted: bool = False


_EMPTY: list[Send] = []
_INF = float("inf")


class TreeRouter:
    """One peer's tree-push state for all its rooms: trees, caches, timers, counters.

    Limits: the seen cache keeps an id ``seen_ttl`` seconds and at most ``max_seen`` ids
    (fewer if ``max_seen_bytes`` says so); payloads are kept ``cache_ttl`` seconds to answer
    grafts, at most ``max_cached`` of them and ``max_cache_bytes``; at most ``max_missing``
    announced ids are awaited, each from at most ``max_announcers`` peers, and asked for at
    most ``max_grafts`` times; at most ``max_trees`` origins per room are remembered. Pending
    announcements are flushed after ``ihave_delay`` or as soon as one frame's worth is ready.
    A missing payload is grafted ``graft_timeout`` after its first announcement, then from the
    next announcer every ``retry_timeout``. ``now`` must not go backwards.
    """

    def __init__(
        self,
        me: str,
        *,
        seen_ttl: float = 120.0,
        max_seen: int = 200_000,
        max_seen_bytes: int = 40 << 20,
        default_hops: int = 64,
        ihave_delay: float = 0.05,
        graft_timeout: float = 0.5,
        retry_timeout: float = 1.0,
        max_grafts: int = 4,
        cache_ttl: float = 30.0,
        max_cached: int = 20_000,
        max_cache_bytes: int = 32 << 20,
        max_missing: int = 20_000,
        max_announcers: int = 4,
        max_trees: int = 4096,
        new_id: Callable[[], str] = _random_id,
    ) -> None:
        for name, value in (
            ("seen_ttl", seen_ttl),
            ("default_hops", default_hops),
            ("ihave_delay", ihave_delay),
            ("graft_timeout", graft_timeout),
            ("retry_timeout", retry_timeout),
            ("cache_ttl", cache_ttl),
        ):
            if value < 0:
                raise ValueError(f"{name} must not be negative")
        for name, value in (
            ("max_seen", max_seen),
            ("max_grafts", max_grafts),
            ("max_cached", max_cached),
            ("max_missing", max_missing),
            ("max_announcers", max_announcers),
            ("max_trees", max_trees),
        ):
            if value < 1:
                raise ValueError(f"{name} must be at least 1")
        if max_seen_bytes < SEEN_ENTRY_BYTES:
            raise ValueError(f"max_seen_bytes must be at least {SEEN_ENTRY_BYTES}")
        self.me = me
        self._hops = default_hops
        self._ihave_delay = ihave_delay
        self._graft_timeout = graft_timeout
        self._retry_timeout = retry_timeout
        self._max_grafts = max_grafts
        self._cache_ttl = cache_ttl
        self._max_cached = max_cached
        self._max_cache_bytes = max_cache_bytes
        self._max_missing = max_missing
        self._max_announcers = max_announcers
        self._max_trees = max_trees
        self._new_id = new_id

        self._rooms: dict[str, _Room] = {}
        self._seen = SeenIds(seen_ttl, min(max_seen, max_seen_bytes // SEEN_ENTRY_BYTES))
        self._cache: OrderedDict[str, _Cached] = OrderedDict()
        """id -> the message, oldest first (every entry lives ``cache_ttl``)."""
        self._cache_bytes = 0
        self._missing: dict[str, _Missing] = {}
        self._timers: list[tuple[float, int, str]] = []
        """(deadline, seq, id) of missing ids; an entry is stale if the id's deadline moved."""
        self._seq = 0
        self._pending: dict[tuple[str, str], dict[str, list[str]]] = {}
        """(room, origin) -> peer -> ids to announce to it."""
        self._pending_ids = 0
        self._flush_at = _INF
        self._next_expiry = _INF

        self.delivered = 0
        """Messages of others shown."""
        self.duplicates = 0
        """Payloads that arrived again."""
        self.dropped = 0
        """Frames ignored for any other reason (see ``Drop``)."""
        self.payloads_out = 0
        """Room message frames sent, counted per target: pushes and graft answers."""
        self.ihaves_out = 0
        """``ihave`` frames sent, per target."""
        self.ids_announced = 0
        """Ids in those frames, per target."""
        self.grafts_out = 0
        """``graft`` frames sent, per target."""
        self.prunes_out = 0
        """``prune`` frames sent, per target."""
        self.repaired = 0
        """Messages that arrived after we grafted them."""
        self.given_up = 0
        """Announced ids never received: every announcer asked ``max_grafts`` times, or gone."""
        self.missing_refused = 0
        """Announced ids not awaited because ``max_missing`` were awaited already."""

    # ------------------------------------------------------------------ state and sizes

    @property
    def seen_size(self) -> int:
        return len(self._seen)

    @property
    def seen_bytes(self) -> int:
        """An upper bound of the seen cache's memory."""
        return len(self._seen) * SEEN_ENTRY_BYTES

    @property
    def cache_size(self) -> int:
        return len(self._cache)

    @property
    def cache_bytes(self) -> int:
        return self._cache_bytes

    @property
    def missing_size(self) -> int:
        return len(self._missing)

    def neighbours(self, room: str) -> frozenset[str]:
        state = self._rooms.get(room)
        return frozenset(state.neighbours) if state else frozenset()

    def eager(self, room: str, origin: str) -> frozenset[str]:
        """Neighbours we push ``origin``'s payloads to (the rest get ids)."""
        return self._unmarked(room, origin, "lazy")

    def feeders(self, room: str, origin: str) -> frozenset[str]:
        """Neighbours we have not pruned for ``origin``: the ones that push to us."""
        return self._unmarked(room, origin, "pruned")

    def _unmarked(self, room: str, origin: str, mark: str) -> frozenset[str]:
        state = self._rooms.get(room)
        if state is None:
            return frozenset()
        tree = state.trees.get(origin)
        marked: set[str] = getattr(tree, mark) if tree else set()
        return frozenset(n for n in state.neighbours if n not in marked)

    # ------------------------------------------------------------------ the mesh

    def neighbour_up(self, room: str, peer: str) -> None:
        """``peer`` is now our mesh neighbour in ``room``: both push to each other at first."""
        state = self._rooms.setdefault(room, _Room())
        if peer not in state.neighbours and peer != self.me:
            state.neighbours.add(peer)
            for tree in state.trees.values():
                tree.pruned.discard(peer)
                tree.lazy.discard(peer)

    def neighbour_down(self, room: str, peer: str) -> list[Send]:
        """``peer`` is no longer our neighbour in ``room`` (left the mesh, or its link is gone).

        For each origin that ``peer`` pushed to us while no other neighbour does, ask every
        remaining neighbour to push again (``graft`` without ids) rather than wait for the
        next message's announcements to time out; the duplicates this causes prune the
        links again. Report new neighbours first, so they count as feeding us.
        """
        state = self._rooms.get(room)
        if state is None or peer not in state.neighbours:
            return _EMPTY
        nbrs = state.neighbours
        nbrs.discard(peer)
        sends: list[Send] = []
        for origin, tree in state.trees.items():
            fed_us = peer not in tree.pruned
            tree.pruned.discard(peer)
            tree.lazy.discard(peer)
            if fed_us and origin != peer and nbrs and nbrs <= tree.pruned:
                tree.pruned.clear()
                self._emit(Graft(room=room, origin=origin, ids=[]), sorted(nbrs), sends)
        for (r, _origin), by_peer in self._pending.items():
            if r == room:
                self._pending_ids -= len(by_peer.pop(peer, ()))
        return sends

    def forget_room(self, room: str) -> None:
        """Drop every neighbour and tree of ``room`` (we left it)."""
        state = self._rooms.get(room)
        if state is not None:
            state.trees.clear()
            for peer in list(state.neighbours):
                self.neighbour_down(room, peer)
            del self._rooms[room]

    def _tree(self, state: _Room, origin: str) -> _Tree:
        trees = state.trees
        tree = trees.get(origin)
        if tree is None:
            tree = trees[origin] = _Tree()
            if len(trees) > self._max_trees:
                trees.popitem(last=False)
        else:
            trees.move_to_end(origin)
        return tree

    # ------------------------------------------------------------------ sending

    def originate(
        self,
        room: str,
        text: str,
        now: float,
        *,
        ts: float | None = None,
        seq: int = 1,
        sign: Signer | None = None,
    ) -> Origination:
        """A new message of ours, pushed to our eager neighbours and announced to the others.

        ``ts`` is the timestamp shown to readers (wall-clock); it defaults to ``now``. ``seq``
        numbers our messages in the room; ``sign`` gives the message its signature.
        """
        msg = RoomMessage(
            id=self._new_id(),
            room=room,
            origin=self.me,
            seq=seq,
            text=text,
            ts=now if ts is None else ts,
            hops=self._hops,
        )
        if sign is not None:
            msg = _replace(msg, sig=sign(msg))
        if now >= self._next_expiry:
            self._expire(now)
        self._remember(msg.id, now)
        sends: list[Send] = []
        self._spread(msg, None, now, sends)
        return Origination(msg, sends)

    def _spread(self, msg: RoomMessage, parent: str | None, now: float, sends: list[Send]) -> None:
        """Cache ``msg`` (already lowered in hops), push it to eager and announce it to lazy
        neighbours, except ``parent`` and its origin."""
        frame = encode(msg)
        self._cache_put(msg.id, _Cached(msg.room, msg.origin, parent, msg, frame, 0.0, 0), now)
        state = self._rooms.get(msg.room)
        if state is None:
            return
        origin = msg.origin
        lazy = self._tree(state, origin).lazy
        eager: list[str] = []
        for n in state.neighbours:
            if n in (parent, origin):
                continue
            if n in lazy:
                self._announce(msg.room, origin, n, msg.id, now, sends)
            else:
                eager.append(n)
        if eager:
            self.payloads_out += len(eager)
            sends.append(Send(msg, frame, eager))

    def _announce(
        self, room: str, origin: str, peer: str, mid: str, now: float, sends: list[Send]
    ) -> None:
        by_peer = self._pending.setdefault((room, origin), {})
        ids = by_peer.setdefault(peer, [])
        ids.append(mid)
        self._pending_ids += 1
        if self._flush_at == _INF:
            self._flush_at = now + self._ihave_delay
        if len(ids) >= MAX_IDS_PER_FRAME:  # a full frame goes at once
            del by_peer[peer]
            self._pending_ids -= len(ids)
            self._emit(IHave(room=room, origin=origin, ids=ids), [peer], sends)

    def _emit(self, msg: IHave | Graft | Prune, targets: list[str], sends: list[Send]) -> None:
        n = len(targets)
        if type(msg) is IHave:
            self.ihaves_out += n
            self.ids_announced += n * len(msg.ids)
        elif type(msg) is Graft:
            self.grafts_out += n
        else:
            self.prunes_out += n
        sends.append(Send(msg, encode(msg), targets))

    def _flush(self, sends: list[Send]) -> None:
        """Every pending announcement, one frame per (room, origin) and list of ids, encoded
        once for all the peers that get the same list."""
        for (room, origin), by_peer in self._pending.items():
            groups: dict[tuple[str, ...], list[str]] = {}
            for peer, ids in by_peer.items():
                groups.setdefault(tuple(ids), []).append(peer)
            for ids_key, peers in groups.items():
                self._emit(IHave(room=room, origin=origin, ids=list(ids_key)), peers, sends)
        self._pending.clear()
        self._pending_ids = 0
        self._flush_at = _INF

    # ------------------------------------------------------------------ receiving

    def receive(
        self,
        msg: TreeFrame,
        from_peer: str,
        now: float,
        members: Container[str],
        check: Check | None = None,
    ) -> Result:
        """Decide what to do with ``msg``, received over the link to ``from_peer``.

        ``members`` are the room's members as the registry lists them (a set, ideally).
        Membership is checked first, then the ids' format, before any state changes, so that
        outsiders and bad frames cannot fill a cache.
        """
        if from_peer not in members:
            return self._drop(Drop.SENDER_NOT_MEMBER)
        if msg.origin not in members:
            return self._drop(Drop.ORIGIN_NOT_MEMBER)
        if now >= self._next_expiry:
            self._expire(now)
        if type(msg) is RoomMessage:
            return self._on_payload(msg, from_peer, now, check)
        state = self._rooms.get(msg.room)
        if state is None or from_peer not in state.neighbours:
            return self._drop(Drop.NOT_NEIGHBOUR)
        if type(msg) is Prune:
            self._tree(state, msg.origin).lazy.add(from_peer)
            return Result(False, _EMPTY, None)
        assert isinstance(msg, IHave | Graft)
        ids = msg.ids
        if len(ids) > MAX_IDS_PER_FRAME:
            return self._drop(Drop.TOO_MANY_IDS)
        if not all(valid_message_id(mid) for mid in ids):
            return self._drop(Drop.BAD_ID)
        if type(msg) is IHave:
            self._on_ihave(msg, from_peer, now)
            return Result(False, _EMPTY, None)
        assert isinstance(msg, Graft)
        return Result(False, self._on_graft(msg, state, from_peer), None)

    def _drop(self, why: Drop) -> Result:
        self.dropped += 1
        return Result(False, _EMPTY, why)

    def _on_payload(
        self, msg: RoomMessage, from_peer: str, now: float, check: Check | None
    ) -> Result:
        mid = msg.id
        if not valid_message_id(mid):
            return self._drop(Drop.BAD_ID)
        if mid in self._seen:
            self.duplicates += 1
            return Result(False, self._maybe_prune(msg, from_peer), Drop.DUPLICATE)
        if msg.origin == self.me:
            return self._drop(Drop.OWN_MESSAGE)
        if check is not None:
            why = check(msg)
            if why is not None:  # see FloodRouter.receive
                if why not in FORGETTABLE:
                    self._remember(mid, now)
                return self._drop(why)
        self._remember(mid, now)
        self.delivered += 1
        missing = self._missing.pop(mid, None)
        if missing is not None and missing.grafted:
            self.repaired += 1
        hops = msg.hops
        if hops <= 0:
            self._cache_put(mid, _Cached(msg.room, msg.origin, from_peer, None, b"", 0.0, 0), now)
            return Result(True, _EMPTY, None)
        out = _replace(msg, hops=min(hops, self._hops) - 1)  # the caller's msg is left alone
        sends: list[Send] = []
        self._spread(out, from_peer, now, sends)
        return Result(True, sends, None)

    def _maybe_prune(self, msg: RoomMessage, from_peer: str) -> list[Send]:
        """A second copy: ask its sender to stop pushing this origin's messages to us, unless
        the link of the first copy is one we have pruned since (then this one may be all that
        still feeds us: the riak_core 378 case)."""
        state = self._rooms.get(msg.room)
        cached = self._cache.get(msg.id)
        if state is None or cached is None or from_peer not in state.neighbours:
            return _EMPTY
        parent = cached.parent
        if parent is None or parent == from_peer or cached.origin != msg.origin:
            return _EMPTY
        tree = self._tree(state, msg.origin)
        if parent in tree.pruned or parent not in state.neighbours:
            return _EMPTY
        tree.pruned.add(from_peer)
        sends: list[Send] = []
        self._emit(Prune(room=msg.room, origin=msg.origin), [from_peer], sends)
        return sends

    def _on_ihave(self, msg: IHave, from_peer: str, now: float) -> None:
        if msg.origin == self.me:
            return
        for mid in msg.ids:
            if mid in self._seen:
                continue
            entry = self._missing.get(mid)
            if entry is not None:
                if (
                    from_peer not in entry.announcers
                    and len(entry.announcers) < self._max_announcers
                ):
                    entry.announcers.append(from_peer)
                continue
            if len(self._missing) >= self._max_missing:
                self.missing_refused += 1
                continue
            deadline = now + self._graft_timeout
            self._missing[mid] = _Missing(msg.room, msg.origin, [from_peer], deadline)
            self._push_timer(deadline, mid)

    def _on_graft(self, msg: Graft, state: _Room, from_peer: str) -> list[Send]:
        self._tree(state, msg.origin).lazy.discard(from_peer)
        sends: list[Send] = []
        for mid in msg.ids:
            cached = self._cache.get(mid)
            if (
                cached is not None
                and cached.msg is not None
                and cached.room == msg.room
                and cached.origin == msg.origin
            ):
                self.payloads_out += 1
                sends.append(Send(cached.msg, cached.frame, [from_peer]))
        return sends

    # ------------------------------------------------------------------ timers

    def _push_timer(self, deadline: float, mid: str) -> None:
        self._seq += 1
        heapq.heappush(self._timers, (deadline, self._seq, mid))
        if len(self._timers) > 4 * self._max_missing:  # stale entries: rebuild from the live
            self._timers = [(e.deadline, 0, m) for m, e in self._missing.items()]
            heapq.heapify(self._timers)

    def _timer_head(self) -> float:
        timers = self._timers
        while timers:
            deadline, _, mid = timers[0]
            entry = self._missing.get(mid)
            if entry is not None and entry.deadline == deadline:
                return deadline
            heapq.heappop(timers)
        return _INF

    def next_deadline(self) -> float | None:
        """When ``on_timer`` should next be called; None if nothing is waiting."""
        t = min(self._flush_at, self._timer_head())
        return None if t == _INF else t

    def on_timer(self, now: float) -> list[Send]:
        """Flush due announcements and graft ids whose payload is late."""
        sends: list[Send] = []
        if now >= self._flush_at:
            self._flush(sends)
        grafts: dict[tuple[str, str, str], list[str]] = {}
        while self._timer_head() <= now:
            _, _, mid = heapq.heappop(self._timers)
            entry = self._missing[mid]
            peer = self._next_announcer(entry)
            if peer is None:
                del self._missing[mid]
                self.given_up += 1
                continue
            entry.tries += 1
            entry.grafted = True
            entry.deadline = now + self._retry_timeout
            self._push_timer(entry.deadline, mid)
            grafts.setdefault((peer, entry.room, entry.origin), []).append(mid)
        for (peer, room, origin), ids in grafts.items():
            self._tree(self._rooms[room], origin).pruned.discard(peer)  # it pushes to us again
            for i in range(0, len(ids), MAX_IDS_PER_FRAME):
                chunk = ids[i : i + MAX_IDS_PER_FRAME]
                self._emit(Graft(room=room, origin=origin, ids=chunk), [peer], sends)
        if now >= self._next_expiry:
            self._expire(now)
        return sends

    def _next_announcer(self, entry: _Missing) -> str | None:
        """The announcer to ask now, in turn; None when all were asked enough or are gone."""
        if entry.tries >= self._max_grafts:
            return None
        state = self._rooms.get(entry.room)
        if state is None:
            return None
        announcers = entry.announcers
        n = len(announcers)
        for k in range(n):
            peer = announcers[(entry.tries + k) % n]
            if peer in state.neighbours:
                return peer
        return None

    # ------------------------------------------------------------------ caches

    def _remember(self, mid: str, now: float) -> None:
        self._seen.add(mid, now)
        if self._seen.next_expiry < self._next_expiry:
            self._next_expiry = self._seen.next_expiry

    def _cache_put(self, mid: str, entry: _Cached, now: float) -> None:
        entry.expires = now + self._cache_ttl
        if entry.expires < self._next_expiry:
            self._next_expiry = entry.expires
        entry.size = len(entry.frame) + CACHE_ENTRY_BYTES
        old = self._cache.pop(mid, None)
        if old is not None:
            self._cache_bytes -= old.size
        self._cache[mid] = entry
        self._cache_bytes += entry.size
        while len(self._cache) > self._max_cached or self._cache_bytes > self._max_cache_bytes:
            _, gone = self._cache.popitem(last=False)
            self._cache_bytes -= gone.size

    def _expire(self, now: float) -> None:
        """Forget seen ids and cached payloads from the oldest until one is still fresh."""
        seen = self._seen
        seen.expire(now)
        cache = self._cache
        while cache:
            oldest = next(iter(cache))
            entry = cache[oldest]
            if entry.expires > now:
                break
            cache.popitem(last=False)
            self._cache_bytes -= entry.size
        nxt = seen.next_expiry
        if cache:
            nxt = min(nxt, cache[next(iter(cache))].expires)
        self._next_expiry = nxt
