"""Catch-up and anti-entropy between neighbours, per room, as pure decisions; and who may see
history (``visible_from``).

**The exchange.** When a link starts serving a room (login, a new mesh link, a repair), each
side sends ``sync_digest``: 128 bits of BLAKE2b over its summary of the room (per stream:
origin, key, ``high``, ranges held above it). Equal digests end it there: about 170 bytes for
the two frames, whatever the room's size. On a mismatch each side answers with its summary
(``sync_summary``, paged), and each asks the other (``sync_request``) for the seq ranges the
other's summary covers and its own does not; the answer (``sync_batch``) carries the messages
with their signatures, and per stream a ``done`` mark for what was asked but is out of the
answerer's reach (pruned, or not for the asker); the asker applies it only up to the stream's
highest message whose signature it checked, so no neighbour can make it refuse an origin's
real messages. So a member who was away gets what it missed in 2 round trips: digests,
summaries, request, batch.

**Why per-stream sequence numbers rather than range-based set reconciliation.** Messages
already carry a contiguous seq per stream, so a stream's holdings are one number almost always
(ranges only around a gap): a summary is about 80 bytes per stream, and a difference is a seq
range, named exactly in one request. Negentropy-style reconciliation over message ids finds a
difference of 1,000 messages in about log16(n) rounds of fingerprints and then names every id;
here the difference is found in one round and named in a few bytes per stream. The digest in
front keeps the common case (nothing missing) at a constant, small cost. The price: a summary
grows with the number of streams (about 10 KB for 100 active senders), paid only on mismatch.

**Who asks whom.** The asking side decides (pull): it knows exactly what it lacks, and with
several neighbours it asks each range of one of them only (ranges in flight are not asked
again), so catching up at a login with six neighbours does not bring every message six times.
An answer that stops at a bound is continued by a new request; a request unanswered within
``request_timeout`` is released and its ranges asked of another neighbour whose summary has
them.

**Bounds.** An answer to one request: ``page_messages`` messages, ``page_bytes`` bytes and
``max_ranges_served`` ranges examined, in frames of at most ``frame_bytes``. What a neighbour
may make us do: a bucket of bytes per neighbour (``bucket_bytes``, refilled at
``refill_bytes`` a second), charged before any work: a digest its fixed cost plus our
summary's size, a summary page per stream, a request the whole page it may cost (the unused
part is given back). A request the bucket cannot pay is
answered ``refused: busy`` with the wait. What we hold for neighbours: their summaries (at most
``max_summary_streams`` a room, ``max_held_streams`` in all, oldest dropped), at most
``max_asks`` requests in flight per neighbour and room. The responder holds nothing between
frames: it answers a request at once.

**Access** (``visible_from``): nothing is ever served to a non-member (as the registry lists
the room's members now), so a removed member gets nothing after removal. A member gets what
was said since it was added (the registry's ``since``, less ``clock_skew`` for clocks that
disagree a little). In a public room, a member also gets the room's recent history: its last
``public_backlog`` messages (100), none older than ``public_backlog_age`` (7 days). Why: in a
private room the owner chose who hears what, from the moment they were added; a public room
can be joined by anyone at any time, so its recent past is no secret worth keeping, and a
newcomer needs some context; the count keeps the cost of a join small, the age keeps drive-by
joiners from reading a public room's whole past. Age goes by the message's ``at`` (its
timestamp, or when it was stored if that was earlier).
"""

from __future__ import annotations

import base64
import heapq
import itertools
import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import msgspec

from p2pchat.peer.history import (
    Added,
    History,
    Range,
    StoredMessage,
    StreamHead,
    StreamKey,
    contains,
    subtract,
    summary_digest,
    union,
)
from p2pchat.protocol.framing import MAX_FRAME
from p2pchat.protocol.messages import (
    MAX_SYNC_MESSAGES,
    MAX_SYNC_RANGES,
    MAX_SYNC_STREAMS,
    Message,
    SyncBatch,
    SyncDigest,
    SyncEntry,
    SyncFrame,
    SyncRequest,
    SyncStream,
    SyncStreamBatch,
    SyncSummary,
    SyncWant,
    encode,
    text_size_ok,
)

