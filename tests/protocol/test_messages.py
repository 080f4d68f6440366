"""Every message must survive the wire, and bad frames must get the right error code."""

from __future__ import annotations

import hashlib
import hmac
import typing

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pchat.protocol import messages as m
from p2pchat.protocol.messages import (
    ErrorCode,
    Message,
    decode_error,
    encode,
    peer_decoder,
    reply_decoder,
    request_decoder,
    text_size_ok,
    valid_name,
)

SETTINGS = settings(derandomize=True, database=None, deadline=None, max_examples=200)

KEY = m.b64(bytes(range(32)))
"""An Ed25519 public key as the wire carries it (43 characters of base64url)."""
SIG = m.b64(bytes(64))
CERT = m.b64(b"\x30\x82" + bytes(300))
MAC = "ab" * 32

EXAMPLES: list[Message] = [
    # client -> registry
    m.Hello(id=1, version=m.PROTOCOL_VERSION),
    m.Hello(id=2, version=m.PROTOCOL_VERSION, agent="p2pchat/0.1"),
    m.Register(id=3, username="alice", password="secret1"),
    m.Login(id=4, username="alice", password="secret1", port=7000),
    m.Login(id=5, username="alice", password="secret1", port=7000, host="10.0.0.5"),
    m.Login(id=5, username="alice", password="secret1", port=7000, ticket="ab12.cd34"),
    m.Login(id=5, username="alice", password="secret1", port=7000, key=KEY),
    m.Resume(id=6, port=7000),
    m.Resume(id=6, port=7000, host="10.0.0.5"),
    m.Renew(id=6),
    m.Logout(id=6),
    m.Ping(session="s3ss10n", seq=1, mac=MAC),
    m.Ping(session="s3ss10n", seq=2**53, mac=MAC, id=7),
    m.Search(id=8, username="bob"),
    m.ListUsers(id=9),
    m.ListUsers(id=9, after="bob", limit=10),
    m.CreateRoom(id=10, room="lobby"),
    m.CreateRoom(id=11, room="den", private=True),
    m.JoinRoom(id=12, room="lobby"),
    m.LeaveRoom(id=13, room="lobby"),
    m.AddMember(id=14, room="den", username="bob"),
    m.AddMember(id=14, room="den", username="bob", may_add=True),
    m.RemoveMember(id=15, room="den", username="bob"),
    m.RemoveMember(id=15, room="den", username="bob", ban=True),
    m.Unban(id=15, room="den", username="bob"),
    m.ListRooms(id=16),
    m.ListRooms(id=16, after="den", limit=5),
    m.ListRooms(id=16, mine=True),
    m.ListMembers(id=17, room="den"),
    m.ListMembers(id=17, room="den", after="alice", limit=2),
    # registry -> client
    m.Welcome(id=1, version=2, server="reg", udp_port=9001, heartbeat_interval=5.0, timeout=15.5),
    m.Ok(id=2),
    m.LoggedIn(
        id=3,
        username="alice",
        session="s3ss10n",
        heartbeat_key=m.b64(bytes(32)),
        host="10.0.0.5",
        port=7000,
        udp_port=9001,
        heartbeat_interval=5.0,
        timeout=15.0,
    ),
    m.LoggedIn(
        id=3,
        username="alice",
        session="s3ss10n",
        heartbeat_key=m.b64(bytes(32)),
        host="10.0.0.5",
        port=7000,
        udp_port=9001,
        heartbeat_interval=5.0,
        timeout=15.0,
        ticket="ab12.cd34",
        cert=CERT,
    ),
    m.CertificateReply(id=3, cert=CERT),
    m.SearchResult(id=4, username="bob", online=False),
    m.SearchResult(id=5, username="bob", online=True, host="10.0.0.6", port=7001),
    m.SearchResult(id=5, username="bob", online=True, host="10.0.0.6", port=7001, key=KEY),
    m.UserList(id=6, users=[]),
    m.UserList(id=6, users=[], more=True),
    m.UserList(id=7, users=[m.UserAddr(username="bob", host="10.0.0.6", port=7001)]),
    m.UserList(id=7, users=[m.UserAddr(username="bob")]),
    m.RoomList(id=8, rooms=[], more=True),
    m.RoomList(
        id=8,
        rooms=[
            m.RoomInfo(room="den", private=True, owner="alice", members=3, online=2, member=True)
        ],
    ),
    m.MemberList(
        id=9,
        room="den",
        members=[
            m.MemberInfo(
                username="alice",
                online=True,
                owner=True,
                host="10.0.0.5",
                port=7000,
                key=KEY,
                since=1.7e9,
            ),
            m.MemberInfo(username="bob", online=False),
        ],
    ),
    m.MemberList(id=9, room="den", members=[], more=True),
    m.Error(id=None, code=ErrorCode.BAD_FRAME, reason="not JSON"),
    m.Error(id=10, code=ErrorCode.RATE_LIMITED, reason="slow down", retry_after=1.5),
    m.Error(id=11, code=ErrorCode.CERT_REFUSED, reason="log in with the password"),
    m.RoomEvent(room="den", username="bob", change="online", host="10.0.0.6", port=7001, key=KEY),
    m.RoomEvent(room="den", username="carol", change="added", by="alice", key=KEY, since=1.7e9),
    m.Bye(code=ErrorCode.SHUTDOWN, reason="shutting down"),
    m.Bye(code=ErrorCode.TIMEOUT, reason="no heartbeat"),
    # peer <-> peer
    m.PeerHello(version=2, username="alice", nonce="ab" * 16),
    m.PeerWelcome(version=2, username="bob", cert=CERT, sig=SIG),
    m.PeerWelcome(version=2, username="bob"),
    m.MeshRooms(rooms=["den", "lobby"]),
    m.MeshRooms(rooms=[]),
    m.DirectMessage(id="a" * 32, sender="alice", text="hi\nthere", ts=1.7e9),
    m.DirectAck(id="a" * 32),
    m.RoomMessage(
        id="b" * 32, room="den", origin="alice", seq=1, text="héllo ✓", ts=1.7e9, hops=64, sig=SIG
    ),
    m.PeerError(code=ErrorCode.TEXT_TOO_LONG, reason="too long", id="d1"),
    m.PeerError(code=ErrorCode.TEXT_TOO_LONG, reason="too long", id="c" * 32),
    m.IHave(room="den", origin="alice", ids=["b" * 32, "c" * 32]),
    m.Graft(room="den", origin="alice", ids=[]),
    m.Prune(room="den", origin="alice"),
    m.SyncDigest(room="den", digest="A" * 22, streams=3),
    m.SyncSummary(room="den", streams=[m.SyncStream(origin="alice", key="k" * 43, high=4)]),
    m.SyncSummary(
        room="den",
        streams=[m.SyncStream(origin="bob", key="k" * 43, high=0, extra=[(3, 5)])],
        more=True,
    ),
    m.SyncRequest(
        room="den", id=1, wants=[m.SyncWant(origin="alice", key="k" * 43, ranges=[(5, 9)])]
    ),
    m.SyncBatch(
        room="den",
        id=1,
        streams=[
            m.SyncStreamBatch(
                origin="alice",
                key="k" * 43,
                done=9,
                msgs=[m.SyncEntry(id="e" * 32, seq=5, ts=1.7e9, text="hi", sig="s" * 86)],
            )
        ],
        truncated=True,
    ),
    m.SyncBatch(room="den", id=2, refused="busy", retry_after=1.0),
]

