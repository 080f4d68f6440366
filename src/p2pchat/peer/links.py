"""Which peer links to open, keep, announce and close: pure decisions from the room views.

Both ends of a mesh edge compute the same graph from the same member list (``mesh.py``), but
during churn their views can differ for a moment. So each side announces, per link, the rooms
for which it holds the link (``mesh`` frames), and a room message is forwarded over a link when
*either* side holds it for that room. The union of both views' edges stays connected while the
views converge, and duplicates are dropped by id anyway.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from p2pchat.peer.mesh import mesh_neighbours


@dataclass(slots=True)
class LinkView:
    """What the planner needs to know of one established link."""

    mine: frozenset[str] = frozenset()
    """Rooms we announced for this link."""
    theirs: frozenset[str] = frozenset()
    """Rooms the other side announced."""
    pinned: bool = False
    """Kept for direct messages regardless of rooms."""


@dataclass(slots=True)
class LinkPlan:
    dial: list[str] = field(default_factory=list)
    """Peers we want a link to and have none."""
    announce: dict[str, frozenset[str]] = field(default_factory=dict)
    """Established links whose announced room set must change, with the new set."""
    close: list[str] = field(default_factory=list)
    """Links neither side holds for any room, and not pinned."""
    waiting: frozenset[str] = frozenset()
    """Rooms that want a link we do not have yet: their mesh is still being built."""


def wanted_links(
    me: str, online: Mapping[str, Collection[str]], max_links: int
) -> dict[str, frozenset[str]]:
    """For each peer we should link to, the rooms in which it is our mesh neighbour.

    ``online`` maps each of our rooms to its members that we consider reachable (with or
    without ``me``).
    """
    wanted: dict[str, set[str]] = {}
    for room, members in online.items():
        for peer in mesh_neighbours([*members, me], me, max_links):
            wanted.setdefault(peer, set()).add(room)
    return {peer: frozenset(rooms) for peer, rooms in wanted.items()}


def plan_links(
    wanted: Mapping[str, frozenset[str]],
    rooms: Collection[str],
    links: Mapping[str, LinkView],
) -> LinkPlan:
    """Compare the links we have with the ones the meshes want (``wanted``: each peer we
    should link to, with the rooms in which it is our neighbour; ``rooms``: ours).

    Make before break: while a room still waits for a wanted link, the links we already hold
    for it stay announced, so the room's mesh never loses the edges that keep it connected
    before the new ones are up.
    """
    plan = LinkPlan()
    waiting: set[str] = set()
    for peer in sorted(wanted):
        if peer not in links:
            plan.dial.append(peer)
            waiting |= wanted[peer]
    for peer, link in links.items():
        held = wanted.get(peer, frozenset())
        if waiting and link.mine & waiting:
            held = held | frozenset(r for r in link.mine & waiting if r in rooms)
        if held != link.mine:
            plan.announce[peer] = held
        if not held and not link.theirs and not link.pinned:
            plan.close.append(peer)
    plan.waiting = frozenset(waiting)
    return plan


def forwarding_table(links: Mapping[str, LinkView]) -> dict[str, list[str]]:
    """Per room, the linked peers a room message is flooded to: held by either side."""
    table: dict[str, list[str]] = {}
    for peer, link in links.items():
        for room in link.mine | link.theirs:
            table.setdefault(room, []).append(peer)
    return table
