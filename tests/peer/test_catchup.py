"""Nothing missed, on the simulated network: history after being away, order, join-then-speak."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pchat.peer import catchup
from p2pchat.peer.catchup import FLUSH_AFTER
from p2pchat.peer.core import PeerConfig
from p2pchat.peer.events import Notice, RoomText
from tests.simnet import PASSWORD, SimNet

ROOM = "lobby"


def room_of(net: SimNet, names: list[str]) -> None:
    for name in names:
        net.add_peer(name)
    net.room(ROOM, names)


def texts(net: SimNet, name: str) -> list[RoomText]:
    return net.peers[name].room_texts(ROOM)


def test_a_member_offline_during_n_messages_sees_all_of_them_once_after_login() -> None:
    net = SimNet(seed=31, latency=0.02)
    names = [f"m{i:02d}" for i in range(10)]
    room_of(net, names)
    away = net.peers["m07"]
    away.do("logout")
    net.run_for(2)
    sent = []
    for k in range(40):
        sender = names[k % 5]
        net.say(sender, ROOM, f"while m07 was away {k}")
        sent.append((sender, f"while m07 was away {k}"))
        net.run_for(0.3)  # within the senders' pace
    net.run_for(2)
    away.do("login", "m07", PASSWORD)
    net.run_for(5)
    got = Counter((t.sender, t.text) for t in texts(net, "m07") if "away" in t.text)
    assert got == Counter(sent)  # every one, once
    caught = [t for t in texts(net, "m07") if "away" in t.text]
    assert all(t.history for t in caught)
    notices = away.notices()
    assert f"history of {ROOM}" in notices
    # and in each sender's order
    for sender in names[:5]:
        mine = [t.text for t in caught if t.sender == sender]
        assert mine == sorted(mine, key=lambda t: int(t.rsplit(" ", 1)[1]))


def test_a_hundred_join_then_speak_bursts_lose_nothing() -> None:
    net = SimNet(seed=32, latency=0.01, jitter=0.01)
    names = [f"m{i:02d}" for i in range(6)]
    room_of(net, names)
    net.room("open", names)
    joiners = [f"j{i:02d}" for i in range(10)]
    for name in joiners:
        net.add_peer(name)
    said = []
    for burst in range(100):
        joiner = net.peers[joiners[burst % len(joiners)]]
        text = f"burst {burst}"
        joiner.do("join_room", "open")  # one after the other at once, as a script types them
        joiner.do("say", "open", text)
        joiner.do("leave_room", "open")
        said.append((joiner.name, text))
        net.run_for(1.0)
    net.run_for(15)
    for name in names:
        got = Counter((t.sender, t.text) for t in net.peers[name].room_texts("open"))
        assert got == Counter(said), (name, Counter(said) - got)


def five_joiners(seed: int, config: PeerConfig | None = None) -> tuple[SimNet, list[str]]:
    """Five newcomers, one after the other, each join a room of three, say one thing and
    leave, each command as soon as the one before it is done (a script): the neighbours a
    message first goes to may be leaving, or still joining, themselves."""
    net = SimNet(seed=seed, latency=0.01, jitter=0.5, peer_config=config)
    names = ["m0", "m1", "m2"]
    room_of(net, names)
    net.room("open", names)
    for k in range(5):
        joiner = net.add_peer(f"j{k}")
        joiner.do("join_room", "open")
        joiner.do("say", "open", f"burst {k}")
        joiner.do("leave_room", "open")
    net.run_for(10)
    return net, names


def lost_by_five_joiners(config: PeerConfig | None, seeds: range) -> int:
    lost = 0
    for seed in seeds:
        net, names = five_joiners(seed, config)
        lost += sum(5 - len(net.peers[name].room_texts("open")) for name in names)
    return lost


def test_joiners_who_speak_and_leave_at_once_are_heard_by_every_member() -> None:
    assert lost_by_five_joiners(None, range(20)) == 0


def test_without_lingering_before_leaving_such_scripts_lose_messages() -> None:
    """``leave_linger``: a message said before any of our links was up went nowhere; only
    the catch-up of the links that come up while we stay passes it on."""
    config = replace(SimNet().peer_config, leave_linger=0.0)
    assert lost_by_five_joiners(config, range(20)) >= 10


def test_without_passing_on_fresh_caught_up_messages_such_scripts_lose_some(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``RELAY_FRESH``: the neighbours that caught up a message from its sender must pass it
    on, or members linked to them long before it was said never get it."""
    monkeypatch.setattr(catchup, "RELAY_FRESH", -1e9)
    assert lost_by_five_joiners(None, range(20)) > 0


