"""The slash commands, shared by the line mode and the terminal UI.

Parsing and running a command is separate from showing its result, so both interfaces offer
exactly the same commands with the same errors.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime

from p2pchat.peer.directs import DirectSent
from p2pchat.peer.events import CommandError, RoomText
from p2pchat.peer.node import PeerNode
from p2pchat.protocol.messages import MemberInfo, RoomInfo, UserAddr

HELP = """\
/register USER PASSWORD   create an account
/login USER PASSWORD      log in (starts heartbeats and joins your rooms' meshes)
/logout                   log out
/quit                     log out and exit
/search USER              is USER online, and where
/users                    who is online
/create ROOM [private]    create a room (you own it and are its first member)
/join ROOM                join a public room
/leave ROOM               leave a room (a few seconds after your last message there)
/add ROOM USER            add USER to a room you are in (the way into private rooms)
/remove ROOM USER         remove USER from a room you own
/ban ROOM USER            remove USER from a room you own and keep them out
/unban ROOM USER          let a banned user back in (to join, or be added)
/allow ROOM USER          let a member of your private room add others to it
/block USER               stop showing USER's messages to you (nobody is told)
/unblock USER             show them again
/blocked                  whom you block
/rooms                    the rooms you can see
/members ROOM             a room's members, who is online and where
/msg USER TEXT            send a direct message (kept and sent later if USER is offline)
/outbox                   your direct messages not yet delivered
/resend [USER]            send the failed direct messages again (to USER, or all)
/history ROOM [N]         the last N messages of ROOM kept here (default 20)
/say ROOM TEXT            send a message to a room
/to ROOM  or  /to @USER   send the plain lines that follow there
/me TEXT                  an action (shown as "* you TEXT") where plain lines go
//TEXT                    send a line that starts with / (as /TEXT)
/clear                    empty the conversation in view (terminal UI)
/help                     this list"""

USAGE = {
    "register": "/register USER PASSWORD",
    "login": "/login USER PASSWORD",
    "logout": "/logout",
    "quit": "/quit",
    "help": "/help",
    "search": "/search USER",
    "users": "/users",
    "create": "/create ROOM [private]",
    "join": "/join ROOM",
    "leave": "/leave ROOM",
    "add": "/add ROOM USER",
    "remove": "/remove ROOM USER",
    "ban": "/ban ROOM USER",
    "unban": "/unban ROOM USER",
    "allow": "/allow ROOM USER",
    "block": "/block USER",
    "unblock": "/unblock USER",
    "blocked": "/blocked",
    "rooms": "/rooms",
    "members": "/members ROOM",
    "msg": "/msg USER TEXT",
    "outbox": "/outbox",
    "resend": "/resend [USER]",
    "history": "/history ROOM [N]",
    "say": "/say ROOM TEXT",
    "to": "/to ROOM  or  /to @USER",
    "me": "/me TEXT",
    "clear": "/clear",
}
COMMANDS = sorted(USAGE)

# how many single-word arguments each command takes, and whether TEXT follows
_SHAPE: dict[str, tuple[int, int, bool]] = {
    "register": (2, 2, False),
    "login": (2, 2, False),
    "logout": (0, 0, False),
    "quit": (0, 0, False),
    "help": (0, 0, False),
    "search": (1, 1, False),
    "users": (0, 0, False),
    "create": (1, 2, False),
    "join": (1, 1, False),
    "leave": (1, 1, False),
    "add": (2, 2, False),
    "remove": (2, 2, False),
    "ban": (2, 2, False),
    "unban": (2, 2, False),
    "allow": (2, 2, False),
    "block": (1, 1, False),
    "unblock": (1, 1, False),
    "blocked": (0, 0, False),
    "rooms": (0, 0, False),
    "members": (1, 1, False),
    "msg": (1, 1, True),
    "outbox": (0, 0, False),
    "resend": (0, 1, False),
    "history": (1, 2, False),
    "say": (1, 1, True),
    "to": (1, 1, False),
    "me": (0, 0, True),
    "clear": (0, 0, False),
}

DEFAULT_HISTORY = 20
MAX_HISTORY = 1000

ACTION = "/me "
"""How an action travels: a plain text starting with this (IRC's /me, without a new message
type); interfaces show it as ``* alice waves``."""


@dataclass(slots=True)
class Result:
    """What a command produced: rows to list, then one summary sentence; and as data, what it
    concerned, so an interface never reads names back out of the printed text."""

    summary: str
    rows: list[str] = field(default_factory=list)
    quit: bool = False
    target: str | None = None
    """Set by ``/to``: the new target for plain lines (a room, or ``@user``)."""
    room: str | None = None
    """The room the command concerned, spelt as the registry spells it."""
    user: str | None = None
    """The user the command concerned."""
    rooms: list[RoomInfo] = field(default_factory=list)
    users: list[UserAddr] = field(default_factory=list)
    members: list[MemberInfo] = field(default_factory=list)
    clear: bool = False
    """``/clear``: empty the conversation in view."""
    links: int | None = None
    """``/say``: how many mesh links the message was handed to."""
    direct: DirectSent | None = None
    """``/msg``: delivered, or queued (its id, to follow its state)."""
    history: list[RoomText] = field(default_factory=list)
    """``/history``: the messages, oldest first."""


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def plain_text(line: str) -> str | None:
    """The text a typed line sends, or None if it is a command. ``//x`` sends ``/x``."""
    body = line.lstrip()
    if body.startswith("//"):
        return body[1:]
    if body.startswith("/"):
        return None
    return line


def is_action(text: str) -> bool:
    return text.startswith(ACTION) and bool(text[len(ACTION) :].strip())


@dataclass(slots=True)
class Command:
    name: str
    args: list[str]
    text: str = ""


def parse(line: str) -> Command:
    """Split ``/name args... [TEXT]``; raises CommandError with the usage on a bad shape."""
    body = line.strip()
    if not body.startswith("/"):
        raise CommandError("not a command")
    name, _, rest = body[1:].partition(" ")
    name = name.lower()
    if name not in _SHAPE:
        raise CommandError(f"unknown command /{name}; /help lists them")
    low, high, has_text = _SHAPE[name]
    if has_text:
        words = rest.strip().split(" ", low)
        if len(words) <= low or not words[low].strip():
            raise CommandError(f"usage: {USAGE[name]}")
        return Command(name, words[:low], words[low].strip())
    args = rest.split()
    if not low <= len(args) <= high:
        raise CommandError(f"usage: {USAGE[name]}")
    if name == "create" and len(args) == 2 and args[1].lower() != "private":
        raise CommandError(f"usage: {USAGE[name]}")
    if (
        name == "history"
        and len(args) == 2
        and not (args[1].isdecimal() and 1 <= int(args[1]) <= MAX_HISTORY)
    ):
        raise CommandError(f"usage: {USAGE[name]} (N from 1 to {MAX_HISTORY})")
    return Command(name, args)


Handler = Callable[[PeerNode, Command], Awaitable[Result]]


async def _register(node: PeerNode, c: Command) -> Result:
    await node.register(c.args[0], c.args[1])
    return Result(f"registered {c.args[0]}; now /login {c.args[0]} PASSWORD", user=c.args[0])


async def _login(node: PeerNode, c: Command) -> Result:
    name = await node.login(c.args[0], c.args[1])
    rooms = ", ".join(node.my_rooms()) or "none yet"
    return Result(f"logged in as {name}, listening on port {node.port}; rooms: {rooms}", user=name)


async def _logout(node: PeerNode, c: Command) -> Result:
    await node.logout()
    return Result("logged out")


async def _quit(node: PeerNode, c: Command) -> Result:
    return Result("bye", quit=True)


async def _help(node: PeerNode, c: Command) -> Result:
    return Result("commands listed above", rows=HELP.splitlines())


async def _search(node: PeerNode, c: Command) -> Result:
    r = await node.search(c.args[0])
    if r.online:
        return Result(f"{r.username} is online at {r.host}:{r.port}", user=r.username)
    return Result(f"{r.username} is offline", user=r.username)


async def _users(node: PeerNode, c: Command) -> Result:
    users = await node.users()
    rows = [f"  {u.username}" for u in users]  # addresses go only to those who need them
    return Result(f"{len(users)} online", rows, users=users)


async def _create(node: PeerNode, c: Command) -> Result:
    private = len(c.args) == 2
    await node.create_room(c.args[0], private)
    room = node.room_name(c.args[0])
    return Result(f"created {'private' if private else 'public'} room {room}", room=room)


async def _join(node: PeerNode, c: Command) -> Result:
    await node.join_room(c.args[0])
    room = node.room_name(c.args[0])
    return Result(f"joined {room}", room=room)


async def _leave(node: PeerNode, c: Command) -> Result:
    room = node.room_name(c.args[0])
    await node.leave_room(room)
    return Result(f"left {room}", room=room)


async def _add(node: PeerNode, c: Command) -> Result:
    await node.add_member(c.args[0], c.args[1])
    return Result(f"added {c.args[1]} to {c.args[0]}", room=c.args[0], user=c.args[1])


async def _remove(node: PeerNode, c: Command) -> Result:
    await node.remove_member(c.args[0], c.args[1])
    return Result(f"removed {c.args[1]} from {c.args[0]}", room=c.args[0], user=c.args[1])


async def _ban(node: PeerNode, c: Command) -> Result:
    await node.remove_member(c.args[0], c.args[1], ban=True)
    room, user = c.args
    return Result(f"removed {user} from {room}; banned until /unban", room=room, user=user)


async def _unban(node: PeerNode, c: Command) -> Result:
    await node.unban(c.args[0], c.args[1])
    return Result(f"{c.args[1]} may come back to {c.args[0]}", room=c.args[0], user=c.args[1])


async def _allow(node: PeerNode, c: Command) -> Result:
    await node.add_member(c.args[0], c.args[1], may_add=True)
    room, user = c.args
    return Result(f"{user} may now add others to {room}", room=room, user=user)


async def _block(node: PeerNode, c: Command) -> Result:
    await node.block(c.args[0])
    return Result(f"blocking {c.args[0]}: their messages are not shown to you", user=c.args[0])


async def _unblock(node: PeerNode, c: Command) -> Result:
    await node.block(c.args[0], blocked=False)
    return Result(f"no longer blocking {c.args[0]}", user=c.args[0])


async def _blocked(node: PeerNode, c: Command) -> Result:
    names = node.blocked()
    return Result(f"blocking {plural(len(names), 'user')}", [f"  {n}" for n in names])


async def _rooms(node: PeerNode, c: Command) -> Result:
    rooms = await node.list_rooms()
    rows = [
        f"  {r.room} {'private' if r.private else 'public'} owner={r.owner} "
        f"members={r.members} online={r.online}{' (member)' if r.member else ''}"
        for r in rooms
    ]
    return Result(plural(len(rooms), "room"), rows, rooms=rooms)


async def _members(node: PeerNode, c: Command) -> Result:
    members = await node.members(c.args[0])
    rows = [
        f"  {m.username} "
        + ("offline" if not m.online else f"online {m.host}:{m.port}" if m.host else "online")
        + (" (owner)" if m.owner else "")
        for m in members
    ]
    online = sum(m.online for m in members)
    summary = f"{plural(len(members), 'member')}, {online} online"
    return Result(summary, rows, room=node.room_name(c.args[0]), members=members)


async def _msg(node: PeerNode, c: Command) -> Result:
    sent = await node.send_direct(c.args[0], c.text)
    if sent.delivered:
        return Result(f"delivered to {sent.peer}", user=sent.peer, direct=sent)
    return Result(f"queued for {sent.peer}; {sent.reason}", user=sent.peer, direct=sent)


async def _outbox(node: PeerNode, c: Command) -> Result:
    waiting = node.outbox()
    rows = [
        f"  to {e.recipient}, {e.state}{f' ({e.reason})' if e.reason else ''}: {e.text}"
        for e in waiting
    ]
    failed = sum(e.state == "failed" for e in waiting)
    also = f", {failed} failed (/resend sends them again)" if failed else ""
    return Result(f"{plural(len(waiting), 'direct message')} not yet delivered{also}", rows)


async def _resend(node: PeerNode, c: Command) -> Result:
    user = c.args[0] if c.args else None
    count = await node.resend_direct(user)
    if count == 0:
        return Result(f"no failed direct messages{f' to {user}' if user else ''}", user=user)
    return Result(f"sending {plural(count, 'direct message')} again", user=user)


async def _history(node: PeerNode, c: Command) -> Result:
    room = node.room_name(c.args[0])
    n = int(c.args[1]) if len(c.args) == 2 else DEFAULT_HISTORY
    kept = node.history(room, n)
    if not kept:
        return Result(f"no messages of {room} are kept here", room=room)
    rows = [f"  {stamp(m.ts)} {m.sender}: {m.text}" for m in kept]
    return Result(
        f"the last {plural(len(kept), 'message')} of {room}", rows, room=room, history=kept
    )


def stamp(ts: float) -> str:
    """When a message was written, in local time: the hour today, else the date too."""
    when = datetime.fromtimestamp(ts)
    if when.date() == datetime.now().date():
        return when.strftime("%H:%M")
    return when.strftime("%Y-%m-%d %H:%M")


async def room_of_mine(node: PeerNode, room: str) -> str:
    """Our spelling of ``room``; else a CommandError that says whether it exists at all."""
    name = node.room_name(room)
    if name in node.my_rooms() or node.username is None:  # the node says "log in first"
        return name
    try:
        visible = any(r.room.casefold() == room.casefold() for r in await node.list_rooms())
    except CommandError:  # the registry cannot tell us now: say what we know
        visible = True
    if visible:
        raise CommandError(f"you are not a member of {room}; /join {room} first")
    raise CommandError(f"there is no room {room}; /rooms lists them, /create {room} makes it")


async def _say(node: PeerNode, c: Command) -> Result:
    room = await room_of_mine(node, c.args[0])
    count = await node.say(room, c.text)
    if count == 0:
        return Result(f"sent to {room} (no other member is linked now)", room=room, links=0)
    return Result(f"sent to {room} over {plural(count, 'link')}", room=room, links=count)


async def _to(node: PeerNode, c: Command) -> Result:
    target = c.args[0]
    if target.startswith("@"):
        if len(target) < 2:
            raise CommandError(f"usage: {USAGE['to']}")
        return Result(f"plain lines now go to {target[1:]}", target=target, user=target[1:])
    name = await room_of_mine(node, target)
    return Result(f"plain lines now go to {name}", target=name, room=name)


async def _me(node: PeerNode, c: Command) -> Result:
    raise CommandError("/me needs a conversation: /to ROOM or /to @USER first")


async def _clear(node: PeerNode, c: Command) -> Result:
    return Result("cleared", clear=True)


HANDLERS: dict[str, Handler] = {
    "register": _register,
    "login": _login,
    "logout": _logout,
    "quit": _quit,
    "help": _help,
    "search": _search,
    "users": _users,
    "create": _create,
    "join": _join,
    "leave": _leave,
    "add": _add,
    "remove": _remove,
    "ban": _ban,
    "unban": _unban,
    "allow": _allow,
    "block": _block,
    "unblock": _unblock,
    "blocked": _blocked,
    "rooms": _rooms,
    "members": _members,
    "msg": _msg,
    "outbox": _outbox,
    "resend": _resend,
    "history": _history,
    "say": _say,
    "to": _to,
    "me": _me,
    "clear": _clear,
}


async def run(node: PeerNode, command: Command, target: str | None = None) -> Result:
    """Run one parsed command; raises CommandError. ``target`` is where plain lines go now
    (a room, or ``@user``): ``/me`` is sent there."""
    if command.name == "me" and target is not None:
        return await send_plain(node, target, ACTION + command.text)
    return await HANDLERS[command.name](node, command)


async def send_plain(node: PeerNode, target: str, text: str) -> Result:
    """A plain line typed with ``target`` chosen by ``/to``."""
    if target.startswith("@"):
        return await _msg(node, Command("msg", [target[1:]], text))
    return await _say(node, Command("say", [target], text))
