"""Every message type on the wire, and the one place that encodes and decodes them.

Messages are msgspec Structs in tagged unions (the ``type`` field), so decoding and validating
a frame is a single pass. ``docs/protocol.md`` describes each of them for other implementers.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import ipaddress
import re
from typing import Any, Literal

import msgspec

PROTOCOL_VERSION = 1

NAME_RE = re.compile(r"[A-Za-z0-9_.\-]{1,32}")
"""Usernames and room ids: 1-32 letters, digits, ``_``, ``.``, ``-``."""
PASSWORD_MIN = 6
PASSWORD_MAX = 256
MAX_TEXT = 4096
"""Largest chat text in UTF-8 bytes."""


def valid_name(name: str) -> bool:
    """True if ``name`` is a well-formed username or room id."""
    return NAME_RE.fullmatch(name) is not None and name.isascii()


def valid_host(host: str) -> bool:
    """An address a peer may advertise: an IP literal or a DNS name."""
    if not host or len(host) > 64:
        return False
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        labels = host.rstrip(".").split(".")
        return all(
            0 < len(lb) <= 63 and lb.replace("-", "").isalnum() and lb.isascii() for lb in labels
        )


def valid_password(password: str) -> bool:
    return PASSWORD_MIN <= len(password) <= PASSWORD_MAX


def text_size_ok(text: str) -> bool:
    """1 to MAX_TEXT bytes of UTF-8. Short texts need no encoding to know (4 bytes a char at
    most): this runs for every room message received."""
    n = len(text)
    return n > 0 and (n * 4 <= MAX_TEXT or len(text.encode()) <= MAX_TEXT)


class ErrorCode(enum.StrEnum):
    """Stable error codes; clients switch on these, people read the reason beside them."""

    BAD_FRAME = "bad_frame"
    UNKNOWN_TYPE = "unknown_type"
    BAD_REQUEST = "bad_request"
    FRAME_TOO_LARGE = "frame_too_large"
    UNSUPPORTED_VERSION = "unsupported_version"
    HELLO_REQUIRED = "hello_required"
    NOT_LOGGED_IN = "not_logged_in"
    ALREADY_LOGGED_IN = "already_logged_in"
    INVALID_USERNAME = "invalid_username"
    INVALID_PASSWORD = "invalid_password"
    NAME_TAKEN = "name_taken"
    NO_SUCH_USER = "no_such_user"
    WRONG_PASSWORD = "wrong_password"
    ALREADY_ONLINE = "already_online"
    RATE_LIMITED = "rate_limited"
    INVALID_ROOM = "invalid_room"
    ROOM_EXISTS = "room_exists"
    NO_SUCH_ROOM = "no_such_room"
    NOT_A_MEMBER = "not_a_member"
    ALREADY_MEMBER = "already_member"
    PRIVATE_ROOM = "private_room"
    NOT_OWNER = "not_owner"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    INTERNAL = "internal"
    NOT_VOUCHED = "not_vouched"
    # peer-to-peer
    TEXT_TOO_LONG = "text_too_long"


class Message(msgspec.Struct, tag_field="type", omit_defaults=True, kw_only=True):
    """Base of every message; the subclass's tag is its ``type``."""


# ---------------------------------------------------------------- client -> registry (TCP)


class Hello(Message, tag="hello"):
    """First request of every registry session; carries the protocol version."""

    id: int
    version: int
    agent: str = ""


class Register(Message, tag="register"):
    id: int
    username: str
    password: str


class Login(Message, tag="login"):
    """``port`` is the peer's own listener; ``host`` overrides the source address we see."""

    id: int
    username: str
    password: str
    port: int
    host: str | None = None


class Logout(Message, tag="logout"):
    id: int


class Ping(Message, tag="ping"):
    """Heartbeat. Over UDP it has no id and gets no reply; over TCP it has one and gets ``ok``."""

    token: str
    id: int | None = None


class Search(Message, tag="search"):
    id: int
    username: str


LIST_LIMIT = 200
"""Most rows in one listing reply, so that a reply always fits in a frame."""


class ListUsers(Message, tag="users"):
    """Online users, by name; page with ``after`` (the last name seen) and ``limit``."""

    id: int
    after: str | None = None
    limit: int = LIST_LIMIT


class CreateRoom(Message, tag="create_room"):
    id: int
    room: str
    private: bool = False


class JoinRoom(Message, tag="join_room"):
    id: int
    room: str


