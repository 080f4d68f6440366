"""What a malicious member, relay or network can and cannot do, on the simulated network."""

from __future__ import annotations

import json
from collections import Counter

from msgspec.structs import replace

from p2pchat.peer.identity import Identity
from p2pchat.protocol.messages import RoomMessage, encode
from p2pchat.registry import core as registry_core
from tests.simnet import PASSWORD, SimNet

ROOM = "lobby"


def room_of(net: SimNet, names: list[str]) -> None:
    for name in names:
        net.add_peer(name)
    net.room(ROOM, names)


def shown(net: SimNet, name: str) -> Counter[tuple[str, str]]:
    return Counter((e.sender, e.text) for e in net.peers[name].room_texts(ROOM))


def test_a_member_cannot_speak_for_another() -> None:
    net = SimNet(seed=21)
    names = ["alice", "bob", "carol", "dave", "mallory"]
    room_of(net, names)
    mallory = net.peers["mallory"]
    assert mallory.signer is not None
    neighbour = next(iter(mallory.core.links))
    frames = b""
    for k in range(5):  # alice's name, mallory's key; then a correct signature, altered
        forged = RoomMessage(
            id=f"{k:032x}", room=ROOM, origin="alice", seq=k + 1, text=f"forged {k}", ts=1.0, hops=9
        )
        frames += encode(replace(forged, sig=Identity(mallory.signer).sign_message(forged)))
    net.inject("mallory", neighbour, frames)
    net.run_for(2)
    for name in names:
        assert not [t for t in net.peers[name].room_texts() if "forged" in t.text], name
    # the member who relayed for mallory cut her link after a few; the room still works
    assert "mallory" not in net.peers[neighbour].core.links
    net.say("alice", ROOM, "the real alice")
    net.run_for(2)
    for name in names[1:]:
        assert shown(net, name)[("alice", "the real alice")] == 1, name


def test_a_rewriting_relay_is_shown_nowhere_and_the_original_arrives_around_it() -> None:
    net = SimNet(seed=22)
    names = [f"m{i:02d}" for i in range(12)]
    room_of(net, names)
    relay = net.peers["m05"]

    def rewrite(data: bytes) -> bytes:
        out = []
        for line in data.split(b"\n"):
            if b'"room_msg"' in line:
                frame = json.loads(line)
                frame["text"] = "REWRITTEN " + frame["text"]
                line = json.dumps(frame).encode()
            out.append(line)
        return b"\n".join(out)

    relay.tamper = rewrite
    for sender in ("m00", "m04", "m06", "m11"):
        net.say(sender, ROOM, f"hello from {sender}")
    net.run_for(3)
    honest = [n for n in names if n != "m05"]
    for name in honest:
        texts = shown(net, name)
        assert not [t for t in texts if "REWRITTEN" in t[1]], name
        expected = {(s, f"hello from {s}") for s in ("m00", "m04", "m06", "m11") if s != name}
        assert {pair for pair, n in texts.items() if n == 1} == expected, name


def test_links_form_and_the_mesh_repairs_while_the_registry_is_down() -> None:
    net = SimNet(seed=23)
    names = [f"r{i:02d}" for i in range(10)]
    room_of(net, names)
    net.stop_registry()
    net.run_for(1)
    net.crash("r04")  # its neighbours must link to each other, with no registry to ask
    rest = [n for n in names if n != "r04"]
    net.run_for(40)
    for name in rest:
        assert "r04" not in net.peers[name].core.links
    # the registry could not tell anyone r04 went offline: peers routed around it themselves
    net.say("r03", ROOM, "around the hole")
    net.run_for(2)
    for name in rest:
        if name != "r03":
            assert shown(net, name)[("r03", "around the hole")] == 1, name


def test_coming_back_after_a_registry_restart_costs_no_password_hash() -> None:
    net = SimNet(seed=24)
    names = [f"p{i:02d}" for i in range(8)]
    room_of(net, names)
    hashes: list[str] = []
    real = net._registry_actions

    def counting(actions: list[registry_core.Action]) -> None:
        hashes.extend(
            type(a).__name__
            for a in actions
            if isinstance(a, registry_core.HashPassword | registry_core.VerifyPassword)
        )
        real(actions)

    net._registry_actions = counting  # type: ignore[method-assign]
    net.stop_registry()
    net.run_for(2)
    net.start_registry()
    net.run_for(15)
    for name in names:
        peer = net.peers[name]
        assert any("registry is back" in n for n in peer.notices()), name
        assert peer.core.status().registry
    assert hashes == []  # every peer resumed with its certificate
    net.say("p01", ROOM, "after the restart")
    net.run_for(2)
    for name in names[2:]:
        assert shown(net, name)[("p01", "after the restart")] == 1


def test_a_login_from_a_new_machine_supersedes_the_old_key() -> None:
    net = SimNet(seed=25)
    names = ["ann", "ben", "cat"]
    room_of(net, names)
    old_key = net.peers["cat"].core.identity
    assert old_key is not None
    net.crash("cat")
    net.run_for(2)
    again = net.restart("cat", login=False)
    again.signer = type(again.signer)(b"n" * 32) if again.signer else None  # a new machine
    again.do("login", "cat", PASSWORD)
    net.wait_mesh(ROOM)
    assert net.peers["ann"].core.rooms[ROOM].members["cat"].key == again.signer.public_key  # type: ignore[union-attr]
    net.say("cat", ROOM, "from my new laptop")
    net.run_for(2)
    assert shown(net, "ann")[("cat", "from my new laptop")] == 1