DECODERS: dict[str, tuple[msgspec.json.Decoder[typing.Any], object]] = {
    "request": (request_decoder, m.RegistryRequest),
    "reply": (reply_decoder, m.RegistryReply),
    "peer": (peer_decoder, m.PeerFrame),
}


def all_message_types() -> set[type[Message]]:
    found: set[type[Message]] = set()
    todo = [Message]
    while todo:
        for sub in todo.pop().__subclasses__():
            found.add(sub)
            todo.append(sub)
    return found


def test_examples_cover_every_message_type() -> None:
    # A new message type must get an example here (and a place in one of the unions).
    assert {type(e) for e in EXAMPLES} == all_message_types()
    in_unions = {t for _, union in DECODERS.values() for t in typing.get_args(union)}
    assert in_unions == all_message_types()


@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda e: type(e).__name__)
def test_round_trip(msg: Message) -> None:
    frame = encode(msg)
    assert frame.endswith(b"\n") and frame.count(b"\n") == 1
    assert msgspec.json.decode(frame)["type"] == type(msg).__struct_config__.tag
    unions = [name for name, (_, u) in DECODERS.items() if type(msg) in typing.get_args(u)]
    assert unions, f"{type(msg).__name__} is in no union"
    for name in unions:
        decoder = DECODERS[name][0]
        assert decoder.decode(frame) == msg
        assert decoder.decode(frame[:-1]) == msg  # as the framer hands it over


