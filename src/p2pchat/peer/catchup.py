"""One user's room history, catch-up and per-sender order, as the peer core uses them.

``RoomLog`` keeps every room message we send or take in the local history (``history.py``),
catches up with neighbours when a link starts serving a room (``sync.py``), and shows each
sender's messages in the order they were sent (``order.py``), marking what came by catch-up
(history), what arrived late, and where something was missed. It also holds, briefly and
within bounds, the room messages whose sender or origin the registry has not yet told us is a
member (someone who joined a moment ago and spoke at once), until the registry's event says so.

Pure like the core: fed the time, it writes what to send and show through the callables the
core gives it. The history is SQLite, called synchronously like the registry's store: a failing
disk makes a message live-only (shown, not kept), never lost.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from p2pchat.peer.events import Notice, PeerEvent, RoomText
from p2pchat.peer.history import History, HistoryError, StoredMessage
from p2pchat.peer.order import OrderBuffer, Release
from p2pchat.peer.session import Context
from p2pchat.peer.sync import Access, Sync
from p2pchat.protocol.messages import RoomMessage, SyncFrame, unb64

log = logging.getLogger("p2pchat.peer")

PRUNE_EVERY = 3600.0
"""How often old history is pruned and old direct messages expired (simulated seconds too)."""
FLUSH_AFTER = 0.05
"""Live messages are committed to the history in batches, at most this long after the first
(a crash loses at most that much of the history, which catch-up brings back)."""
RELAY_FRESH = 60.0
"""A message caught up that was said less than this long ago is passed on to our other
neighbours as a live one is: its first neighbours may have dropped it (they were joining or
leaving), and links that were up before it was said hold no catch-up that would bring it.
Older gaps wait for a link's next catch-up."""
HOLD_UNKNOWN = 10.0
"""How long a message from someone not yet known as a member waits for the registry's word."""
MAX_UNKNOWN = 500
MAX_UNKNOWN_BYTES = 1 << 20


def stored(msg: RoomMessage, key: bytes) -> StoredMessage:
    return StoredMessage(
        msg.room, msg.origin, key, msg.id, msg.seq, msg.ts, msg.text, unb64(msg.sig)
    )


@dataclass(slots=True, eq=False)
class _Unknown:
    """A room message waiting for its sender (or its origin) to be known as a member."""

    msg: RoomMessage
    via: str
    link: int
    until: float
    size: int


