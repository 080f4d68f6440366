"""Every message type on the wire, and the one place that encodes and decodes them.

Messages are msgspec Structs in tagged unions (the ``type`` field), so decoding and validating
a frame is a single pass. ``docs/protocol.md`` describes each of them for other implementers.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import ipaddress
import re
from typing import Annotated, Any, Literal, TypeVar

import msgspec

PROTOCOL_VERSION = 2
"""2: TLS on every connection, registry-issued certificates, signed room messages."""

NAME_PATTERN = r"^[A-Za-z0-9_.\-]{1,32}\Z"
NAME_RE = re.compile(NAME_PATTERN)
"""Usernames and room ids: 1-32 letters, digits, ``_``, ``.``, ``-``."""
PASSWORD_MIN = 6
PASSWORD_MAX = 256
MAX_TEXT = 4096
"""Largest chat text in UTF-8 bytes."""
MAX_HOST = 64
MAX_SECRET = 128
"""Longest token, ticket, nonce or proof; the registry's own are 32 to 64 characters."""
MAX_MSG_ID = 64
"""Longest message id; the reference peer's are 32 hex digits."""
MAX_MESH_ROOMS = 256
"""Most rooms in one ``mesh`` frame; a longer announcement is split over several."""

# ---------------------------------------------------------------- field types
#
# Limits are declared once, here, on the types of the fields: a frame that breaks one fails to
# decode, so no handler sees it. ``decode_error`` turns such a failure into the error reply
# (``FIELD_ERRORS`` names the few fields whose failure has a code of its own).

Name = Annotated[str, msgspec.Meta(pattern=NAME_PATTERN)]
"""A username or room id."""
Cursor = Annotated[str, msgspec.Meta(max_length=32)]
"""Where a listing resumes: a name, though any string up to 32 characters sorts."""
Password = Annotated[str, msgspec.Meta(max_length=PASSWORD_MAX)]
NewPassword = Annotated[str, msgspec.Meta(min_length=PASSWORD_MIN, max_length=PASSWORD_MAX)]
Host = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_HOST)]
Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
Secret = Annotated[str, msgspec.Meta(max_length=MAX_SECRET)]
"""A session token, login ticket, nonce or proof."""
Agent = Annotated[str, msgspec.Meta(max_length=128)]
Reason = Annotated[str, msgspec.Meta(max_length=1024)]
MsgId = Annotated[str, msgspec.Meta(max_length=MAX_MSG_ID)]
Text = Annotated[str, msgspec.Meta(max_length=MAX_TEXT)]
"""Chat text: at most MAX_TEXT characters here; the byte bound is ``text_size_ok``."""
MeshList = Annotated[list[Name], msgspec.Meta(max_length=MAX_MESH_ROOMS)]
B64_RE = r"[A-Za-z0-9_-]"
PublicKey = Annotated[str, msgspec.Meta(pattern=f"^{B64_RE}{{43}}\\Z")]
"""An Ed25519 public key: 32 bytes, base64url without padding (``b64``)."""
Signature = Annotated[str, msgspec.Meta(pattern=f"^(?:{B64_RE}{{86}})?\\Z")]
"""An Ed25519 signature: 64 bytes, base64url without padding; empty only where a registry or
benchmark runs without signatures."""
Certificate = Annotated[str, msgspec.Meta(max_length=2048, pattern=f"^{B64_RE}+\\Z")]
"""A user certificate: X.509 DER, base64url without padding (about 400 characters)."""
Mac = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}\\Z")]
MessageId = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{32}\\Z")]
"""A room message id: 128 random bits as 32 lowercase hex digits (a fixed size keeps seen
caches bounded in bytes as well as in count)."""
Seq = Annotated[int, msgspec.Meta(ge=1, le=2**53)]
Count = Annotated[int, msgspec.Meta(ge=0, le=2**53)]


def b64(data: bytes) -> str:
    """Binary fields on the wire: base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    """The bytes of a ``b64`` field (already checked against its pattern when decoded)."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def valid_name(name: str) -> bool:
    """True if ``name`` is a well-formed username or room id."""
    return NAME_RE.fullmatch(name) is not None and name.isascii()