def test_ping_decoder() -> None:
    ping = m.Ping(session="s", seq=3, mac=MAC)
    assert m.ping_decoder.decode(encode(ping)) == ping


def test_defaults_are_omitted() -> None:
    assert encode(m.SearchResult(id=1, username="bob", online=False)) == (
        b'{"type":"search_result","id":1,"username":"bob","online":false}\n'
    )


@SETTINGS
@given(
    text=st.text(max_size=m.MAX_TEXT),
    ts=st.floats(allow_nan=False, allow_infinity=False),
    hops=st.integers(-(2**63), 2**63 - 1),
    name=st.from_regex(r"\A[A-Za-z0-9_.\-]{1,32}\Z"),
)
def test_room_message_round_trips_any_content(text: str, ts: float, hops: int, name: str) -> None:
    msg = m.RoomMessage(id="0" * 32, room=name, origin=name, seq=1, text=text, ts=ts, hops=hops)
    frame = encode(msg)
    assert frame.count(b"\n") == 1  # JSON escapes newlines inside strings: still one frame
    assert peer_decoder.decode(frame) == msg


@pytest.mark.parametrize(
    ("frame", "code", "req_id"),
    [
        (b'{"type":"nope","id":3}', ErrorCode.UNKNOWN_TYPE, 3),
        (b'{"id":4}', ErrorCode.UNKNOWN_TYPE, 4),
        (b'{"type":5,"id":2}', ErrorCode.UNKNOWN_TYPE, 2),
        (b'{"type":"login","id":4,"username":"a"}', ErrorCode.BAD_REQUEST, 4),
        (b'{"type":"search","id":5,"username":7}', ErrorCode.BAD_REQUEST, 5),
        (b'{"type":"search","id":"5","username":"x"}', ErrorCode.BAD_REQUEST, None),
        (b'{"type":"nope","id":true}', ErrorCode.UNKNOWN_TYPE, None),
        (b'{"type":"nope","id":1.5}', ErrorCode.UNKNOWN_TYPE, None),
        (b'{"type":"logout"}', ErrorCode.BAD_REQUEST, None),
        (b'{"type":', ErrorCode.BAD_FRAME, None),
        (b'{"type":"logout","id":1', ErrorCode.BAD_FRAME, None),
        (b"hello", ErrorCode.BAD_FRAME, None),
        (b"\xff\xfe", ErrorCode.BAD_FRAME, None),
    ],
)
def test_decode_error_classification(frame: bytes, code: ErrorCode, req_id: int | None) -> None:
    with pytest.raises(msgspec.MsgspecError) as info:
        request_decoder.decode(frame)
    err = decode_error(frame, info.value)
    assert (err.code, err.id) == (code, req_id)
    assert err.reason
    assert reply_decoder.decode(encode(err)) == err


def test_decode_error_for_peer_frames() -> None:
    frame = b'{"type":"room_msg","id":"x","room":"den"}'
    with pytest.raises(msgspec.ValidationError) as info:
        peer_decoder.decode(frame)
    err = decode_error(frame, info.value)
    assert err.code == ErrorCode.BAD_REQUEST and err.id is None  # a string id is not kept


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("a", True),
        ("a" * 32, True),
        ("a" * 33, False),
        ("", False),
        ("Alice_1.x-Y", True),
        ("...", True),
        ("é", False),
        ("naïve", False),
        ("名前", False),
        ("\u0661", False),  # ARABIC-INDIC DIGIT ONE: a digit to str.isdigit, not to us
        ("\uff41bc", False),  # fullwidth a
        ("\u212a", False),  # KELVIN SIGN, which case-folds to "k"
        ("a b", False),
        ("abc\n", False),
        ("ab/c", False),
        ("ab\x00", False),
    ],
)
def test_valid_name(name: str, ok: bool) -> None:
    assert valid_name(name) is ok


