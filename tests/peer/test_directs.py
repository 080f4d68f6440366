"""Direct messages that wait, on the simulated network: queued for the offline, kept across a
restart, one id end to end, never shown twice, bounded."""

from __future__ import annotations

from p2pchat.peer.directs import EXPIRE_EVERY, RETRY_MAX, DirectSent
from p2pchat.peer.events import CommandError, DirectUpdate
from p2pchat.peer.history import Limits
from p2pchat.peer.mesh import mesh_graph
from tests.simnet import PASSWORD, SimNet, SimPeer


def updates(peer: SimPeer) -> list[tuple[str, str, str]]:
    return [(e.state, e.peer, e.text) for e in peer.events if isinstance(e, DirectUpdate)]


def texts(peer: SimPeer) -> list[tuple[str, str]]:
    return [(d.sender, d.text) for d in peer.directs()]


def no_acks(data: bytes) -> bytes:
    """A peer whose acknowledgements are lost on the way (it still shows what it gets)."""
    return b"".join(f + b"\n" for f in data.split(b"\n") if f and b'"type":"dm_ack"' not in f)


def test_a_message_to_an_offline_user_is_queued_then_delivered_when_they_come_online() -> None:
    net = SimNet(seed=41, latency=0.02)
    alice = net.add_peer("alice")
    bob = net.add_peer("bob")
    bob.do("logout")
    sent = alice.do("send_direct", "BOB", "see this when you are back")
    assert sent == DirectSent("bob", sent.id, False, "they are offline")
    net.run_for(30)  # alice looks for bob now and then; nothing is sent meanwhile
    assert texts(bob) == []
    bob.do("login", "bob", PASSWORD)
    net.run_for(RETRY_MAX + 1)
    assert texts(bob) == [("alice", "see this when you are back")]
    assert updates(alice) == [("delivered", "bob", "see this when you are back")]
    assert alice.core.outbox() == []


def test_a_shared_room_brings_a_queued_message_at_once_when_the_recipient_comes_online() -> None:
    net = SimNet(seed=42, latency=0.02)
    for name in ("alice", "bob"):
        net.add_peer(name)
    net.room("lobby", ["alice", "bob"])
    net.peers["bob"].do("logout")
    alice = net.peers["alice"]
    alice.do("send_direct", "bob", "hi")
    net.run_for(200)  # alice's lookups have backed off to their longest wait
    login_at = net.now
    net.peers["bob"].do("login", "bob", PASSWORD)
    net.run_until(lambda: texts(net.peers["bob"]) == [("alice", "hi")], timeout=5)
    assert net.now - login_at < 2  # the room's link, not the next lookup
    net.run_for(1)
    assert updates(alice) == [("delivered", "bob", "hi")]


def test_a_room_event_brings_a_queued_message_at_once_even_without_a_mesh_link() -> None:
    net = SimNet(seed=49, latency=0.02)
    names = [f"m{i:02d}" for i in range(16)]
    for name in names:
        net.add_peer(name)
    net.room("lobby", names)
    far = next(n for n in names[1:] if n not in mesh_graph(names, net.peer_config.max_links)["m00"])
    net.peers[far].do("logout")
    sender = net.peers["m00"]
    sender.do("send_direct", far, "hi")
    net.run_for(200)  # the sender's lookups have backed off to their longest wait
    login_at = net.now
    net.peers[far].do("login", far, PASSWORD)
    net.run_until(lambda: texts(net.peers[far]) == [("m00", "hi")], timeout=5)
    assert net.now - login_at < 2  # the room's "online" event, not the next lookup


def test_a_queued_message_survives_the_senders_restart_and_arrives_once() -> None:
    net = SimNet(seed=43, latency=0.02)
    alice = net.add_peer("alice")
    bob = net.add_peer("bob")
    bob.do("logout")
    alice.do("send_direct", "bob", "kept on disk")
    net.crash("alice")
    alice = net.restart("alice")
    bob.do("login", "bob", PASSWORD)
    net.run_until(lambda: texts(bob) != [], timeout=RETRY_MAX + 5)
    net.run_for(RETRY_MAX * 2)
    assert texts(bob) == [("alice", "kept on disk")]
    assert updates(alice) == [("delivered", "bob", "kept on disk")]
    assert alice.core.outbox() == []