_CONFUSABLE = str.maketrans({"0": "o", "1": "l", "i": "l", "5": "s", "2": "z", "8": "b"})
_CONFUSABLE_PAIRS = (("rn", "m"), ("vv", "w"), ("cl", "d"))


def skeleton(name: str) -> str:
    """What ``name`` looks like: names with the same skeleton are too alike to coexist.

    Case is ignored; ``.``, ``-`` and ``_`` are ignored; ``0``/``o``, ``1``/``l``/``I``/``i``,
    ``5``/``s``, ``2``/``z``, ``8``/``b`` and ``rn``/``m``, ``vv``/``w``, ``cl``/``d`` count
    as the same. (A name of separators only is its own skeleton.)
    """
    s = name.casefold()
    stripped = s.replace(".", "").replace("-", "").replace("_", "")
    if not stripped:
        return s
    s = stripped.translate(_CONFUSABLE)
    for pair, one in _CONFUSABLE_PAIRS:
        s = s.replace(pair, one)
    return s


def valid_host(host: str) -> bool:
    """An address a peer may advertise: an IP literal or a DNS name."""
    if not host or len(host) > MAX_HOST:
        return False
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        labels = host.rstrip(".").split(".")
        return all(
            0 < len(lb) <= 63 and lb.replace("-", "").isalnum() and lb.isascii() for lb in labels
        )


def text_size_ok(text: str) -> bool:
    """1 to MAX_TEXT bytes of UTF-8. Short texts need no encoding to know (4 bytes a char at
    most): this runs for every room message received."""
    n = len(text)
    return n > 0 and (n * 4 <= MAX_TEXT or len(text.encode()) <= MAX_TEXT)


class ErrorCode(enum.StrEnum):
    """Stable error codes; clients switch on these, people read the reason beside them.

    ``bye`` frames use them too (``timeout``, ``shutdown``, ``too_many_connections``).
    """

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
    BANNED = "banned"
    TOO_MANY_ROOMS = "too_many_rooms"
    ADVERTISE_NOT_ALLOWED = "advertise_not_allowed"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    OVERLOADED = "overloaded"
    STORAGE_ERROR = "storage_error"
    INTERNAL = "internal"
    CERT_REFUSED = "cert_refused"
    # in bye only
    TIMEOUT = "timeout"
    SHUTDOWN = "shutdown"
    # peer-to-peer
    TEXT_TOO_LONG = "text_too_long"
    LINK_CROSSED = "link_crossed"


class Message(msgspec.Struct, tag_field="type", omit_defaults=True, kw_only=True):
    """Base of every message; the subclass's tag is its ``type``."""


# ---------------------------------------------------------------- client -> registry (TCP)


class Hello(Message, tag="hello"):
    """First request of every registry session; carries the protocol version."""

    id: int
    version: int
    agent: Agent = ""


class Register(Message, tag="register"):
    id: int
    username: Name
    password: NewPassword


class Login(Message, tag="login"):
    """``port`` is the peer's own listener; ``host`` overrides the source address we see (if
    the registry allows it). ``ticket``, from an earlier ``logged_in``, spares its holder the
    throttles that others' wrong guesses cause. ``key``: the peer's Ed25519 public key, for
    which the registry issues a certificate naming the user (peers need one to link)."""

    id: int
    username: Name
    password: Password
    port: Port
    host: Host | None = None
    ticket: Secret | None = None
    key: PublicKey | None = None


class Resume(Message, tag="resume"):
    """Log in again without the password: only on a connection whose TLS client certificate is
    a valid one of this registry, for the key the account has now (after a registry restart,
    this spares the registry a password hash per returning peer)."""

    id: int
    port: Port
    host: Host | None = None


class Renew(Message, tag="renew"):
    """A fresh certificate for the logged-in user's key (certificates last a day)."""

    id: int


class Logout(Message, tag="logout"):
    id: int


class Ping(Message, tag="ping"):
    """Heartbeat. Over UDP it has no id and gets no reply; over TCP it has one and gets ``ok``.

    ``mac`` is ``heartbeat_mac(heartbeat_key, session, seq)``; ``seq`` must grow from one ping
    to the next, so a captured ping cannot be played again, and no secret travels in clear.
    """

    session: Secret
    seq: Seq
    mac: Mac
    id: int | None = None