@pytest.mark.parametrize(
    ("text", "ok"),
    [("", False), ("x", True), ("x" * 4096, True), ("x" * 4097, False), ("é" * 2048, True)],
)
def test_text_size_is_counted_in_utf8_bytes(text: str, ok: bool) -> None:
    assert text_size_ok(text) is ok
    assert text_size_ok("é" * 2049) is False


@pytest.mark.parametrize(
    ("host", "ok"),
    [("127.0.0.1", True), ("::1", True), ("peer.example.org", True), ("", False), ("a b", False)],
)
def test_valid_host(host: str, ok: bool) -> None:
    assert m.valid_host(host) is ok


def test_heartbeat_macs_bind_the_key_the_session_and_the_sequence_number() -> None:
    key = bytes(range(32))
    mac = m.heartbeat_mac(key, "s3ss10n", 7)
    assert len(mac) == 64 and mac == m.heartbeat_mac(key, "s3ss10n", 7)
    # what docs/protocol.md says it is, so that other clients can make it
    expected = hmac.new(key, b"p2pchat-ping\x00s3ss10n\x007", hashlib.sha256).hexdigest()
    assert mac == expected
    for other in (
        m.heartbeat_mac(bytes(32), "s3ss10n", 7),
        m.heartbeat_mac(key, "s3ss10m", 7),
        m.heartbeat_mac(key, "s3ss10n", 8),
        m.heartbeat_mac(key, "s3ss10n7", 0),  # the separator keeps fields apart
    ):
        assert other != mac


@pytest.mark.parametrize("size", [0, 1, 2, 31, 32, 33, 64, 400])
def test_binary_fields_are_base64url_without_padding(size: int) -> None:
    data = bytes(range(256))[:size] * 2
    text = m.b64(data)
    assert "=" not in text and "+" not in text and "/" not in text
    assert m.unb64(text) == data


def test_keys_signatures_and_certificates_have_their_exact_shapes() -> None:
    assert len(KEY) == 43 and len(SIG) == 86
    decoder = msgspec.json.Decoder(m.Login)
    login = {"type": "login", "id": 1, "username": "a", "password": "p", "port": 1}
    for bad in (KEY[:-1], KEY + "A", KEY[:-1] + "=", KEY[:-1] + "+", m.b64(bytes(33))):
        with pytest.raises(msgspec.ValidationError):
            decoder.decode(msgspec.json.encode({**login, "key": bad}))
    assert decoder.decode(msgspec.json.encode({**login, "key": KEY})).key == KEY


# ------------------------------------------------------------------ limits declared on the types


