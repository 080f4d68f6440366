"""Conversations with the registry as pure generators, shared by every client.

A flow yields requests (with ``id`` 0: whoever drives it numbers them) and is sent back each
reply. It never waits, reads a clock or touches a socket, so the same flow runs under asyncio
(``RegistryClient``), inside the peer's sans-IO core (``PeerCore``), and on the simulated
network of the tests. Error replies become ``RegistryError`` inside the flow, so a flow may
catch the codes it expects.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import TypeVar

import msgspec

from p2pchat.protocol.messages import (
    AddMember,
    CertificateReply,
    CreateRoom,
    Error,
    Hello,
    JoinRoom,
    LeaveRoom,
    ListMembers,
    ListRooms,
    ListUsers,
    LoggedIn,
    Login,
    Logout,
    MemberInfo,
    MemberList,
    Message,
    Ok,
    Ping,
    Register,
    RegistryReply,
    RegistryRequest,
    RemoveMember,
    Renew,
    Resume,
    RoomInfo,
    RoomList,
    Search,
    SearchResult,
    Unban,
    UserAddr,
    UserList,
    Welcome,
    b64,
    heartbeat_mac,
    unb64,
)

T = TypeVar("T")
R = TypeVar("R", bound=Message)
P = TypeVar("P", UserList, RoomList, MemberList)

Flow = Generator[RegistryRequest, RegistryReply, T]
"""Yields requests, is sent their replies, returns the outcome."""


class RegistryError(Exception):
    """The registry answered with an error; ``code`` is stable, ``reason`` is for people."""

    def __init__(self, code: str, reason: str, retry_after: float | None = None) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason
        self.retry_after = retry_after


class RegistryClosed(ConnectionError):
    """The session with the registry is over."""


class RegistryUntrusted(RegistryClosed):
    """We refused the registry: its certificate is not the one pinned for its address."""


def numbered(request: RegistryRequest, request_id: int) -> RegistryRequest:
    """``request`` with its id set: flows leave numbering to whoever sends."""
    return msgspec.structs.replace(request, id=request_id)


def call(request: RegistryRequest, expect: type[R]) -> Flow[R]:
    """One request and its reply, which must be an ``expect`` (errors raise)."""
    reply = yield request
    if isinstance(reply, Error):
        raise RegistryError(reply.code, reply.reason, reply.retry_after)
    if not isinstance(reply, expect):
        raise RegistryError("bad_reply", f"expected {expect.__name__}, got {type(reply).__name__}")
    return reply


def pages(request: Callable[[str | None], RegistryRequest], expect: type[P]) -> Flow[list[P]]:
    """Every page of a listing: ask again ``after`` the last name until ``more`` is off."""
    out: list[P] = []
    after: str | None = None
    while True:
        page = yield from call(request(after), expect)
        out.append(page)
        last = _last_name(page)
        if not page.more or last is None:
            return out
        after = last


def _last_name(page: UserList | RoomList | MemberList) -> str | None:
    if isinstance(page, UserList):
        return page.users[-1].username if page.users else None
    if isinstance(page, RoomList):
        return page.rooms[-1].room if page.rooms else None
    return page.members[-1].username if page.members else None


# ---------------------------------------------------------------- the operations


def hello(version: int, agent: str) -> Flow[Welcome]:
    return (yield from call(Hello(id=0, version=version, agent=agent), Welcome))


def register(username: str, password: str) -> Flow[None]:
    yield from call(Register(id=0, username=username, password=password), Ok)


def login(
    username: str,
    password: str,
    port: int,
    host: str | None = None,
    ticket: str | None = None,
    key: bytes | None = None,
) -> Flow[LoggedIn]:
    """``key``: our Ed25519 public key, to be certified for the user."""
    request = Login(
        id=0,
        username=username,
        password=password,
        port=port,
        host=host,
        ticket=ticket,
        key=b64(key) if key is not None else None,
    )
    return (yield from call(request, LoggedIn))


def resume(port: int, host: str | None = None) -> Flow[LoggedIn]:
    return (yield from call(Resume(id=0, port=port, host=host), LoggedIn))


def renew() -> Flow[str]:
    """A fresh certificate (base64url DER) for the logged-in user's key."""
    reply = yield from call(Renew(id=0), CertificateReply)
    return reply.cert


def heartbeat(login: LoggedIn, seq: int, request_id: int | None = None) -> Ping:
    """The ``seq``-th heartbeat of a login (``seq`` must grow from one to the next)."""
    mac = heartbeat_mac(unb64(login.heartbeat_key), login.session, seq)
    return Ping(session=login.session, seq=seq, mac=mac, id=request_id)


def logout() -> Flow[None]:
    yield from call(Logout(id=0), Ok)


def search(username: str) -> Flow[SearchResult]:
    return (yield from call(Search(id=0, username=username), SearchResult))


def users() -> Flow[list[UserAddr]]:
    """Every online user (all pages)."""
    got = yield from pages(lambda after: ListUsers(id=0, after=after), UserList)
    return [user for page in got for user in page.users]


def rooms(mine: bool = False) -> Flow[list[RoomInfo]]:
    """Every room this session can see (all pages); with ``mine``, only its user's."""
    got = yield from pages(lambda after: ListRooms(id=0, after=after, mine=mine), RoomList)
    return [room for page in got for room in page.rooms]


def room_members(room: str) -> Flow[tuple[str, list[MemberInfo]]]:
    """The room's name as the registry spells it, and all its members (all pages)."""
    got = yield from pages(lambda after: ListMembers(id=0, room=room, after=after), MemberList)
    return got[0].room, [member for page in got for member in page.members]


def create_room(room: str, private: bool = False) -> Flow[None]:
    yield from call(CreateRoom(id=0, room=room, private=private), Ok)


def join_room(room: str) -> Flow[None]:
    yield from call(JoinRoom(id=0, room=room), Ok)


def leave_room(room: str) -> Flow[None]:
    yield from call(LeaveRoom(id=0, room=room), Ok)


def add_member(room: str, username: str, may_add: bool | None = None) -> Flow[None]:
    yield from call(AddMember(id=0, room=room, username=username, may_add=may_add), Ok)


def remove_member(room: str, username: str, ban: bool = False) -> Flow[None]:
    yield from call(RemoveMember(id=0, room=room, username=username, ban=ban), Ok)


def unban(room: str, username: str) -> Flow[None]:
    yield from call(Unban(id=0, room=room, username=username), Ok)
