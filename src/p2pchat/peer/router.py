"""Flooding of room messages over the mesh, as pure decisions the caller carries out.

No sockets and no clock: the caller passes ``now`` and sends the frames we return, which keeps
the hot path free of I/O and lets tests run a whole network in one loop. A peer shows a message
the first time it sees it and passes it on to its other mesh neighbours; ids it has seen stop
duplicates, and a hop count stops runaways.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable, Container, Iterable
from typing import NamedTuple

from msgspec.structs import replace as _replace

from p2pchat.peer.seen import SeenIds
from p2pchat.protocol.messages import Message, RoomMessage, encode


class Drop(enum.StrEnum):
    """Why a received room message was neither shown nor forwarded; callers may log these."""

    SENDER_NOT_MEMBER = "sender_not_member"
    """The link it came over belongs to someone the registry does not list in the room."""
    ORIGIN_NOT_MEMBER = "origin_not_member"
    """Its author is not listed in the room."""
    DUPLICATE = "duplicate"
    """Already seen (including our own messages coming back); normal, about one per message."""
    OWN_MESSAGE = "own_message"
    """Claims to be ours but we do not remember sending it: forged, or older than the cache."""
    BAD_SIGNATURE = "bad_signature"
    """Its signature is not its origin's (forged or altered on the way), or the origin's key
    is not known. Not remembered: a forged copy must not shut out the real message."""
    RATE_LIMITED = "rate_limited"
    """Its origin sends faster than a room allows one member: remembered, not shown or passed
    on."""
    OVER_BUDGET = "over_budget"
    """The link it came on brings its origin's messages faster than twice that: dropped before
    its signature is checked, and not remembered (the same message may come on another
    link)."""
    BAD_ID = "bad_id"
    """An id that is not 32 lowercase hex digits (tree push)."""
    TOO_MANY_IDS = "too_many_ids"
    """An ``ihave`` or ``graft`` with more than ``MAX_IDS_PER_FRAME`` ids (tree push)."""
    NOT_NEIGHBOUR = "not_neighbour"
    """An ``ihave``, ``graft`` or ``prune`` from a peer that is not our neighbour in the room."""


class Forward(NamedTuple):
    """One frame to send, unchanged, to each of ``targets``."""

    msg: RoomMessage
    frame: bytes
    """``encode(msg)``, encoded once for all targets."""
    targets: list[str]


class Route(NamedTuple):
    """What to do with a received room message.

    ``deliver``: show it. ``forward``: send this on (None when there is nobody to send to or
    the hop limit is reached). ``dropped``: why it was ignored, None unless ``deliver`` is false.
    """

    deliver: bool
    forward: Forward | None
    dropped: Drop | None


# Shared results, so that the common cases allocate nothing.
_DELIVER = Route(True, None, None)
_DUPLICATE = Route(False, None, Drop.DUPLICATE)
_SENDER_NOT_MEMBER = Route(False, None, Drop.SENDER_NOT_MEMBER)
_ORIGIN_NOT_MEMBER = Route(False, None, Drop.ORIGIN_NOT_MEMBER)
_OWN_MESSAGE = Route(False, None, Drop.OWN_MESSAGE)

Signer = Callable[[RoomMessage], str]
"""Gives a message of ours its signature (``sig``)."""
Check = Callable[[RoomMessage], Drop | None]
"""The last word on a new message (its signature, its origin's rate): None to take it, or why
not. ``BAD_SIGNATURE`` and ``OVER_BUDGET`` leave the id unremembered (``FORGETTABLE``)."""
FORGETTABLE = frozenset({Drop.BAD_SIGNATURE, Drop.OVER_BUDGET})
"""Drops that say nothing of the message itself, only of the copy or the link it came on."""


class Send(NamedTuple):
    """One frame to send, unchanged, to each of ``targets``."""

    msg: Message
    frame: bytes
    """``encode(msg)``, encoded once for all targets."""
    targets: list[str]


class Result(NamedTuple):
    """What to do after a received frame: show the room message or not, and send these.

    ``dropped`` says why a frame was ignored (None when it was used; a duplicate payload is
    ``DUPLICATE`` yet may still cause a ``prune`` in ``sends``).
    """

    deliver: bool
    sends: list[Send]
    dropped: Drop | None


class Origination(NamedTuple):
    """A new message of ours: ``msg`` to show locally, ``sends`` to carry out."""

    msg: RoomMessage
    sends: list[Send]


class FloodRouter:
    """One peer's flooding state: the ids it has seen, and counters.

    A message created with ``hops=h`` can reach peers up to ``h + 1`` links from its origin:
    a receiver forwards only while ``hops > 0``, decrementing it. Arriving ``hops`` are capped
    at ``default_hops`` so a peer cannot make its messages travel further than we would.

    The seen cache keeps an id at least ``seen_ttl`` seconds (longer than a message can spend
    in flight, so it cannot come back as new) and at most ``max_seen`` ids (a memory bound under
    a flood of distinct ids, at the price of forgetting the oldest early). ``now`` must not go
    backwards; use a monotonic clock.
    """

    __slots__ = (
        "_hops",
        "_new_id",
        "_seen",
        "delivered",
        "dropped",
        "duplicates",
        "frames_out",
        "me",
    )

    def __init__(
        self,
        me: str,
        *,
        new_id: Callable[[], str] = lambda: os.urandom(16).hex(),
        seen_ttl: float = 120.0,
        max_seen: int = 200_000,
        default_hops: int = 64,
    ) -> None:
        if seen_ttl < 0:
            raise ValueError("seen_ttl must not be negative")
        if max_seen < 1:
            raise ValueError("max_seen must be at least 1")
        if default_hops < 0:
            raise ValueError("default_hops must not be negative")
        self.me = me
        self._new_id = new_id
        self._hops = default_hops
        self._seen = SeenIds(seen_ttl, max_seen)
        self.delivered = 0
        """Messages of others shown."""
        self.duplicates = 0
        """Frames dropped because their id was seen already."""
        self.dropped = 0
        """Frames dropped for any other reason (see ``Drop``)."""
        self.frames_out = 0
        """Frames we asked to send: the sum of ``len(targets)`` over all results."""

    @property
    def seen_size(self) -> int:
        """How many ids the seen cache holds."""
        return len(self._seen)

    def originate(
        self,
        room: str,
        text: str,
        now: float,
        neighbours: Iterable[str],
        *,
        ts: float | None = None,
        seq: int = 1,
        sign: Signer | None = None,
    ) -> Forward:
        """A new message of ours, to send to all our mesh ``neighbours`` in ``room``.

        ``ts`` is the timestamp shown to readers (wall-clock); it defaults to ``now``. ``seq``
        numbers our messages in the room; ``sign`` gives the message its signature. Even with
        no neighbours the message is returned, for the caller to show locally.
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
        self._remember(msg.id, now)
        targets = list(neighbours)
        self.frames_out += len(targets)
        return Forward(msg, encode(msg), targets)

    def receive(
        self,
        msg: RoomMessage,
        from_peer: str,
        now: float,
        neighbours: Iterable[str],
        members: Container[str],
        check: Check | None = None,
    ) -> Route:
        """Decide what to do with ``msg``, received over the link to ``from_peer``.

        ``neighbours`` are our mesh neighbours in ``msg.room``; ``members`` the room's members
        as the registry lists them (a set, ideally: it is probed twice). Never ``None``: a
        dropped message has ``deliver`` false and ``dropped`` set. Membership is checked before
        the seen cache so that outsiders cannot fill it. ``check`` (the signature, the origin's
        rate) runs only for a message not seen yet; a badly signed one is not remembered: a
        forged copy must not shut out the real message that has the same id.
        """
        if from_peer not in members:
            self.dropped += 1
            return _SENDER_NOT_MEMBER
        origin = msg.origin
        if origin not in members:
            self.dropped += 1
            return _ORIGIN_NOT_MEMBER
        seen = self._seen
        if now >= seen.next_expiry:
            seen.expire(now)
        mid = msg.id
        if mid in seen:
            self.duplicates += 1
            return _DUPLICATE
        if origin == self.me:
            self.dropped += 1
            return _OWN_MESSAGE
        if check is not None:
            why = check(msg)
            if why is not None:
                self.dropped += 1
                if why not in FORGETTABLE:
                    seen.add(mid, now)
                return Route(False, None, why)
        seen.add(mid, now)
        self.delivered += 1
        hops = msg.hops
        if hops <= 0:
            return _DELIVER
        targets = [n for n in neighbours if n != from_peer and n != origin]
        if not targets:
            return _DELIVER
        if hops > self._hops:
            hops = self._hops
        out = _replace(msg, hops=hops - 1)  # a copy: the caller's ``msg`` is left alone
        self.frames_out += len(targets)
        return Route(True, Forward(out, encode(out), targets), None)

    def _remember(self, mid: str, now: float) -> None:
        seen = self._seen
        if now >= seen.next_expiry:
            seen.expire(now)
        seen.add(mid, now)


class FloodDesign:
    """A ``FloodRouter`` behind the interface the peer core drives both designs through (the
    one ``TreeRouter`` has): flooding needs no state of its own about neighbours or timers, so
    it reads the room's neighbours from the core when it needs them."""

    __slots__ = ("_neighbours", "router")

    def __init__(self, router: FloodRouter, neighbours: Callable[[str], Iterable[str]]) -> None:
        self.router = router
        self._neighbours = neighbours

    @property
    def me(self) -> str:
        return self.router.me

    @property
    def delivered(self) -> int:
        return self.router.delivered

    @property
    def duplicates(self) -> int:
        return self.router.duplicates

    @property
    def payloads_out(self) -> int:
        return self.router.frames_out

    def neighbour_up(self, room: str, peer: str) -> None:
        pass

    def neighbour_down(self, room: str, peer: str) -> list[Send]:
        return []

    def forget_room(self, room: str) -> None:
        pass

    def next_deadline(self) -> float | None:
        return None

    def on_timer(self, now: float) -> list[Send]:
        return []

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
        targets = list(self._neighbours(room))
        fwd = self.router.originate(room, text, now, targets, ts=ts, seq=seq, sign=sign)
        return Origination(fwd.msg, [Send(fwd.msg, fwd.frame, fwd.targets)] if targets else [])

    def receive(
        self,
        msg: Message,
        from_peer: str,
        now: float,
        members: Container[str],
        check: Check | None = None,
    ) -> Result:
        if type(msg) is not RoomMessage:  # ihave, graft, prune: tree push only
            return Result(False, [], Drop.NOT_NEIGHBOUR)
        assert isinstance(msg, RoomMessage)
        room = self._neighbours(msg.room)
        route = self.router.receive(msg, from_peer, now, room, members, check)
        fwd = route.forward
        sends = [Send(fwd.msg, fwd.frame, fwd.targets)] if fwd is not None else []
        return Result(route.deliver, sends, route.dropped)