def _frame(**fields: object) -> bytes:
    return msgspec.json.encode(fields)


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        (
            {"type": "register", "id": 1, "username": "a b", "password": "secret1"},
            "invalid_username",
        ),
        (
            {"type": "register", "id": 1, "username": "a" * 33, "password": "secret1"},
            "invalid_username",
        ),
        (
            {"type": "register", "id": 1, "username": "abc\n", "password": "secret1"},
            "invalid_username",
        ),
        ({"type": "register", "id": 1, "username": "ok", "password": "short"}, "invalid_password"),
        (
            {"type": "register", "id": 1, "username": "ok", "password": "p" * 257},
            "invalid_password",
        ),
        ({"type": "create_room", "id": 1, "room": "no room"}, "invalid_room"),
        ({"type": "search", "id": 1, "username": "x/y"}, "no_such_user"),
        ({"type": "join_room", "id": 1, "room": ""}, "no_such_room"),
        ({"type": "members", "id": 1, "room": "é"}, "no_such_room"),
        (
            {"type": "login", "id": 1, "username": "x y", "password": "p", "port": 1},
            "wrong_password",
        ),
        (
            {"type": "login", "id": 1, "username": "x", "password": "p" * 257, "port": 1},
            "wrong_password",
        ),
        ({"type": "login", "id": 1, "username": "x", "password": "p", "port": 0}, "bad_request"),
        (
            {"type": "login", "id": 1, "username": "x", "password": "p", "port": 65536},
            "bad_request",
        ),
        (
            {
                "type": "login",
                "id": 1,
                "username": "x",
                "password": "p",
                "port": 1,
                "host": "h" * 65,
            },
            "bad_request",
        ),
        (
            {
                "type": "login",
                "id": 1,
                "username": "x",
                "password": "p",
                "port": 1,
                "ticket": "t" * 129,
            },
            "bad_request",
        ),
        ({"type": "hello", "id": 1, "version": 1, "agent": "a" * 129}, "bad_request"),
        ({"type": "ping", "id": 1, "session": "t" * 129, "seq": 1, "mac": MAC}, "bad_request"),
        ({"type": "ping", "id": 1, "session": "t", "seq": 0, "mac": MAC}, "bad_request"),
        ({"type": "ping", "id": 1, "session": "t", "seq": 2**53 + 1, "mac": MAC}, "bad_request"),
        ({"type": "ping", "id": 1, "session": "t", "seq": 1, "mac": "AB" * 32}, "bad_request"),
        ({"type": "ping", "id": 1, "session": "t", "seq": 1, "mac": "ab"}, "bad_request"),
        ({"type": "ping", "id": 1, "token": "t"}, "bad_request"),  # version 1's ping
        (
            {"type": "login", "id": 1, "username": "x", "password": "p", "port": 1, "key": "k"},
            "bad_request",
        ),
        ({"type": "resume", "id": 1, "port": 0}, "bad_request"),
        ({"type": "resume", "id": 1, "port": 1, "host": "h" * 65}, "bad_request"),
        ({"type": "users", "id": 1, "after": "a" * 33}, "bad_request"),
        ({"type": "vouch", "id": 1}, "unknown_type"),  # gone in version 2
        ({"type": "search", "id": 1, "username": 7}, "bad_request"),  # a wrong type is not a rule
    ],
)
def test_field_limits_are_declared_on_the_types(fields: dict[str, object], code: str) -> None:
    frame = _frame(**fields)
    with pytest.raises(msgspec.ValidationError) as info:
        m.decode(request_decoder, frame)
    err = decode_error(frame, info.value)
    assert (err.code, err.id) == (code, 1)
    assert len(err.reason) < 300


@pytest.mark.parametrize(
    "fields",
    [
        {"type": "peer_hello", "version": 1, "username": "a b", "nonce": "n"},
        {"type": "peer_hello", "version": 2, "username": "a", "nonce": "n" * 129},
        {"type": "peer_welcome", "version": 2, "username": "a", "sig": "s"},
        {"type": "peer_welcome", "version": 2, "username": "a", "cert": "c" * 2049},
        {"type": "peer_welcome", "version": 2, "username": "a", "cert": "not base64"},
        {"type": "mesh", "rooms": ["ok", "not ok"]},
        {"type": "mesh", "rooms": ["r"] * (m.MAX_MESH_ROOMS + 1)},
        {"type": "dm", "id": "i" * 65, "sender": "a", "text": "t", "ts": 0},
        {"type": "dm", "id": "i", "sender": "a", "text": "t" * (m.MAX_TEXT + 1), "ts": 0},
        {
            "type": "room_msg",
            "id": "x" * 60_000,
            "room": "r",
            "origin": "a",
            "seq": 1,
            "text": "t",
            "ts": 0,
            "hops": 1,
        },
        {
            "type": "room_msg",
            "id": "a" * 32,
            "room": "r",
            "origin": "é",
            "seq": 1,
            "text": "t",
            "ts": 0,
            "hops": 1,
        },
        {
            "type": "room_msg",
            "id": "A" * 32,  # ids are lowercase hex, of one size
            "room": "r",
            "origin": "a",
            "seq": 1,
            "text": "t",
            "ts": 0,
            "hops": 1,
        },
        {
            "type": "room_msg",
            "id": "a" * 32,
            "room": "r",
            "origin": "a",
            "seq": 1,
            "text": "t",
            "ts": 0,
            "hops": 1,
            "sig": "x" * 85,
        },
        {"type": "dm_ack", "id": "i" * 65},
    ],
)
def test_peer_frames_have_their_limits_too(fields: dict[str, object]) -> None:
    with pytest.raises(msgspec.ValidationError):
        m.decode(peer_decoder, _frame(**fields))


