"""Whole rooms of real peer cores on the simulated network: virtual time, chosen faults."""

from __future__ import annotations

from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pchat.peer.events import Notice, RoomText
from p2pchat.peer.mesh import mesh_graph
from tests.simnet import PASSWORD, SimNet

ROOM = "lobby"


def members(n: int, prefix: str = "m") -> list[str]:
    return [f"{prefix}{i:03d}" for i in range(n)]


def room_of(net: SimNet, names: list[str]) -> None:
    for name in names:
        if name not in net.peers:
            net.add_peer(name)
    net.room(ROOM, names)


def delivered_once(net: SimNet, sender: str, text: str, receivers: list[str]) -> bool:
    return all(net.peers[r].got(ROOM, sender, text) == 1 for r in receivers)


def test_every_mesh_edge_is_one_link_that_both_ends_agree_on() -> None:
    net = SimNet(seed=3)
    names = members(30)
    room_of(net, names)
    graph = mesh_graph(names)
    for name in names:
        core = net.peers[name].core
        for neighbour in graph[name]:
            mine, theirs = core.links[neighbour], net.peers[neighbour].core.links[name]
            # one TCP connection: one end dialed it, the other accepted it
            assert mine.dialed != theirs.dialed, (name, neighbour)
    # simultaneous dials happened (both ends learn of a member at once) and were resolved
    assert net.frames["peer_hello"] > sum(len(g) for g in graph.values()) // 2


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
@given(
    n=st.integers(min_value=2, max_value=24),
    seed=st.integers(min_value=0, max_value=2**32),
    latency=st.floats(min_value=0.001, max_value=0.2),
    spread=st.floats(min_value=0.0, max_value=0.9),
    jitter=st.floats(min_value=0.0, max_value=0.1),
    loss=st.floats(min_value=0.0, max_value=0.2),
    senders=st.lists(st.integers(min_value=0, max_value=23), min_size=1, max_size=6),
)
def test_flooding_delivers_each_message_exactly_once_whatever_the_delays(
    n: int,
    seed: int,
    latency: float,
    spread: float,
    jitter: float,
    loss: float,
    senders: list[int],
) -> None:
    net = SimNet(seed=seed, latency=latency, spread=spread, jitter=jitter, loss=loss)
    names = members(n)
    room_of(net, names)
    sent = []
    for k, index in enumerate(senders):
        sender = names[index % n]
        text = f"message {k} from {sender}"
        net.peers[sender].start("say", ROOM, text)  # all at once: they cross in flight
        sent.append((sender, text))
    net.run_for(30)
    for name in names:
        got = Counter((e.sender, e.text) for e in net.peers[name].room_texts(ROOM))
        assert got == Counter(pair for pair in sent if pair[0] != name), name


def test_a_crashed_relay_is_routed_around_and_the_repair_is_announced() -> None:
    net = SimNet(seed=5)
    names = members(16, "r")
    room_of(net, names)
    victim = "r005"
    net.crash(victim)
    rest = [n for n in names if n != victim]
    net.wait_mesh(ROOM, rest, timeout=5)
    for sender in ("r004", "r006", "r000"):
        net.say(sender, ROOM, f"after the crash, {sender}")
    net.run_for(2)
    for sender in ("r004", "r006", "r000"):
        others = [n for n in rest if n != sender]
        assert delivered_once(net, sender, f"after the crash, {sender}", others)
    notices = net.peers["r004"].notices()
    assert any("link to r005 lost; repairing the mesh of lobby" in n for n in notices)
    assert "mesh of lobby repaired" in notices