class RoomLog:
    """History, catch-up, order and the wait for unknown members, for one logged-in user."""

    def __init__(
        self,
        ctx: Context,
        history: History,
        *,
        access: Callable[[str, str], Access],
        accept: Callable[[StoredMessage], bool],
        send: Callable[[str, bytes], None],
        show: Callable[[PeerEvent], None],
        neighbours: Callable[[str], Iterable[str]],
        relay: Callable[[StoredMessage, str], None] = lambda entry, via: None,
    ) -> None:
        self._ctx = ctx
        self._relay = relay
        self.history = history
        self.sync = Sync(history, access=access, accept=accept)
        self.order = OrderBuffer()
        self._send = send
        self._show = show
        self._neighbours = neighbours
        self._next_prune = ctx.now + PRUNE_EVERY
        self._flush_at: float | None = None
        """When the live messages kept since the last commit are committed."""
        self._unknown: deque[_Unknown] = deque()
        self._unknown_bytes = 0
        self.dropped_unknown = 0
        """Messages whose sender was never confirmed as a member in time."""

    # ------------------------------------------------------------------ our messages

    def next_seq(self, room: str, me: str, key: bytes) -> int:
        """The seq of our next message in ``room``: one more than the history holds (so it
        goes on across restarts; a new history comes with a new key, a new stream)."""
        try:
            return self.history.top(room, me, key) + 1
        except HistoryError as exc:
            log.warning("history unreadable (%s); numbering from the clock", exc)
            return int(self._ctx.wall * 1000)

    def sent(self, msg: RoomMessage, key: bytes) -> None:
        self._keep([stored(msg, key)])

    # ------------------------------------------------------------------ others' messages

    def received(self, msg: RoomMessage, key: bytes, via: str) -> None:
        """A live message that passed every check: keep it, show it in its sender's order."""
        entry = stored(msg, key)
        try:
            added = self.history.add(entry, self._ctx.wall, batched=True)
        except HistoryError as exc:
            log.warning("cannot keep a message in the history: %s", exc)
            self._show(RoomText(msg.room, msg.origin, msg.text, msg.ts))
            return
        if self._flush_at is None:
            self._flush_at = self._ctx.now + FLUSH_AFTER
        if added is None:  # this stream and seq are known already: a forking origin or replay
            return
        self._release(self.order.push(entry, self._ctx.now, via=via, before=added))

    def frame(self, peer: str, msg: SyncFrame) -> None:
        """A catch-up frame from a neighbour."""
        ctx = self._ctx
        try:
            out = self.sync.receive(peer, msg, ctx.now, ctx.wall)
        except HistoryError as exc:
            log.warning("catch-up with %s stopped: %s", peer, exc)
            return
        for send in out.sends:
            self._send(send.peer, send.frame)
        release = Release()
        fresh = ctx.wall - RELAY_FRESH
        for entry, added, via in out.caught:
            if entry.ts >= fresh:
                self._relay(entry, via)
            got = self.order.push(entry, ctx.now, history=True, via=via, before=added)
            release.shown += got.shown
            release.missing += got.missing
        for stream, upto in out.skipped:
            got = self.order.skip(stream, upto, ctx.now)
            release.shown += got.shown
            release.missing += got.missing
        self._release(release)

    def serves(self, room: str, peer: str) -> None:
        """A link now serves ``room``: compare what each side holds."""
        for send in self.sync.start(room, peer, self._ctx.now):
            self._send(send.peer, send.frame)

    def link_down(self, peer: str) -> None:
        for send in self.sync.link_down(peer, self._ctx.now):
            self._send(send.peer, send.frame)

    def left(self, room: str) -> None:
        self.sync.room_left(room)
        self._release(self.order.forget_room(room))
        kept = deque(u for u in self._unknown if u.msg.room != room)
        self._unknown_bytes = sum(u.size for u in kept)
        self._unknown = kept

    def last(self, room: str, n: int) -> list[RoomText]:
        try:
            found = self.history.last(room, n)
        except HistoryError as exc:
            log.warning("cannot read the history: %s", exc)
            return []
        return [RoomText(m.room, m.origin, m.text, m.ts, history=True) for m in found]

    # ------------------------------------------------------------------ not members yet

    def hold(self, msg: RoomMessage, via: str, link: int) -> bool:
        """Keep ``msg`` until its sender is known as a member; False if there is no room."""
        size = len(msg.text) * 4 + 256
        if len(self._unknown) >= MAX_UNKNOWN or self._unknown_bytes + size > MAX_UNKNOWN_BYTES:
            self.dropped_unknown += 1
            return False
        self._unknown.append(_Unknown(msg, via, link, self._ctx.now + HOLD_UNKNOWN, size))
        self._unknown_bytes += size
        return True

    def known(self, room: str, user: str) -> list[tuple[RoomMessage, int]]:
        """``user`` is now a member of ``room``: the messages held for it, to be taken again
        (with the link each came on)."""
        out, kept = [], deque[_Unknown]()
        for u in self._unknown:
            if u.msg.room == room and user in (u.msg.origin, u.via):
                out.append((u.msg, u.link))
                self._unknown_bytes -= u.size
            else:
                kept.append(u)
        self._unknown = kept
        return out

    # ------------------------------------------------------------------ time

    def next_deadline(self) -> float | None:
        deadlines = [self._next_prune]
        if self._flush_at is not None:
            deadlines.append(self._flush_at)
        for component in (self.sync.next_deadline(), self.order.next_deadline()):
            if component is not None:
                deadlines.append(component)
        if self._unknown:
            deadlines.append(self._unknown[0].until)
        return min(deadlines)

    def timer(self, now: float) -> None:
        ctx = self._ctx
        if self._flush_at is not None and now >= self._flush_at:
            self.flush()
        for send in self.sync.timer(now):
            self._send(send.peer, send.frame)
        self._release(self.order.timer(now))
        while self._unknown and self._unknown[0].until <= now:
            gone = self._unknown.popleft()
            self._unknown_bytes -= gone.size
            self.dropped_unknown += 1
            log.info(
                "dropped a message in %s from %s: never confirmed as a member",
                gone.msg.room,
                gone.msg.origin,
            )
        if now >= self._next_prune:
            self._next_prune = now + PRUNE_EVERY
            try:
                self.history.prune(ctx.wall)
            except HistoryError as exc:
                log.warning("pruning the history failed: %s", exc)

    def flush(self) -> None:
        """Commit the live messages kept since the last flush."""
        self._flush_at = None
        try:
            self.history.flush()
        except HistoryError as exc:
            log.warning("cannot keep the last messages in the history: %s", exc)

    # ------------------------------------------------------------------ inside

    def _keep(self, entries: list[StoredMessage]) -> None:
        try:
            self.history.add_many(entries, self._ctx.wall)
        except HistoryError as exc:
            log.warning("cannot keep a message in the history: %s", exc)

    def _release(self, release: Release) -> None:
        """Show what the order buffer lets go, with a ``history of ROOM`` notice before each
        run of caught-up messages; ask a neighbour for what is missing."""
        in_history: str | None = None
        for shown in release.shown:
            msg = shown.msg
            if shown.history and in_history != msg.room:
                self._show(Notice(f"history of {msg.room}", msg.room))
            in_history = msg.room if shown.history else None
            if shown.gap:
                self._show(
                    Notice(
                        f"some messages from {msg.origin} in {msg.room} did not arrive", msg.room
                    )
                )
            self._show(
                RoomText(
                    msg.room, msg.origin, msg.text, msg.ts, history=shown.history, late=shown.late
                )
            )
        for missing in release.missing:
            via = missing.via
            if via is None:
                via = next(iter(self._neighbours(missing.room)), None)
            if via is None:
                continue
            for send in self.sync.ask(
                missing.room, via, missing.origin, missing.key, missing.ranges, self._ctx.now
            ):
                self._send(send.peer, send.frame)