class Search(Message, tag="search"):
    id: int
    username: Name


LIST_LIMIT = 200
"""Most rows in one listing reply, so that a reply always fits in a frame."""


class ListUsers(Message, tag="users"):
    """Online users, by name; page with ``after`` (the last name seen) and ``limit``."""

    id: int
    after: Cursor | None = None
    limit: int = LIST_LIMIT


class CreateRoom(Message, tag="create_room"):
    id: int
    room: Name
    private: bool = False


class JoinRoom(Message, tag="join_room"):
    id: int
    room: Name


class LeaveRoom(Message, tag="leave_room"):
    id: int
    room: Name


class AddMember(Message, tag="add_member"):
    """``may_add`` (the owner only): whether the member may add others to a private room."""

    id: int
    room: Name
    username: Name
    may_add: bool | None = None


class RemoveMember(Message, tag="remove_member"):
    """``ban``: the removed user cannot come back until the owner sends ``unban``."""

    id: int
    room: Name
    username: Name
    ban: bool = False


class Unban(Message, tag="unban"):
    id: int
    room: Name
    username: Name


class ListRooms(Message, tag="rooms"):
    """Visible rooms; with ``mine``, only the rooms the user belongs to."""

    id: int
    after: Cursor | None = None
    limit: int = LIST_LIMIT
    mine: bool = False


LinkRole = Literal["dial", "accept"]


class ListMembers(Message, tag="members"):
    id: int
    room: Name
    after: Cursor | None = None
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
    | Unban
    | ListRooms
    | ListMembers
    | Resume
    | Renew
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
    """``ticket``: present it in the next ``login`` (see ``Login``). ``session`` and
    ``heartbeat_key`` are for heartbeats (see ``Ping``; the key is secret). ``cert``: the user
    certificate for the ``key`` of the login (base64url DER)."""

    id: int
    username: str
    session: str
    heartbeat_key: str
    host: str
    port: int
    udp_port: int
    heartbeat_interval: float
    timeout: float
    ticket: str | None = None
    cert: str | None = None


class CertificateReply(Message, tag="certificate"):
    """The answer to ``renew``."""

    id: int
    cert: str


class SearchResult(Message, tag="search_result"):
    """``key``: the user's current public key, when online."""

    id: int
    username: str
    online: bool
    host: str | None = None
    port: int | None = None
    key: str | None = None


class UserAddr(msgspec.Struct, omit_defaults=True, kw_only=True):
    """An online user. The registry no longer lists addresses here (``search`` gives one);
    ``host`` and ``port`` stay optional so that older registries' replies still decode."""

    username: str
    host: str | None = None
    port: int | None = None


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
    """``key``: the member's current public key (room messages are signed with it); ``since``:
    when the member was added (wall clock), for who may see which history."""

    username: str
    online: bool
    owner: bool = False
    host: str | None = None
    port: int | None = None
    key: str | None = None
    since: float | None = None


class MemberList(Message, tag="member_list"):
    id: int
    room: str
    members: list[MemberInfo]
    more: bool = False


class Error(Message, tag="error"):
    """Error reply. ``id`` is the request's id, or null when the frame had none."""

    id: int | None
    code: ErrorCode
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
    key: str | None = None
    since: float | None = None


class Bye(Message, tag="bye"):
    """Sent by the registry just before it closes a session itself."""

    code: ErrorCode
    reason: str