def test_chat_goes_on_without_the_registry_and_everyone_logs_in_again_when_it_returns() -> None:
    net = SimNet(seed=7)
    names = members(7)
    room_of(net, names)
    net.stop_registry()
    net.run_for(1)
    for name in names:
        assert any("registry unreachable" in n for n in net.peers[name].notices())
    net.say("m002", ROOM, "registry is gone")
    net.run_for(1)
    assert delivered_once(net, "m002", "registry is gone", [n for n in names if n != "m002"])
    net.run_for(120)  # retries back off to 10 s, and nothing breaks meanwhile
    net.start_registry()
    net.run_for(12)
    for name in names:
        assert any("registry is back" in n for n in net.peers[name].notices()), name
        assert net.peers[name].core.status().registry
    assert net.peers["m000"].do("search", "m006").online
    net.say("m006", ROOM, "back")
    net.run_for(1)
    assert delivered_once(net, "m006", "back", names[:6])


def test_a_member_who_logs_in_and_speaks_at_once_is_heard_by_everyone() -> None:
    net = SimNet(seed=11, latency=0.03)
    names = members(8)
    room_of(net, names)
    late = net.add_peer("late", login=False)
    net.peers["m000"].do("add_member", ROOM, "late")
    late.do("login", "late", PASSWORD)
    assert late.do("say", ROOM, "first words") >= 1  # waited for its mesh links
    net.run_for(2)
    assert delivered_once(net, "late", "first words", names)


def test_a_partitioned_member_is_routed_around_and_rejoins_when_healed() -> None:
    net = SimNet(seed=13)
    names = members(10)
    room_of(net, names)
    cut = "m004"
    # m004 still reaches the registry, but no other peer: its links stall, then break
    net.partition([cut], [n for n in names if n != cut])
    net.run_for(40)
    rest = [n for n in names if n != cut]
    net.say("m003", ROOM, "while m004 is cut off")
    net.run_for(2)
    assert delivered_once(net, "m003", "while m004 is cut off", [n for n in rest if n != "m003"])
    net.heal()
    net.wait_mesh(ROOM, names, timeout=30)  # the backoff lets it back in
    net.say("m005", ROOM, "healed")
    net.run_for(2)
    assert delivered_once(net, "m005", "healed", [n for n in names if n != "m005"])


def test_a_thousand_member_room_gets_every_message_once() -> None:
    net = SimNet(seed=17)
    names = members(1000)
    only_texts = lambda event: isinstance(event, RoomText)  # noqa: E731
    for name in names:
        net.add_peer(name, login=False, record=only_texts)
    owner = net.peers[names[0]]
    owner.do("login", names[0], PASSWORD)
    owner.do("create_room", ROOM, False)
    for name in names[1:]:
        owner.do("add_member", ROOM, name)
    logins = [(net.peers[n], net.peers[n].start("login", n, PASSWORD)) for n in names[1:]]
    net.run_until(lambda: all(c in p.results for p, c in logins), timeout=120)
    net.wait_mesh(ROOM, names, timeout=120)
    senders = names[::200]
    for sender in senders:
        net.peers[sender].start("say", ROOM, f"hello from {sender}")
    net.run_for(5)
    for name in names:
        got = Counter((e.sender, e.text) for e in net.peers[name].room_texts(ROOM))
        assert got == Counter((s, f"hello from {s}") for s in senders if s != name), name
    assert max(len(net.peers[n].core.links) for n in names) <= 6


def test_the_same_seed_gives_the_same_run() -> None:
    def run(seed: int) -> list[tuple[float, str]]:
        net = SimNet(seed=seed, latency=0.05, spread=0.5, jitter=0.02, loss=0.05)
        names = members(12)
        room_of(net, names)
        net.crash("m003")
        net.run_for(3)
        for name in ("m001", "m007"):
            net.peers[name].start("say", ROOM, f"from {name}")
        net.run_for(3)
        return [
            (round(net.now, 6), f"{n}: {e!r}")
            for n in names
            for e in net.peers[n].events
            if isinstance(e, RoomText | Notice)
        ] + [(net.now, str(sorted(net.frames.items())))]

    assert run(1) == run(1)
    assert run(1) != run(2)