class LeaveRoom(Message, tag="leave_room"):
    id: int
    room: str


class AddMember(Message, tag="add_member"):
    id: int
    room: str
    username: str


class RemoveMember(Message, tag="remove_member"):
    id: int
    room: str
    username: str


class ListRooms(Message, tag="rooms"):
    id: int
    after: str | None = None
    limit: int = LIST_LIMIT


LinkRole = Literal["dial", "accept"]


class Vouch(Message, tag="vouch"):
    """Ask the registry whether ``proof`` shows that ``username`` is who a peer link claims.

    ``proof`` must be ``link_proof(token of username's session, role, nonce, username, peer)``
    (``role``: how ``username`` came to the link, ``dial`` or ``accept``), and ``peer`` must be
    the asker itself, so a proof made for one peer cannot be replayed to another.
    """

    id: int
    username: str
    peer: str
    role: LinkRole
    nonce: str
    proof: str


class ListMembers(Message, tag="members"):
    id: int
    room: str
    after: str | None = None
    limit: int = LIST_LIMIT


RegistryRequest = (
    Hello
    | Register
    | Login
    | Logout
    | Ping
    | Search
    | ListUsers
    | CreateRoom
    | JoinRoom
    | LeaveRoom
    | AddMember
    | RemoveMember
    | ListRooms
    | ListMembers
    | Vouch
)

# ---------------------------------------------------------------- registry -> client (TCP)


class Welcome(Message, tag="welcome"):
    id: int
    version: int
    server: str
    udp_port: int
    heartbeat_interval: float
    timeout: float


class Ok(Message, tag="ok"):
    id: int


class LoggedIn(Message, tag="logged_in"):
    id: int
    username: str
    token: str
    host: str
    port: int
    udp_port: int
    heartbeat_interval: float
    timeout: float


class SearchResult(Message, tag="search_result"):
    id: int
    username: str
    online: bool
    host: str | None = None
    port: int | None = None


class UserAddr(msgspec.Struct, omit_defaults=True, kw_only=True):
    username: str
    host: str
    port: int


class UserList(Message, tag="user_list"):
    id: int
    users: list[UserAddr]
    more: bool = False


class RoomInfo(msgspec.Struct, kw_only=True):
    room: str
    private: bool
    owner: str
    members: int
    online: int
    member: bool


class RoomList(Message, tag="room_list"):
    id: int
    rooms: list[RoomInfo]
    more: bool = False


class MemberInfo(msgspec.Struct, omit_defaults=True, kw_only=True):
    username: str
    online: bool
    owner: bool = False
    host: str | None = None
    port: int | None = None


class MemberList(Message, tag="member_list"):
    id: int
    room: str
    members: list[MemberInfo]
    more: bool = False


class Error(Message, tag="error"):
    """Error reply. ``id`` is the request's id, or null when the frame had none."""

    id: int | None
    code: str
    reason: str
    retry_after: float | None = None


RoomChange = Literal["online", "offline", "joined", "left", "added", "removed"]


class RoomEvent(Message, tag="room_event"):
    """Pushed to online members of ``room``: ``username`` came online, left, was added...

    ``host``/``port`` are given when the user is online. ``by`` names who added or removed.
    """

    room: str
    username: str
    change: RoomChange
    host: str | None = None
    port: int | None = None
    by: str | None = None


class Bye(Message, tag="bye"):
    """Sent by the registry just before it closes a session itself."""

    code: str
    reason: str


RegistryReply = (
    Welcome
    | Ok
    | LoggedIn
    | SearchResult
    | UserList
    | RoomList
    | MemberList
    | Error
    | RoomEvent
    | Bye
)

# ---------------------------------------------------------------- peer <-> peer (TCP)


class PeerHello(Message, tag="peer_hello"):
    """First frame of a link, from the dialing peer. ``nonce``: what the acceptor must prove."""

    version: int
    username: str
    nonce: str


class PeerWelcome(Message, tag="peer_welcome"):
    """The acceptor's answer: its proof for the dialer's nonce, and a nonce of its own."""

    version: int
    username: str
    nonce: str
    proof: str


class PeerProof(Message, tag="peer_proof"):
    """The dialer's proof for the acceptor's nonce; the link is open once it is vouched for."""

    proof: str


class MeshRooms(Message, tag="mesh"):
    """The complete set of rooms for which the sender holds this link as a mesh link.

    Replaces the previous set; an empty list means the sender no longer needs the link.
    """

    rooms: list[str]