# ---------------------------------------------------------------- encodings


def b64(data: bytes) -> str:
    """base64url without padding (keys, signatures, digests on the wire)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def entry(msg: StoredMessage) -> SyncEntry:
    return SyncEntry(id=msg.id, seq=msg.seq, ts=msg.ts, text=msg.text, sig=b64(msg.sig))


def stored(room: str, origin: str, key: bytes, e: SyncEntry) -> StoredMessage:
    return StoredMessage(room, origin, key, e.id, e.seq, e.ts, e.text, unb64(e.sig))


def wire_stream(head: StreamHead) -> SyncStream:
    return SyncStream(origin=head.origin, key=b64(head.key), high=head.high, extra=list(head.extra))


def _prefix(ranges: Sequence[Range]) -> int:
    """The highest h such that ranges cover every seq from 1 to h (0 if none)."""
    return ranges[0][1] if ranges and ranges[0][0] <= 1 else 0


def _sorted_ranges(ranges: Iterable[Sequence[int]]) -> list[Range] | None:
    """Ranges as sent, if ascending, disjoint and each ``lo <= hi``; else None."""
    out: list[Range] = []
    for lo, hi in ranges:
        if lo > hi or (out and lo <= out[-1][1]):
            return None
        out.append((lo, hi))
    return out


# ---------------------------------------------------------------- access


@dataclass(frozen=True, slots=True)
class Access:
    """What the room's member list (the registry's) says of the user asking."""

    member: bool
    since: float | None = None
    """When they were added (wall clock); None if the registry did not say."""
    public: bool = False


@dataclass(frozen=True, slots=True)
class Policy:
    public_backlog: int = 100
    public_backlog_age: float = 7 * 86400.0
    clock_skew: float = 5.0


def visible_from(
    access: Access, now: float, backlog_floor: float | None, policy: Policy | None = None
) -> float | None:
    """The oldest ``at`` that may be served to the asker (wall clock ``now``); None: nothing.

    ``backlog_floor``: the ``at`` of the room's ``public_backlog``-th most recent message held
    (None if fewer are held), used in public rooms. A member whose ``since`` is unknown gets
    what is said from now on (and a public room's backlog): unknown is not "always".
    """
    policy = policy or Policy()
    if not access.member:
        return None
    since = now if access.since is None else access.since
    floor = since - policy.clock_skew
    if access.public:
        backlog = -math.inf if backlog_floor is None else backlog_floor
        floor = min(floor, max(backlog, now - policy.public_backlog_age))
    return floor


# ---------------------------------------------------------------- the engine


@dataclass(frozen=True, slots=True)
class SyncConfig:
    page_messages: int = 2000
    """Most messages in the answer to one request."""
    page_bytes: int = 1 << 20
    """Most bytes of frames in the answer to one request."""
    frame_bytes: int = 60_000
    """Largest frame we build (the framing bound is 64 KiB)."""
    request_timeout: float = 10.0
    bucket_bytes: int = 4 << 20
    refill_bytes: float = 1 << 20
    """A neighbour's bucket (bytes of work, refilled per second)."""
    digest_cost: int = 256
    stream_cost: int = 128
    """Charged per stream of a summary received or sent."""
    max_summary_streams: int = 2000
    max_held_streams: int = 50_000
    max_asks: int = 4
    max_ranges_served: int = 1024
    """Ranges examined in answer to one request (one indexed query each, at least);
    beyond, the answer is ``truncated``."""
    max_retry: float = 30.0
    """A ``retry_after`` longer than this is taken as this."""

    def __post_init__(self) -> None:
        if not 1024 <= self.frame_bytes <= MAX_FRAME - 1024:
            raise ValueError(f"frame_bytes must be 1024 to {MAX_FRAME - 1024}")
        if self.page_bytes < self.frame_bytes or self.page_messages < 1:
            raise ValueError("a page holds at least one frame and one message")
        if self.bucket_bytes < self.page_bytes:
            raise ValueError("the bucket must hold at least one page")


@dataclass(frozen=True, slots=True)
class Send:
    peer: str
    frame: bytes


@dataclass(slots=True)
class Outcome:
    """What to do after an input: send ``sends``; show ``caught`` (new messages that came by
    catch-up, with what ``History.add`` said, for ``OrderBuffer.push(history=True)``); tell the
    order buffer of ``skipped`` streams (``OrderBuffer.skip``)."""

    sends: list[Send] = field(default_factory=list)
    caught: list[tuple[StoredMessage, Added, str]] = field(default_factory=list)
    """(message, what ``add`` returned, the neighbour it came from)."""
    skipped: list[tuple[StreamKey, int]] = field(default_factory=list)


_CHUNK = 256
"""Messages read from the history at a time while answering."""

_Stream = tuple[str, bytes]
"""(origin, key) within a room."""


@dataclass(slots=True, eq=False)
class _Ask:
    id: int
    peer: str
    room: str
    wants: dict[_Stream, list[Range]]
    deadline: float
    progress: bool = False


@dataclass(slots=True, eq=False)
class _Session:
    """One neighbour in one room."""

    room: str
    peer: str
    sent_summary: bool = False
    pages: list[SyncStream] = field(default_factory=list)
    theirs: dict[_Stream, StreamHead] | None = None
    tried: dict[_Stream, list[Range]] = field(default_factory=dict)
    """Ranges this neighbour has answered in this round: not asked of it again."""
    asks: dict[int, _Ask] = field(default_factory=dict)
    retry_at: float | None = None


@dataclass(slots=True)
class _Bucket:
    tokens: float
    last: float


@dataclass(slots=True)
class SyncStats:
    frames_out: int = 0
    bytes_out: int = 0
    messages_out: int = 0
    messages_in: int = 0
    rejected: int = 0
    """Messages in batches that were not asked for, malformed, or failed ``accept``."""
    throttled: int = 0
    refused: int = 0
    """Frames from peers that are not members of the room."""
    timeouts: int = 0


class Sync:
    """One peer's catch-up with its neighbours, every room.

    ``access(room, peer)`` says what the registry lists of ``peer`` in ``room`` (``Access``);
    a room we are not in is ``Access(False)``. ``accept(message)`` checks a message that came
    by catch-up before it is kept (its signature, with a key that is the origin's). ``now``
    arguments are monotonic seconds (timers, buckets); ``wall`` arguments the wall clock
    (policy, the history's ages).
    """

    def __init__(
        self,
        history: History,
        *,
        access: Callable[[str, str], Access],
        accept: Callable[[StoredMessage], bool],
        config: SyncConfig | None = None,
        policy: Policy | None = None,
    ) -> None:
        self.history = history
        self.access = access
        self.accept = accept
        self.config = config or SyncConfig()
        self.policy = policy or Policy()
        self.stats = SyncStats()
        self._sessions: OrderedDict[tuple[str, str], _Session] = OrderedDict()
        """(casefolded room, peer) -> session, least recently given a summary first."""
        self._held_streams = 0
        self._asked: dict[str, dict[_Stream, list[Range]]] = {}
        """Casefolded room -> ranges in flight, over all neighbours."""
        self._buckets: dict[str, _Bucket] = {}
        self._ids = itertools.count(1)
        self._heap: list[tuple[float, int, str, str, int]] = []
        """(when, tie, peer, casefolded room, ask id or 0 for a retry)."""

    # ------------------------------------------------------------------ inputs

    def start(self, room: str, peer: str, now: float) -> list[Send]:
        """Begin a round with ``peer`` for ``room``: on login, on a new link that serves the
        room, after a repair. Sends our digest."""
        if not self.access(room, peer).member:
            return []
        sess = self._session(room, peer)
        self._new_round(sess)
        digest, streams = self.history.digest(room)
        return [self._frame(peer, SyncDigest(room=room, digest=b64(digest), streams=streams))]

    def receive(self, peer: str, msg: SyncFrame, now: float, wall: float) -> Outcome:
        """A sync frame from ``peer``."""
        out = Outcome()
        access = self.access(msg.room, peer)
        if not access.member:
            self.stats.refused += 1
            if isinstance(msg, SyncRequest):
                out.sends.append(
                    self._frame(
                        peer,
                        SyncBatch(
                            room=msg.room,
                            id=msg.id,
                            refused="not_member",
                            retry_after=self.config.max_retry,
                        ),
                    )
                )
            return out
        if isinstance(msg, SyncDigest):
            self._on_digest(peer, msg, now, out)
        elif isinstance(msg, SyncSummary):
            self._on_summary(peer, msg, now, out)
        elif isinstance(msg, SyncRequest):
            self._on_request(peer, msg, access, now, wall, out)
        else:
            self._on_batch(peer, msg, now, wall, out)
        return out

    def ask(
        self, room: str, peer: str, origin: str, key: bytes, ranges: Sequence[Range], now: float
    ) -> list[Send]:
        """Ask ``peer`` for seqs of one stream at once (the order buffer's ``Missing``), less
        what is held or asked already."""
        if not self.access(room, peer).member:
            return []
        sess = self._session(room, peer)
        want = self._lacking(room, {(origin, key): StreamHead(origin, key, 0, tuple(ranges))})
        return self._request(sess, want, now)

    def link_down(self, peer: str, now: float) -> list[Send]:
        """The link to ``peer`` is gone: forget its sessions; ask others for what it owed."""
        rooms: list[str] = []
        for key in [k for k in self._sessions if k[1] == peer]:
            sess = self._sessions.pop(key)
            self._drop_theirs(sess)
            for ask in list(sess.asks.values()):
                self._release(ask)
            rooms.append(sess.room)
        self._buckets.pop(peer, None)
        sends: list[Send] = []
        for room in rooms:
            sends += self._replan(room, now)
        return sends

    def room_left(self, room: str) -> None:
        """We left ``room`` (or were removed): forget every session of it."""
        folded = room.casefold()
        for key in [k for k in self._sessions if k[0] == folded]:
            sess = self._sessions.pop(key)
            self._drop_theirs(sess)
        self._asked.pop(folded, None)

    def next_deadline(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def timer(self, now: float) -> list[Send]:
        """Requests unanswered in time are asked of another neighbour; refused ones again."""
        sends: list[Send] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, peer, folded, ask_id = heapq.heappop(heap)
            sess = self._sessions.get((folded, peer))
            if sess is None:
                continue
            if ask_id:
                ask = sess.asks.pop(ask_id, None)
                if ask is not None:
                    self.stats.timeouts += 1
                    self._release(ask)
                    sends += self._replan(sess.room, now, exclude=peer)
            elif sess.retry_at is not None and sess.retry_at <= now:
                sess.retry_at = None
                want = self._lacking(sess.room, sess.theirs or {}, sess.tried)
                sends += self._request(sess, want, now)
        return sends

    # ------------------------------------------------------------------ handlers

    def _on_digest(self, peer: str, msg: SyncDigest, now: float, out: Outcome) -> None:
        sess = self._session(msg.room, peer)
        self._new_round(sess)
        digest, streams = self.history.digest(msg.room)
        if b64(digest) == msg.digest:
            return
        cost = self.config.digest_cost + streams * self.config.stream_cost
        if not self._charge(peer, cost, now):
            return
        out.sends += self._summary(sess)

    def _on_summary(self, peer: str, msg: SyncSummary, now: float, out: Outcome) -> None:
        if not self._charge(peer, len(msg.streams) * self.config.stream_cost, now):
            return
        sess = self._session(msg.room, peer)
        room_cap = self.config.max_summary_streams - len(sess.pages)
        sess.pages += msg.streams[: max(0, room_cap)]
        if msg.more:
            return
        pages, sess.pages = sess.pages, []
        theirs: dict[_Stream, StreamHead] = {}
        for s in pages:
            extra = _sorted_ranges(s.extra)
            if extra is None:
                continue
            key = unb64(s.key)
            theirs[(s.origin, key)] = StreamHead(s.origin, key, s.high, tuple(extra))
        self._hold_theirs(sess, theirs)
        sess.tried = {}
        out.sends += self._request(sess, self._lacking(sess.room, theirs), now)
        if not sess.sent_summary:
            ordered = [theirs[k] for k in sorted(theirs)]
            if summary_digest(ordered) != self.history.digest(sess.room)[0]:
                out.sends += self._summary(sess)

    def _on_request(
        self, peer: str, msg: SyncRequest, access: Access, now: float, wall: float, out: Outcome
    ) -> None:
        cfg = self.config
        if not self._charge(peer, cfg.page_bytes, now):
            wait = min(cfg.max_retry, cfg.page_bytes / cfg.refill_bytes)
            reply = SyncBatch(room=msg.room, id=msg.id, refused="busy", retry_after=wait)
            out.sends.append(self._frame(peer, reply))
            return
        backlog = None
        if access.public:
            backlog = self.history.recent_floor(msg.room, self.policy.public_backlog)
        floor = visible_from(access, wall, backlog, self.policy)
        assert floor is not None  # a member
        frames = self._serve(peer, msg, floor)
        used = sum(len(f.frame) for f in frames)
        self._refund(peer, cfg.page_bytes - used)
        out.sends += frames

    def _on_batch(self, peer: str, msg: SyncBatch, now: float, wall: float, out: Outcome) -> None:
        sess = self._sessions.get((msg.room.casefold(), peer))
        ask = None if sess is None else sess.asks.get(msg.id)
        if sess is None or ask is None:
            self.stats.rejected += sum(len(s.msgs) for s in msg.streams)
            return
        if msg.refused is not None:
            del sess.asks[msg.id]
            self._release(ask)
            wait = min(self.config.max_retry, msg.retry_after or self.config.max_retry)
            sess.retry_at = now + wait
            heapq.heappush(self._heap, (now + wait, next(self._ids), peer, sess.room.casefold(), 0))
            return
        room = sess.room
        for part in msg.streams:
            key = unb64(part.key)
            asked = ask.wants.get((part.origin, key))
            if asked is None:
                self.stats.rejected += len(part.msgs)
                continue
            good: list[StoredMessage] = []
            for e in part.msgs:
                m = stored(room, part.origin, key, e)
                if contains(asked, e.seq) and text_size_ok(e.text) and self.accept(m):
                    good.append(m)
                else:
                    self.stats.rejected += 1
            if good:
                self.stats.messages_in += len(good)
                for m, added in zip(good, self.history.add_many(good, wall), strict=True):
                    if added is not None:
                        out.caught.append((m, added, peer))
                        ask.progress = True
            if part.done:
                # Done only over what we hold or asked this neighbour for (a hole between its
                # ranges may be in flight from another neighbour), and never beyond the
                # stream's highest signed message we have seen: a neighbour's word alone
                # must not make us refuse an origin's real messages.
                head = self.history.head(room, part.origin, key)
                held = head.ranges if head is not None else []
                top = self.history.top(room, part.origin, key)
                done = min(part.done, _prefix(union(held, asked)), top)
                if done and self.history.skip(room, part.origin, key, done, wall):
                    out.skipped.append(((room.casefold(), part.origin, key), done))
                    ask.progress = True
        if msg.more:
            return
        del sess.asks[msg.id]
        self._release(ask)
        if not msg.truncated:  # answered in full: not asked of this neighbour again
            for k, ranges in ask.wants.items():
                sess.tried[k] = union(sess.tried.get(k, []), ranges)
        if sess.theirs and (ask.progress or not msg.truncated):
            out.sends += self._request(sess, self._lacking(room, sess.theirs, sess.tried), now)

    # ------------------------------------------------------------------ asking

    def _lacking(
        self,
        room: str,
        theirs: dict[_Stream, StreamHead],
        tried: dict[_Stream, list[Range]] | None = None,
    ) -> dict[_Stream, list[Range]]:
        """What ``theirs`` covers that we neither hold, nor have asked for, nor ``tried``."""
        if not theirs:
            return {}
        mine = {(h.origin, h.key): h.ranges for h in self.history.summary(room)}
        asked = self._asked.get(room.casefold(), {})
        want: dict[_Stream, list[Range]] = {}
        for k in sorted(theirs):
            lack = subtract(theirs[k].ranges, mine.get(k, []))
            for other in (asked, tried or {}):
                if lack and k in other:
                    lack = subtract(lack, other[k])
            if lack:
                want[k] = lack
        return want

    def _request(self, sess: _Session, want: dict[_Stream, list[Range]], now: float) -> list[Send]:
        """Requests for ``want`` (each in a frame), as many as ``max_asks`` allows."""
        sends: list[Send] = []
        cfg = self.config
        items = list(want.items())
        while items and len(sess.asks) < cfg.max_asks:
            wants: list[SyncWant] = []
            taken: dict[_Stream, list[Range]] = {}
            size = 120
            while items and len(wants) < MAX_SYNC_STREAMS:
                (origin, key), ranges = items[0]
                ranges = ranges[:MAX_SYNC_RANGES]
                w = SyncWant(origin=origin, key=b64(key), ranges=list(ranges))
                cost = len(msgspec.json.encode(w)) + 1
                if wants and size + cost > cfg.frame_bytes:
                    break
                items.pop(0)
                wants.append(w)
                taken[(origin, key)] = ranges
                size += cost
            ask_id = next(self._ids)
            ask = _Ask(ask_id, sess.peer, sess.room, taken, now + cfg.request_timeout)
            sess.asks[ask_id] = ask
            asked = self._asked.setdefault(sess.room.casefold(), {})
            for k, ranges in taken.items():
                asked[k] = union(asked.get(k, []), ranges)
            heapq.heappush(
                self._heap, (ask.deadline, ask_id, sess.peer, sess.room.casefold(), ask_id)
            )
            sends.append(
                self._frame(sess.peer, SyncRequest(room=sess.room, id=ask_id, wants=wants))
            )
        return sends

    def _release(self, ask: _Ask) -> None:
        asked = self._asked.get(ask.room.casefold())
        if asked is None:
            return
        for k, ranges in ask.wants.items():
            left = subtract(asked.get(k, []), ranges)
            if left:
                asked[k] = left
            else:
                asked.pop(k, None)
        if not asked:
            del self._asked[ask.room.casefold()]

    def _replan(self, room: str, now: float, exclude: str | None = None) -> list[Send]:
        """Ask the neighbours whose summaries we hold for what is still lacking."""
        sends: list[Send] = []
        folded = room.casefold()
        for (r, peer), sess in list(self._sessions.items()):
            if r == folded and peer != exclude and sess.theirs:
                sends += self._request(sess, self._lacking(room, sess.theirs, sess.tried), now)
        return sends

    # ------------------------------------------------------------------ answering

    def _summary(self, sess: _Session) -> list[Send]:
        sess.sent_summary = True
        heads = self.history.summary(sess.room)
        pages: list[list[SyncStream]] = [[]]
        size = 120
        for head in heads:
            s = wire_stream(head)
            cost = len(msgspec.json.encode(s)) + 1
            if pages[-1] and (
                size + cost > self.config.frame_bytes or len(pages[-1]) >= MAX_SYNC_STREAMS
            ):
                pages.append([])
                size = 120
            pages[-1].append(s)
            size += cost
        last = len(pages) - 1
        return [
            self._frame(sess.peer, SyncSummary(room=sess.room, streams=p, more=i < last))
            for i, p in enumerate(pages)
        ]

    def _serve(self, peer: str, msg: SyncRequest, floor: float) -> list[Send]:
        """The answer to a request: what it asks, as far as we hold it and ``floor`` allows,
        within the page bounds. Messages are read a chunk at a time (the age filter runs in
        SQLite), so what is held in memory stays near one page."""
        cfg = self.config
        room = msg.room
        frames: list[SyncBatch] = []
        parts: list[SyncStreamBatch] = []
        size = 150
        sent_bytes = sent_msgs = 0
        ranges_left = cfg.max_ranges_served
        truncated = False

        def start_part(origin: str, key: bytes) -> SyncStreamBatch:
            nonlocal size
            part = SyncStreamBatch(origin=origin, key=b64(key))
            parts.append(part)
            size += 160
            return part

        for w in msg.wants:
            ranges = _sorted_ranges(w.ranges)
            if ranges is None:
                continue
            key = unb64(w.key)
            head = self.history.head(room, w.origin, key)
            if head is None:
                continue
            part = start_part(w.origin, key)
            last = 0  # the last seq of this stream examined in full
            for lo, hi in ranges:
                if ranges_left == 0:
                    truncated = True
                    break
                ranges_left -= 1
                nxt = lo
                while nxt <= hi and not truncated:
                    chunk = self.history.stream_range(
                        room, w.origin, key, nxt, hi, min(_CHUNK, cfg.page_messages + 1), floor
                    )
                    for m in chunk:
                        e = entry(m)
                        cost = len(msgspec.json.encode(e)) + 1
                        full = sent_msgs >= cfg.page_messages
                        if full or sent_bytes + size + cost > cfg.page_bytes:
                            truncated = True
                            break
                        if size + cost > cfg.frame_bytes or len(part.msgs) >= MAX_SYNC_MESSAGES:
                            frames.append(SyncBatch(room=room, id=msg.id, streams=parts, more=True))
                            sent_bytes += size
                            parts, size = [], 150
                            part = start_part(w.origin, key)
                        part.msgs.append(e)
                        size += cost
                        sent_msgs += 1
                        last = m.seq
                    if truncated or len(chunk) < min(_CHUNK, cfg.page_messages + 1):
                        break
                    nxt = chunk[-1].seq + 1
                if truncated:
                    break
                last = hi
            part.done = min(last, head.high)
            if truncated:
                break
        parts = [p for p in parts if p.msgs or p.done]
        frames.append(SyncBatch(room=room, id=msg.id, streams=parts, truncated=truncated))
        self.stats.messages_out += sent_msgs
        return [self._frame(peer, f) for f in frames]

    # ------------------------------------------------------------------ bookkeeping

    @staticmethod
    def _new_round(sess: _Session) -> None:
        sess.sent_summary = False
        sess.pages = []
        sess.tried = {}

    def _session(self, room: str, peer: str) -> _Session:
        key = (room.casefold(), peer)
        sess = self._sessions.get(key)
        if sess is None:
            sess = self._sessions[key] = _Session(room, peer)
        return sess

    def _hold_theirs(self, sess: _Session, theirs: dict[_Stream, StreamHead]) -> None:
        self._drop_theirs(sess)
        sess.theirs = theirs
        self._held_streams += len(theirs)
        self._sessions.move_to_end((sess.room.casefold(), sess.peer))
        for other in list(self._sessions.values()):
            if self._held_streams <= self.config.max_held_streams:
                break
            if other is not sess:
                self._drop_theirs(other)

    def _drop_theirs(self, sess: _Session) -> None:
        if sess.theirs is not None:
            self._held_streams -= len(sess.theirs)
            sess.theirs = None

    def _charge(self, peer: str, cost: float, now: float) -> bool:
        cfg = self.config
        b = self._buckets.get(peer)
        if b is None:
            b = self._buckets[peer] = _Bucket(cfg.bucket_bytes, now)
        b.tokens = min(cfg.bucket_bytes, b.tokens + (now - b.last) * cfg.refill_bytes)
        b.last = now
        if b.tokens < cost:
            self.stats.throttled += 1
            return False
        b.tokens -= cost
        return True

    def _refund(self, peer: str, amount: float) -> None:
        b = self._buckets.get(peer)
        if b is not None and amount > 0:
            b.tokens = min(self.config.bucket_bytes, b.tokens + amount)

    def _frame(self, peer: str, msg: Message) -> Send:
        frame = encode(msg)
        self.stats.frames_out += 1
        self.stats.bytes_out += len(frame)
        return Send(peer, frame)