def test_leave_waits_for_what_we_said_and_fails_if_we_log_out_meanwhile() -> None:
    net = SimNet(seed=3, latency=0.01)
    names = ["m0", "m1", "m2"]
    room_of(net, names)
    net.room("open", names)
    m0 = net.peers["m0"]
    m0.do("leave_room", "open")  # nothing said: at once
    m0.do("join_room", "open")
    m0.do("say", "open", "bye all")
    start = net.now
    m0.do("leave_room", "open")
    assert net.now - start >= m0.core.config.leave_linger
    m0.do("join_room", "open")
    m0.do("say", "open", "bye again")
    command = m0.start("leave_room", "open")
    m0.do("logout")
    net.run_for(5)
    assert m0.results[command].error is not None
    assert "logged out" in str(m0.results[command].error)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32),
    latency=st.floats(0.005, 0.2),
    jitter=st.floats(0.0, 0.3),
    count=st.integers(2, 25),
)
def test_each_sender_is_shown_in_the_order_sent_whatever_the_delays(
    seed: int, latency: float, jitter: float, count: int
) -> None:
    net = SimNet(seed=seed, latency=latency, spread=0.8, jitter=jitter)
    names = [f"m{i:02d}" for i in range(8)]
    room_of(net, names)
    for k in range(count):  # a burst: paths differ, so copies overtake each other
        net.peers["m03"].start("say", ROOM, f"{k}")
        net.peers["m05"].start("say", ROOM, f"{k}")
    net.run_for(30)
    for name in names:
        for sender in ("m03", "m05"):
            if name == sender:
                continue
            shown = [t.text for t in texts(net, name) if t.sender == sender]
            assert shown == [str(k) for k in range(count)], (name, sender, shown)
        assert not [n for n in net.peers[name].notices() if "did not arrive" in n]


def test_nothing_is_shown_twice_across_restarts_and_repairs() -> None:
    net = SimNet(seed=33, latency=0.03, jitter=0.02)
    names = [f"m{i:02d}" for i in range(12)]
    room_of(net, names)
    for k in range(10):
        net.say(names[k % 12], ROOM, f"before {k}")
        net.run_for(0.2)
    net.crash("m04")
    net.run_for(3)
    for k in range(10):
        net.say(names[(k + 5) % 12], ROOM, f"during {k}")
        net.run_for(0.2)
    net.restart("m04")
    net.run_for(10)
    for name in names:
        got = Counter((t.sender, t.text) for t in texts(net, name))
        assert all(n == 1 for n in got.values()), (name, got)
    back = {t.text for t in texts(net, "m04")}
    assert {f"during {k}" for k in range(10) if names[(k + 5) % 12] != "m04"} <= back
    assert any(
        isinstance(e, Notice) and e.text == f"history of {ROOM}" for e in net.peers["m04"].events
    )


def test_live_messages_reach_the_history_file_within_a_moment() -> None:
    net = SimNet(seed=34, latency=0.01)
    names = ["m00", "m01", "m02"]
    room_of(net, names)
    net.say("m00", ROOM, "kept")
    net.run_until(lambda: any(t.text == "kept" for t in texts(net, "m02")), timeout=5)
    history = net.peers["m02"].history
    assert history is not None and history.pending  # one savepoint, no commit yet
    net.run_for(FLUSH_AFTER + 0.01)
    assert not history.pending