def test_the_longest_valid_requests_fit_well_inside_a_frame() -> None:
    longest = m.Login(
        id=2**53,
        username="u" * 32,
        password="\U0001f600" * 256,
        port=65535,
        host="h" * 64,
        ticket="t" * 128,
        key=KEY,
    )
    assert len(encode(longest)) < 4096
    assert request_decoder.decode(encode(longest)) == longest


@pytest.mark.parametrize("depth", [100, 1_000, 50_000])
@pytest.mark.parametrize("where", ["unknown field", "top", "id"])
def test_deep_nesting_is_a_bad_frame_not_a_crash(depth: int, where: str) -> None:
    nest = b"[" * depth + b"]" * depth
    frame = {
        "unknown field": b'{"type":"hello","id":1,"version":1,"x":' + nest + b"}",
        "top": nest,
        "id": b'{"type":"hello","version":1,"id":' + nest + b"}",
    }[where]
    for decoder in (request_decoder, peer_decoder, reply_decoder):
        try:
            m.decode(decoder, frame)
        except msgspec.MsgspecError as exc:
            err = decode_error(frame, exc)
            assert err.code in {"bad_frame", "bad_request", "unknown_type"}
        else:
            assert depth < 1000 and where == "unknown field"  # shallow enough to skip


def test_deep_nesting_past_the_recursion_limit_gets_bad_frame() -> None:
    frame = b'{"type":"hello","id":1,"version":1,"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(RecursionError):
        request_decoder.decode(frame)  # what msgspec itself does
    with pytest.raises(msgspec.DecodeError) as info:
        m.decode(request_decoder, frame)
    assert decode_error(frame, info.value).code == ErrorCode.BAD_FRAME


@pytest.mark.parametrize(
    ("decoder", "frame"),
    [
        (request_decoder, b'{"type":"hello","id":1,"version":1,"agent":"\xff"}'),
        (peer_decoder, b'{"type":"dm","id":"\xb3","sender":"a","text":"t","ts":0}'),
    ],
)
def test_bytes_that_are_not_utf8_inside_a_string_get_bad_frame(
    decoder: msgspec.json.Decoder[typing.Any], frame: bytes
) -> None:
    with pytest.raises(UnicodeDecodeError):
        decoder.decode(frame)  # what msgspec itself does (the fuzz test found it)
    with pytest.raises(msgspec.DecodeError) as info:
        m.decode(decoder, frame)
    assert decode_error(frame, info.value).code == ErrorCode.BAD_FRAME


def test_a_reply_with_a_code_from_a_newer_registry_still_decodes() -> None:
    reply = m.decode_reply(b'{"type":"error","id":3,"code":"brand_new","reason":"r"}')
    assert isinstance(reply, m.Error) and (reply.id, reply.code) == (3, "brand_new")
    with pytest.raises(msgspec.MsgspecError):
        m.decode_reply(b'{"type":"nonsense"}')
    with pytest.raises(msgspec.MsgspecError):
        m.decode_reply(b"[" * 100_000)


@pytest.mark.parametrize(
    ("a", "b", "alike"),
    [
        ("alice", "aIice", True),
        ("alice", "alice.", True),
        ("alice", "a1ice", True),
        ("alice", "ALICE", True),
        ("alice", "a-l_i.c-e", True),
        ("modern", "rnodern", True),
        ("bob0", "bobo", True),
        ("alice", "alicia", False),
        ("bob", "rob", False),
        ("...", "---", False),  # separators only: their own skeleton
        ("u00001", "u00002", False),
    ],
)
def test_skeleton(a: str, b: str, alike: bool) -> None:
    assert (m.skeleton(a) == m.skeleton(b)) is alike
