"""The link planner: which links to dial, announce and close, from room views alone."""

from __future__ import annotations

from p2pchat.peer.links import LinkPlan, LinkView, forwarding_table, plan_links, wanted_links
from p2pchat.peer.mesh import mesh_neighbours

MEMBERS = [f"u{i:02d}" for i in range(10)]


def plan_for(me: str, online: dict[str, list[str]], links: dict[str, LinkView]) -> LinkPlan:
    return plan_links(wanted_links(me, online, 6), online.keys(), links)


def test_wanted_links_follow_the_mesh_of_each_room() -> None:
    wanted = wanted_links("u00", {"a": MEMBERS, "b": ["u00", "u05"]}, 6)
    assert set(wanted) == mesh_neighbours(MEMBERS, "u00") | {"u05"}
    assert wanted["u05"] >= {"b"}
    assert all("a" in rooms for peer, rooms in wanted.items() if peer != "u05")


def test_a_fresh_peer_dials_every_neighbour() -> None:
    plan = plan_for("u00", {"a": MEMBERS}, {})
    assert set(plan.dial) == mesh_neighbours(MEMBERS, "u00")
    assert not plan.announce and not plan.close


def test_established_links_are_announced_then_left_alone() -> None:
    nbrs = mesh_neighbours(MEMBERS, "u00")
    links = {p: LinkView() for p in nbrs}
    plan = plan_for("u00", {"a": MEMBERS}, links)
    assert plan.announce == {p: frozenset({"a"}) for p in nbrs}
    for p in nbrs:
        links[p].mine = frozenset({"a"})
    again = plan_for("u00", {"a": MEMBERS}, links)
    assert not again.dial and not again.announce and not again.close


def test_unneeded_links_close_only_when_neither_side_holds_them() -> None:
    links = {
        "x1": LinkView(mine=frozenset({"a"})),  # we held it, they did not: withdraw and close
        "x2": LinkView(theirs=frozenset({"a"})),  # they still hold it: keep
        "x3": LinkView(pinned=True),  # used for direct messages: keep
        "x4": LinkView(),
    }
    plan = plan_for("u00", {}, links)
    assert plan.announce == {"x1": frozenset()}
    assert sorted(plan.close) == ["x1", "x4"]


def test_make_before_break_keeps_old_links_until_new_ones_are_up() -> None:
    links = {p: LinkView(mine=frozenset({"a"})) for p in ("u01", "u02")}
    after = ["u00", "u01", "u02", "u03", "u04", "u05", "u06", "u07"]
    plan = plan_for("u00", {"a": after}, links)
    new = mesh_neighbours(after, "u00")
    assert set(plan.dial) == new - {"u01", "u02"}
    # u02 is not a neighbour in the new mesh, but stays announced while we wait for the dials
    assert "u02" not in new and "u02" not in plan.announce and "u02" not in plan.close
    for p in plan.dial:
        links[p] = LinkView(mine=frozenset({"a"}))
    done = plan_for("u00", {"a": after}, links)
    assert done.announce == {"u02": frozenset()}


def test_forwarding_uses_links_either_side_holds_for_the_room() -> None:
    table = forwarding_table(
        {
            "p": LinkView(mine=frozenset({"a"})),
            "q": LinkView(theirs=frozenset({"a", "b"})),
            "r": LinkView(),
        }
    )
    assert sorted(table["a"]) == ["p", "q"] and table["b"] == ["q"] and "r" not in str(table)


def test_ring_only_when_max_links_is_two() -> None:
    wanted = wanted_links("u00", {"a": MEMBERS}, 2)
    assert set(wanted) == {"u01", "u09"}