def test_a_lost_acknowledgement_means_a_resend_that_is_shown_once_and_a_late_delivered() -> None:
    net = SimNet(seed=44, latency=0.02)
    alice = net.add_peer("alice")
    bob = net.add_peer("bob")
    bob.tamper = no_acks
    sent = alice.do("send_direct", "bob", "did you get it?")
    assert not sent.delivered and sent.reason == "no answer from their peer yet"
    net.run_for(60)  # alice sends it again, with the same id; bob acknowledges each time
    assert texts(bob) == [("alice", "did you get it?")]
    assert alice.core.outbox()[0].attempts >= 2
    bob.tamper = None
    net.run_for(RETRY_MAX + 10)
    assert texts(bob) == [("alice", "did you get it?")]  # once, whatever the resends
    assert updates(alice) == [("delivered", "bob", "did you get it?")]


def test_an_acknowledgement_counts_only_from_the_recipient() -> None:
    net = SimNet(seed=45, latency=0.02)
    alice, bob, mallory = (net.add_peer(n) for n in ("alice", "bob", "mallory"))
    mallory.do("send_direct", "alice", "a link to alice")
    bob.tamper = no_acks
    command = alice.start("send_direct", "bob", "for bob")
    net.run_until(lambda: [e.state for e in alice.core.outbox()] == ["sending"], timeout=5)
    [entry] = alice.core.outbox()
    forged = b'{"type":"dm_ack","id":"%s"}\n' % entry.id.encode()
    net.inject("mallory", "alice", forged)  # while it is on its way
    net.run_until(lambda: command in alice.results, timeout=10)
    assert not alice.results[command].value.delivered
    net.inject("mallory", "alice", forged)  # and while it waits to be sent again
    net.run_for(1)
    assert [e.id for e in alice.core.outbox()] == [entry.id]
    assert updates(alice) == []
    net.inject("bob", "alice", forged)  # the recipient's own, late: delivered
    net.run_for(1)
    assert alice.core.outbox() == [] and updates(alice) == [("delivered", "bob", "for bob")]


def test_the_outbox_is_bounded_per_recipient_and_says_so() -> None:
    net = SimNet(seed=46, latency=0.02)
    alice = net.add_peer("alice")
    bob = net.add_peer("bob")
    bob.do("logout")
    alice.core.directs.store.limits = Limits(outbox_per_recipient=3)  # type: ignore[union-attr]
    for k in range(3):
        alice.do("send_direct", "bob", f"note {k}")
    try:
        alice.do("send_direct", "bob", "one too many")
    except CommandError as exc:
        assert "3 messages wait for bob already" in str(exc)
    else:
        raise AssertionError("the fourth message was taken")
    assert [e.text for e in alice.core.outbox()] == ["note 0", "note 1", "note 2"]
    bob.do("login", "bob", PASSWORD)
    net.run_for(RETRY_MAX + 5)
    assert texts(bob) == [("alice", f"note {k}") for k in range(3)]  # in the order written


def test_a_message_that_waited_too_long_fails_and_resend_tries_again() -> None:
    net = SimNet(seed=47, latency=0.02)
    alice = net.add_peer("alice")
    bob = net.add_peer("bob")
    bob.do("logout")
    alice.do("send_direct", "bob", "old news")
    week = Limits().outbox_max_age
    net.run_for(week + EXPIRE_EVERY)
    assert updates(alice) == [("failed", "bob", "old news")]
    assert alice.core.outbox()[0].state == "failed"
    bob.do("login", "bob", PASSWORD)
    net.run_for(RETRY_MAX + 5)
    assert texts(bob) == []  # failed is final until the user says otherwise
    assert alice.do("resend", "bob") == 1
    net.run_for(5)
    assert texts(bob) == [("alice", "old news")]
    assert updates(alice)[-1] == ("delivered", "bob", "old news")


def test_a_message_to_oneself_or_nobody_is_refused_and_nothing_is_kept() -> None:
    net = SimNet(seed=48, latency=0.02)
    alice = net.add_peer("alice")
    for target, error in (("ALICE", "that is you"), ("nobody", "no user")):
        try:
            alice.do("send_direct", target, "hello?")
        except CommandError as exc:
            assert error in str(exc)
        else:
            raise AssertionError(f"a message to {target} was taken")
    assert alice.core.outbox() == []
