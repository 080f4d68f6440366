"""A peer's view of its rooms: members, who is online and where, kept current by events."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from p2pchat.peer.mesh import RoomMesh
from p2pchat.protocol.messages import MemberInfo, RoomEvent, unb64


@dataclass(slots=True)
class Member:
    online: bool
    host: str | None = None
    port: int | None = None
    key: bytes | None = None
    """The member's current public key, as the registry says: room messages from them are
    checked against it."""
    since: float | None = None


DEPARTED_GRACE = 60.0
"""How long a member who left (or was removed) still counts as the author of messages that
were in flight when they left: a join, a message and a leave typed at once lose nothing."""
CLOCK_SKEW = 5.0
MAX_DEPARTED = 1000


@dataclass(slots=True)
class Departed:
    key: bytes | None
    at: float
    """When we learned they left (wall clock)."""


@dataclass(slots=True)
class RoomView:
    name: str
    """As the registry spells it."""
    members: dict[str, Member] = field(default_factory=dict)
    mesh: RoomMesh = field(default_factory=RoomMesh)
    """The online members, in the mesh's orders."""
    private: bool = True
    """Whether only members may see the room (unknown: taken as private, which serves less
    history to newcomers)."""
    departed: OrderedDict[str, Departed] = field(default_factory=OrderedDict)
    """Members who left a moment ago (see ``DEPARTED_GRACE``), oldest first."""

    @classmethod
    def from_list(cls, name: str, members: list[MemberInfo], max_links: int) -> RoomView:
        view = cls(
            name,
            {m.username: Member(m.online, m.host, m.port, _key(m.key), m.since) for m in members},
        )
        view.mesh = RoomMesh([m.username for m in members if m.online], max_links)
        return view

    def apply(self, event: RoomEvent, wall: float = 0.0) -> None:
        """A pushed membership or presence change (``wall``: the time now, for departures)."""
        who, change = event.username, event.change
        old = self.members.get(who)
        key = _key(event.key) or (old.key if old else None)
        since = event.since or (old.since if old else None)
        if change in ("online", "joined", "added"):
            online = event.host is not None
            self.members[who] = Member(online, event.host, event.port, key, since)
            if online:
                self.mesh.add(who)
            else:
                self.mesh.remove(who)
        elif change == "offline":
            self.members[who] = Member(False, key=key, since=since)
            self.mesh.remove(who)
        else:  # left, removed
            self.members.pop(who, None)
            self.mesh.remove(who)
            self.departed[who] = Departed(key, wall)
            self.departed.move_to_end(who)
            while len(self.departed) > MAX_DEPARTED:
                self.departed.popitem(last=False)
        if change in ("joined", "added"):
            self.departed.pop(who, None)

    def author_key(self, user: str, ts: float, wall: float) -> bytes | None:
        """The key ``user``'s room message sent at ``ts`` is checked with: a member's, or that
        of a member who left a moment ago if it was sent before they left."""
        member = self.members.get(user)
        if member is not None:
            return member.key
        gone = self.departed.get(user)
        if gone is not None and wall - gone.at <= DEPARTED_GRACE and ts <= gone.at + CLOCK_SKEW:
            return gone.key
        return None

    def speaks(self, user: str, ts: float, wall: float) -> bool:
        """Whether a message from (or passed on by) ``user`` at ``ts`` is taken."""
        if user in self.members:
            return True
        gone = self.departed.get(user)
        return gone is not None and wall - gone.at <= DEPARTED_GRACE and ts <= gone.at + CLOCK_SKEW

    def is_online(self, user: str) -> bool:
        member = self.members.get(user)
        return member is not None and member.online


def _key(text: str | None) -> bytes | None:
    return unb64(text) if text else None


def describe(event: RoomEvent) -> str:
    """The notice a user sees for an event."""
    who, room = event.username, event.room
    return {
        "online": f"{who} came online in {room}",
        "offline": f"{who} went offline in {room}",
        "joined": f"{who} joined {room}",
        "left": f"{who} left {room}",
        "added": f"{event.by} added {who} to {room}",
        "removed": f"{event.by} removed {who} from {room}",
    }[event.change]