class DirectMessage(Message, tag="dm"):
    id: str
    sender: str
    text: str
    ts: float


class DirectAck(Message, tag="dm_ack"):
    id: str


class RoomMessage(Message, tag="room_msg"):
    """A flooded room message. ``hops`` is how many more links it may cross."""

    id: str
    room: str
    origin: str
    text: str
    ts: float
    hops: int


class PeerError(Message, tag="peer_error"):
    code: str
    reason: str
    id: str | None = None


# Tree push of room messages (Plumtree): payloads along a tree, ids on the other mesh links.

MESSAGE_ID_RE = re.compile(r"[0-9a-f]{32}")
"""Room message ids under tree push: 128 random bits as 32 lowercase hex digits."""
MAX_IDS_PER_FRAME = 1024
"""Most ids in one ``ihave`` or ``graft``; a frame with more is dropped."""


def valid_message_id(mid: str) -> bool:
    """True if ``mid`` is 32 lowercase hex digits (a fixed size keeps seen caches bounded)."""
    return len(mid) == 32 and MESSAGE_ID_RE.fullmatch(mid) is not None


class IHave(Message, tag="ihave"):
    """Ids of ``origin``'s messages in ``room`` that the sender has, announced instead of
    pushing the payloads over this link; batched."""

    room: str
    origin: str
    ids: list[str]


class Graft(Message, tag="graft"):
    """Asks the receiver to push ``origin``'s messages in ``room`` over this link again, and
    to send the payloads of ``ids`` (which may be empty) now."""

    room: str
    origin: str
    ids: list[str]


class Prune(Message, tag="prune"):
    """Asks the receiver to stop pushing ``origin``'s messages in ``room`` over this link and
    to announce their ids instead: the sender gets them first over another link."""

    room: str
    origin: str


PeerFrame = (
    PeerHello
    | PeerWelcome
    | PeerProof
    | MeshRooms
    | DirectMessage
    | DirectAck
    | RoomMessage
    | PeerError
    | IHave
    | Graft
    | Prune
)


def link_proof(token: str, role: LinkRole, nonce: str, prover: str, verifier: str) -> str:
    """What a peer sends to show it holds ``prover``'s registry session, for one link.

    An HMAC of the verifier's nonce, both names and the prover's role, keyed with the session
    token that only the prover and the registry know; the verifier asks the registry to check
    it (``vouch``). The role keeps an acceptor's proof (made for a nonce the dialer chose) from
    being relayed as a dialer's proof to a third peer.
    """
    msg = f"p2pchat-link\0{role}\0{nonce}\0{prover}\0{verifier}".encode()
    return hmac.new(token.encode(), msg, hashlib.sha256).hexdigest()


# ---------------------------------------------------------------- codec

_encoder = msgspec.json.Encoder()


def encode(msg: Message) -> bytes:
    """One frame: the JSON of ``msg`` and a newline."""
    return _encoder.encode(msg) + b"\n"


class _IdOnly(msgspec.Struct):
    id: Any = None


def decode_error(frame: bytes, exc: msgspec.MsgspecError) -> Error:
    """The error reply for a frame that failed to decode, keeping its id when it has one."""
    if isinstance(exc, msgspec.ValidationError):
        try:
            raw_id = msgspec.json.decode(frame, type=_IdOnly).id
        except msgspec.MsgspecError:
            raw_id = None
        req_id = raw_id if isinstance(raw_id, int) and not isinstance(raw_id, bool) else None
        text = str(exc)[:200]
        if "`$.type`" in text or "field `type`" in text:
            return Error(id=req_id, code=ErrorCode.UNKNOWN_TYPE, reason=f"unknown type: {text}")
        return Error(id=req_id, code=ErrorCode.BAD_REQUEST, reason=f"bad request: {text}")
    return Error(id=None, code=ErrorCode.BAD_FRAME, reason=f"not JSON: {str(exc)[:200]}")


request_decoder: msgspec.json.Decoder[RegistryRequest] = msgspec.json.Decoder(RegistryRequest)
reply_decoder: msgspec.json.Decoder[RegistryReply] = msgspec.json.Decoder(RegistryReply)
peer_decoder: msgspec.json.Decoder[PeerFrame] = msgspec.json.Decoder(PeerFrame)
ping_decoder: msgspec.json.Decoder[Ping] = msgspec.json.Decoder(Ping)
