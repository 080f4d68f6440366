"""Per-sender order: each stream's messages shown in seq order, gaps held back briefly.

Messages of one origin can take different paths through the mesh and overtake each other; a
receiver shows a stream (one origin, one room, one key) in the order of its sequence numbers.
A message whose predecessor has not arrived is *held*: after ``ask_after`` seconds the buffer
names the missing seqs (``Missing``) so that the caller can ask a neighbour for them
(``Sync.ask``); after ``hold`` seconds it gives up and shows what it holds anyway, the first
message after each hole marked ``gap``. A message of a hole given up on that arrives later is
shown then, marked ``late``. Nothing is shown twice: per stream the buffer knows the next seq
to show, the seqs held, and the holes given up on (the most recent ``max_late`` of them).

A stream the buffer has not met yet starts where the history stood before the message came
(``Added``: its ``prev_top``), so that after a restart or a login the catch-up's messages are
shown first, marked history, and the live ones after them.

Bounded: messages held (count and bytes, all streams together: beyond, the stream whose hole
is oldest is given up at once) and streams known (least recently used forgotten, giving up
whatever they held). Pure: the caller passes ``now`` (monotonic) and calls ``timer`` at
``next_deadline()``.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import OrderedDict
from dataclasses import dataclass, field

from p2pchat.peer.history import (
    Added,
    Range,
    StoredMessage,
    StreamKey,
    contains,
    subtract,
    to_ranges,
    union,
)


@dataclass(frozen=True, slots=True)
class Shown:
    """A message to show now, in this order.

    ``history``: it came through catch-up (print ``* history of ROOM`` before a run of them).
    ``gap``: earlier messages of its stream were given up on (mark that something was
    missed). ``late``: it fills a hole given up on, after later messages were shown.
    """

    msg: StoredMessage
    history: bool = False
    gap: bool = False
    late: bool = False


@dataclass(frozen=True, slots=True)
class Missing:
    """Seqs of a stream that are held back for: ask ``via`` (the neighbour that brought the
    message waiting for them; None if unknown) or any neighbour in the room."""

    room: str
    origin: str
    key: bytes
    ranges: tuple[Range, ...]
    via: str | None


@dataclass(slots=True)
class Release:
    shown: list[Shown] = field(default_factory=list)
    missing: list[Missing] = field(default_factory=list)


@dataclass(slots=True, eq=False)
class _Held:
    msg: StoredMessage
    history: bool
    via: str | None
    since: float
    size: int


@dataclass(slots=True, eq=False)
class _Stream:
    next: int
    """The next seq to show."""
    held: dict[int, _Held] = field(default_factory=dict)
    late: list[Range] = field(default_factory=list)
    """Seqs below ``next`` not shown: holes given up on, that may still come."""
    since: float = math.inf
    """When the oldest message held arrived."""
    asked: bool = False


def _size(msg: StoredMessage) -> int:
    return len(msg.text) * 4 + 256


class OrderBuffer:
    """Orders every stream of every room of one peer; see the module's docstring."""

    def __init__(
        self,
        *,
        hold: float = 3.0,
        ask_after: float = 0.5,
        max_held: int = 1000,
        max_held_bytes: int = 1 << 20,
        max_streams: int = 10_000,
        max_late: int = 16,
    ) -> None:
        if not 0 <= ask_after <= hold:
            raise ValueError("ask_after must be between 0 and hold")
        if min(max_held, max_held_bytes, max_streams, max_late) < 1:
            raise ValueError("bounds must be at least 1")
        self.hold = hold
        self.ask_after = ask_after
        self.max_held = max_held
        self.max_held_bytes = max_held_bytes
        self.max_streams = max_streams
        self.max_late = max_late
        self._streams: OrderedDict[StreamKey, _Stream] = OrderedDict()
        self._heap: list[tuple[float, int, StreamKey]] = []
        self._tie = itertools.count()
        self.held = 0
        self.held_bytes = 0
        self.gaps = 0
        """Holes given up on (each shown with a ``gap`` mark)."""
        self.duplicates = 0

    # ------------------------------------------------------------------ input

    def push(
        self,
        msg: StoredMessage,
        now: float,
        *,
        history: bool = False,
        via: str | None = None,
        before: Added | None = None,
    ) -> Release:
        """A message new to this peer (live, or ``history`` from catch-up). ``before`` is what
        ``History.add`` returned for it: where its stream stood (used when the buffer meets the
        stream for the first time; without it the stream starts at this message)."""
        out = Release()
        key = msg.stream
        st = self._streams.get(key)
        if st is None:
            st = self._meet(key, msg.seq, before, out)
        else:
            self._streams.move_to_end(key)
        self._place(key, st, _Held(msg, history, via, now, _size(msg)), now, out)
        return out

    def skip(self, stream: StreamKey, upto: int, now: float) -> Release:
        """Seqs up to ``upto`` of ``stream`` will not come (out of reach): stop waiting."""
        out = Release()
        st = self._streams.get(stream)
        if st is None:
            return out
        st.late = subtract(st.late, [(1, upto)])
        for seq in sorted(s for s in st.held if s <= upto):
            self._show(st, seq, out, gap=False)
        st.next = max(st.next, upto + 1)
        self._drain(stream, st, now, out)
        return out

    def timer(self, now: float) -> Release:
        out = Release()
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, key = heapq.heappop(heap)
            st = self._streams.get(key)
            if st is None or not st.held:
                continue
            due = self._due(st)
            if due > now:
                self._arm(key, st)
            elif not st.asked:
                st.asked = True
                out.missing.append(self._missing(key, st))
                self._arm(key, st)
            else:
                self._give_up(st, out)
        return out

    def next_deadline(self) -> float | None:
        heap, streams = self._heap, self._streams
        while heap:
            when, _, key = heap[0]
            st = streams.get(key)
            if st is not None and st.held and self._due(st) <= when:
                return when
            heapq.heappop(heap)
            if st is not None and st.held:
                self._arm(key, st)
        return None

    def forget_room(self, room: str) -> Release:
        """We left ``room``: show what was held of it, and forget its streams."""
        out = Release()
        folded = room.casefold()
        for key in [k for k in self._streams if k[0] == folded]:
            st = self._streams.pop(key)
            self._give_up(st, out)
        return out

    # ------------------------------------------------------------------ inside

    def _meet(self, key: StreamKey, seq: int, before: Added | None, out: Release) -> _Stream:
        if before is None:
            st = _Stream(next=seq)
        else:
            st = _Stream(next=before.prev_top + 1)
            if before.prev_top > before.prev_high:  # holes the history had: may come late
                st.late = [(before.prev_high + 1, before.prev_top)]
        while len(self._streams) >= self.max_streams:
            _, old = self._streams.popitem(last=False)
            self._give_up(old, out)
        self._streams[key] = st
        return st

    def _place(self, key: StreamKey, st: _Stream, item: _Held, now: float, out: Release) -> None:
        seq = item.msg.seq
        if seq < st.next:
            if contains(st.late, seq):
                st.late = subtract(st.late, [(seq, seq)])
                out.shown.append(Shown(item.msg, item.history, late=True))
            else:
                self.duplicates += 1
        elif seq in st.held:
            self.duplicates += 1
        elif seq == st.next:
            out.shown.append(Shown(item.msg, item.history))
            st.next += 1
            self._drain(key, st, now, out)
        else:
            if not self._room_for(item.size, st, out):
                self._place(key, st, item, now, out)  # our own stream was given up: again
                return
            first = not st.held
            st.held[seq] = item
            self.held += 1
            self.held_bytes += item.size
            if first:
                st.since, st.asked = item.since, False
                self._arm(key, st)

    def _room_for(self, size: int, st: _Stream, out: Release) -> bool:
        """Give up the streams with the oldest holes until one more message fits; False if
        ``st`` itself was given up."""
        while self.held + 1 > self.max_held or self.held_bytes + size > self.max_held_bytes:
            victim = min((s for s in self._streams.values() if s.held), key=lambda s: s.since)
            self._give_up(victim, out)
            if victim is st:
                return False
        return True

    def _drain(self, key: StreamKey, st: _Stream, now: float, out: Release) -> None:
        """Show what is held from ``next`` on, in order, while it is contiguous."""
        while st.next in st.held:
            self._show(st, st.next, out, gap=False)
        if st.held:
            st.since = min(h.since for h in st.held.values())
            st.asked = False
            self._arm(key, st)
        else:
            st.since = math.inf

    def _show(self, st: _Stream, seq: int, out: Release, gap: bool) -> None:
        item = st.held.pop(seq)
        self.held -= 1
        self.held_bytes -= item.size
        out.shown.append(Shown(item.msg, item.history, gap=gap))
        st.next = max(st.next, seq + 1)

    def _give_up(self, st: _Stream, out: Release) -> None:
        """Show everything held, in order, marking the first message after each hole."""
        for seq in sorted(st.held):
            hole = seq > st.next
            if hole:
                self.gaps += 1
                st.late = union(st.late, [(st.next, seq - 1)])[-self.max_late :]
            self._show(st, seq, out, gap=hole)
        st.since = math.inf

    def _missing(self, key: StreamKey, st: _Stream) -> Missing:
        top = max(st.held)
        holes = subtract([(st.next, top)], to_ranges(sorted(st.held)))
        first = st.held[min(st.held)]
        return Missing(first.msg.room, key[1], key[2], tuple(holes), first.via)

    def _due(self, st: _Stream) -> float:
        return st.since + (self.hold if st.asked else self.ask_after)

    def _arm(self, key: StreamKey, st: _Stream) -> None:
        heap = self._heap
        heapq.heappush(heap, (self._due(st), next(self._tie), key))
        if len(heap) > 64 + 4 * self.held:  # mostly stale entries: one per stream holding
            self._heap = [
                (self._due(s), next(self._tie), k) for k, s in self._streams.items() if s.held
            ]
            heapq.heapify(self._heap)