RegistryReply = (
    Welcome
    | Ok
    | LoggedIn
    | CertificateReply
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
    """First frame of a link, from the dialing peer, whose TLS certificate already said who it
    is (``username`` must match it). ``nonce``: what the acceptor signs to prove who it is."""

    version: int
    username: Name
    nonce: Secret


class PeerWelcome(Message, tag="peer_welcome"):
    """The acceptor's answer, now that the dialer is known: its certificate and its signature
    of ``link_statement("accept", nonce, acceptor, dialer)``."""

    version: int
    username: Name
    cert: Certificate | None = None
    sig: Signature = ""


class MeshRooms(Message, tag="mesh"):
    """The complete set of rooms for which the sender holds this link as a mesh link, in one
    frame or, past ``MAX_MESH_ROOMS``, in several: all but the last have ``more``.

    Replaces the previous set; an empty list means the sender no longer needs the link.
    """

    rooms: MeshList
    more: bool = False


class DirectMessage(Message, tag="dm"):
    id: MsgId
    sender: Name
    text: Text
    ts: float


class DirectAck(Message, tag="dm_ack"):
    id: MsgId


class RoomMessage(Message, tag="room_msg"):
    """A room message. ``hops`` is how many more links it may cross; ``sig`` is the origin's
    signature of ``room_message_bytes(room, origin, id, seq, ts, text)``; ``seq`` counts the
    origin's messages in the room (one stream per signing key)."""

    id: MessageId
    room: Name
    origin: Name
    seq: Seq
    ts: float
    text: Text
    hops: int
    sig: Signature = ""


class PeerError(Message, tag="peer_error"):
    code: str
    reason: Reason
    id: MsgId | None = None


# Tree push of room messages (Plumtree): payloads along a tree, ids on the other mesh links.

MESSAGE_ID_RE = re.compile(r"[0-9a-f]{32}")
"""Room message ids under tree push: 128 random bits as 32 lowercase hex digits."""
MAX_IDS_PER_FRAME = 1024
IdList = Annotated[list[MessageId], msgspec.Meta(max_length=MAX_IDS_PER_FRAME)]
"""Most ids in one ``ihave`` or ``graft``; a frame with more is dropped."""


def valid_message_id(mid: str) -> bool:
    """True if ``mid`` is 32 lowercase hex digits (a fixed size keeps seen caches bounded)."""
    return len(mid) == 32 and MESSAGE_ID_RE.fullmatch(mid) is not None


class IHave(Message, tag="ihave"):
    """Ids of ``origin``'s messages in ``room`` that the sender has, announced instead of
    pushing the payloads over this link; batched."""

    room: Name
    origin: Name
    ids: IdList


class Graft(Message, tag="graft"):
    """Asks the receiver to push ``origin``'s messages in ``room`` over this link again, and
    to send the payloads of ``ids`` (which may be empty) now."""

    room: Name
    origin: Name
    ids: IdList


class Prune(Message, tag="prune"):
    """Asks the receiver to stop pushing ``origin``'s messages in ``room`` over this link and
    to announce their ids instead: the sender gets them first over another link."""

    room: Name
    origin: Name


# History and catch-up (docs/protocol.md, "History and catch-up"): two neighbours compare a
# digest of what they hold of a room; on a mismatch they swap per-stream summaries, then each
# asks for the seq ranges it lacks. A stream is one origin's messages in one room under one key.

MAX_SYNC_STREAMS = 1000
"""Most streams in one ``sync_summary`` page, ``sync_request`` or ``sync_batch``."""
MAX_SYNC_RANGES = 32
"""Most seq ranges per stream in a summary or a request."""
MAX_SYNC_MESSAGES = 2000
"""Most messages per stream in one ``sync_batch`` frame."""
MAX_SYNC_SEQ = 2**53 - 1
"""Largest sequence number (exact as a JSON number everywhere)."""

SyncSeq = Annotated[int, msgspec.Meta(ge=1, le=MAX_SYNC_SEQ)]
SyncHigh = Annotated[int, msgspec.Meta(ge=0, le=MAX_SYNC_SEQ)]
SyncRange = tuple[SyncSeq, SyncSeq]
"""Inclusive ``[lo, hi]``; ``lo <= hi`` is checked where it is used."""
SyncRanges = Annotated[list[SyncRange], msgspec.Meta(max_length=MAX_SYNC_RANGES)]
SyncKey = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{43}\Z")]
"""A raw 32-byte Ed25519 public key, base64url without padding."""
SyncSig = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{86}\Z")]
"""A 64-byte Ed25519 signature, base64url without padding."""
SyncDigestText = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{22}\Z")]
"""16 bytes, base64url without padding."""
SyncMsgId = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{32}\Z")]
SyncTime = Annotated[float, msgspec.Meta(ge=0.0, le=1e11)]
SyncRequestId = Annotated[int, msgspec.Meta(ge=0, le=MAX_SYNC_SEQ)]


class SyncStream(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What the sender holds of one stream: every seq up to ``high`` (held, or out of its
    reach), and the ranges ``extra`` above it."""

    origin: Name
    key: SyncKey
    high: SyncHigh
    extra: SyncRanges = []


class SyncDigest(Message, tag="sync_digest"):
    """A digest of the sender's summary of ``room``; equal digests: nothing to exchange."""

    room: Name
    digest: SyncDigestText
    streams: Annotated[int, msgspec.Meta(ge=0, le=10**9)]


class SyncSummary(Message, tag="sync_summary"):
    """One page of the sender's summary of ``room``; ``more``: further pages follow."""

    room: Name
    streams: Annotated[list[SyncStream], msgspec.Meta(max_length=MAX_SYNC_STREAMS)]
    more: bool = False


class SyncWant(msgspec.Struct, kw_only=True):
    origin: Name
    key: SyncKey
    ranges: Annotated[list[SyncRange], msgspec.Meta(min_length=1, max_length=MAX_SYNC_RANGES)]


class SyncRequest(Message, tag="sync_request"):
    """Asks for the messages of these streams in these seq ranges."""

    room: Name
    id: SyncRequestId
    wants: Annotated[list[SyncWant], msgspec.Meta(min_length=1, max_length=MAX_SYNC_STREAMS)]


class SyncEntry(msgspec.Struct, kw_only=True):
    """One message of a stream: the fields its origin signed, and the signature."""

    id: SyncMsgId
    seq: SyncSeq
    ts: SyncTime
    text: Text
    sig: SyncSig


class SyncStreamBatch(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Messages of one stream; ``done``: every seq up to it that was asked and not sent is
    out of the sender's reach (pruned, or not for the asker)."""

    origin: Name
    key: SyncKey
    done: SyncHigh = 0
    msgs: Annotated[list[SyncEntry], msgspec.Meta(max_length=MAX_SYNC_MESSAGES)] = []


SyncRefusal = Literal["busy", "not_member"]


class SyncBatch(Message, tag="sync_batch"):
    """(Part of) the answer to ``sync_request`` ``id``. ``more``: frames of this answer
    follow. ``truncated``: the answer stopped at a bound; ask again for the rest. ``refused``
    (with ``retry_after`` seconds): nothing was served."""

    room: Name
    id: SyncRequestId
    streams: Annotated[list[SyncStreamBatch], msgspec.Meta(max_length=MAX_SYNC_STREAMS)] = []
    more: bool = False
    truncated: bool = False
    refused: SyncRefusal | None = None
    retry_after: Annotated[float, msgspec.Meta(ge=0.0, le=3600.0)] | None = None


SyncFrame = SyncDigest | SyncSummary | SyncRequest | SyncBatch


PeerFrame = (
    PeerHello
    | PeerWelcome
    | MeshRooms
    | DirectMessage
    | DirectAck
    | RoomMessage
    | PeerError
    | IHave
    | Graft
    | Prune
    | SyncFrame
)


def heartbeat_mac(key: bytes, session: str, seq: int) -> str:
    """What a ``ping`` carries to show it comes from the holder of ``session``'s heartbeat key:
    an HMAC of the session and sequence number, so it can be neither forged nor replayed."""
    msg = f"p2pchat-ping\0{session}\0{seq}".encode()
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


# ---------------------------------------------------------------- codec

_encoder = msgspec.json.Encoder()
T = TypeVar("T")


def encode(msg: Message) -> bytes:
    """One frame: the JSON of ``msg`` and a newline."""
    return _encoder.encode(msg) + b"\n"


def decode(decoder: msgspec.json.Decoder[T], frame: bytes) -> T:
    """Decode one frame; every failure is a ``msgspec.MsgspecError``.

    msgspec raises two other exceptions on hostile input: ``RecursionError`` for JSON nested
    deeper than the interpreter's recursion limit, and ``UnicodeDecodeError`` for bytes that
    are not UTF-8 inside a string. Both become a ``DecodeError`` here, so that callers answer
    them like any other malformed frame (``bad_frame``) and close nothing.
    """
    try:
        return decoder.decode(frame)
    except msgspec.MsgspecError:
        raise
    except RecursionError:
        raise msgspec.DecodeError("JSON is malformed: nested too deeply") from None
    except UnicodeDecodeError as exc:
        raise msgspec.DecodeError(f"JSON is malformed: not UTF-8 (byte {exc.start})") from None


class _Head(msgspec.Struct):
    """The two fields an error reply needs from a frame that failed validation."""

    id: Any = None
    type: Any = None


FIELD_ERRORS: dict[tuple[str, str], tuple[ErrorCode, str]] = {
    ("register", "username"): (
        ErrorCode.INVALID_USERNAME,
        "usernames are 1-32 letters, digits, '_', '.' or '-'",
    ),
    ("register", "password"): (
        ErrorCode.INVALID_PASSWORD,
        f"passwords are {PASSWORD_MIN}-{PASSWORD_MAX} characters",
    ),
    ("create_room", "room"): (
        ErrorCode.INVALID_ROOM,
        "room ids are 1-32 letters, digits, '_', '.' or '-'",
    ),
    ("login", "username"): (ErrorCode.WRONG_PASSWORD, "wrong password, or no such user"),
    ("login", "password"): (ErrorCode.WRONG_PASSWORD, "wrong password, or no such user"),
    **{
        (t, "username"): (ErrorCode.NO_SUCH_USER, "no such user (not a valid name)")
        for t in ("search", "add_member", "remove_member", "unban")
    },
    **{
        (t, "room"): (ErrorCode.NO_SUCH_ROOM, "no such room (not a valid room id)")
        for t in ("join_room", "leave_room", "add_member", "remove_member", "unban", "members")
    },
}
"""Requests whose field, present and a string but breaking its rule, has a code of its own:
the codes these requests answered before the rules moved onto the types."""

_FIELD_RE = re.compile(r"^Expected `str` (?:of length|matching regex).* - at `\$\.(\w+)`$")


def decode_error(frame: bytes, exc: msgspec.MsgspecError) -> Error:
    """The error reply for a frame that failed to decode, keeping its id when it has one."""
    if isinstance(exc, msgspec.ValidationError):
        try:
            head = decode(_head_decoder, frame)
        except msgspec.MsgspecError:
            head = _Head()
        raw_id = head.id
        req_id = raw_id if isinstance(raw_id, int) and not isinstance(raw_id, bool) else None
        text = str(exc)[:200]
        if "`$.type`" in text or "field `type`" in text:
            return Error(id=req_id, code=ErrorCode.UNKNOWN_TYPE, reason=f"unknown type: {text}")
        field = _FIELD_RE.match(str(exc))
        if field is not None and isinstance(head.type, str):
            known = FIELD_ERRORS.get((head.type, field[1]))
            if known is not None:
                return Error(id=req_id, code=known[0], reason=known[1])
        return Error(id=req_id, code=ErrorCode.BAD_REQUEST, reason=f"bad request: {text}")
    return Error(id=None, code=ErrorCode.BAD_FRAME, reason=f"not JSON: {str(exc)[:200]}")


class _LenientError(msgspec.Struct, tag="error", tag_field="type", kw_only=True):
    id: int | None
    code: str
    reason: str
    retry_after: float | None = None


def decode_reply(frame: bytes) -> RegistryReply:
    """A registry reply; an ``error`` whose code this version does not know still decodes
    (with its code as a plain string), so that a newer registry's codes fail the request
    instead of leaving it unanswered."""
    try:
        return decode(reply_decoder, frame)
    except msgspec.ValidationError:
        try:
            raw = decode(_lenient_error_decoder, frame)
        except msgspec.MsgspecError:
            raise msgspec.ValidationError("not a registry reply") from None
        code: Any = raw.code
        return Error(id=raw.id, code=code, reason=raw.reason, retry_after=raw.retry_after)


_head_decoder = msgspec.json.Decoder(_Head)
_lenient_error_decoder = msgspec.json.Decoder(_LenientError)
request_decoder: msgspec.json.Decoder[RegistryRequest] = msgspec.json.Decoder(RegistryRequest)
reply_decoder: msgspec.json.Decoder[RegistryReply] = msgspec.json.Decoder(RegistryReply)
peer_decoder: msgspec.json.Decoder[PeerFrame] = msgspec.json.Decoder(PeerFrame)
ping_decoder: msgspec.json.Decoder[Ping] = msgspec.json.Decoder(Ping)
