"""The slash commands, shared by the line mode and the terminal UI.

Parsing and running a command is separate from showing its result, so both interfaces offer
exactly the same commands with the same errors.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from p2pchat.peer.events import CommandError
from p2pchat.peer.node import PeerNode

HELP = """\
/register USER PASSWORD   create an account
/login USER PASSWORD      log in (starts heartbeats and joins your rooms' meshes)
/logout                   log out
/quit                     log out and exit
/search USER              is USER online, and where
/users                    who is online
/create ROOM [private]    create a room (you own it and are its first member)
/join ROOM                join a public room
/leave ROOM               leave a room
/add ROOM USER            add USER to a room you are in (the way into private rooms)
/remove ROOM USER         remove USER from a room you own
/rooms                    the rooms you can see
/members ROOM             a room's members, who is online and where
/msg USER TEXT            send a direct message
/say ROOM TEXT            send a message to a room
/to ROOM  or  /to @USER   send the plain lines that follow there
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
    "rooms": "/rooms",
    "members": "/members ROOM",
    "msg": "/msg USER TEXT",
    "say": "/say ROOM TEXT",
    "to": "/to ROOM  or  /to @USER",
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
    "rooms": (0, 0, False),
    "members": (1, 1, False),
    "msg": (1, 1, True),
    "say": (1, 1, True),
    "to": (1, 1, False),
}


@dataclass(slots=True)
class Result:
    """What a command produced: rows to list, then one summary sentence."""

    summary: str
    rows: list[str] = field(default_factory=list)
    quit: bool = False
    target: str | None = None
    """Set by ``/to``: the new target for plain lines (a room, or ``@user``)."""


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
    return Command(name, args)


Handler = Callable[[PeerNode, Command], Awaitable[Result]]


async def _register(node: PeerNode, c: Command) -> Result:
    await node.register(c.args[0], c.args[1])
    return Result(f"registered {c.args[0]}; now /login {c.args[0]} PASSWORD")


async def _login(node: PeerNode, c: Command) -> Result:
    name = await node.login(c.args[0], c.args[1])
    rooms = ", ".join(node.my_rooms()) or "none yet"
    return Result(f"logged in as {name}, listening on port {node.port}; rooms: {rooms}")


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
        return Result(f"{r.username} is online at {r.host}:{r.port}")
    return Result(f"{r.username} is offline")


async def _users(node: PeerNode, c: Command) -> Result:
    users = await node.users()
    rows = [f"  {u.username} {u.host}:{u.port}" for u in users]
    return Result(f"{len(users)} online", rows)


async def _create(node: PeerNode, c: Command) -> Result:
    private = len(c.args) == 2
    await node.create_room(c.args[0], private)
    return Result(f"created {'private' if private else 'public'} room {c.args[0]}")


async def _join(node: PeerNode, c: Command) -> Result:
    await node.join_room(c.args[0])
    return Result(f"joined {node.room_name(c.args[0])}")


async def _leave(node: PeerNode, c: Command) -> Result:
    room = node.room_name(c.args[0])
    await node.leave_room(room)
    return Result(f"left {room}")


async def _add(node: PeerNode, c: Command) -> Result:
    await node.add_member(c.args[0], c.args[1])
    return Result(f"added {c.args[1]} to {c.args[0]}")


async def _remove(node: PeerNode, c: Command) -> Result:
    await node.remove_member(c.args[0], c.args[1])
    return Result(f"removed {c.args[1]} from {c.args[0]}")


async def _rooms(node: PeerNode, c: Command) -> Result:
    rooms = await node.list_rooms()
    rows = [
        f"  {r.room} {'private' if r.private else 'public'} owner={r.owner} "
        f"members={r.members} online={r.online}{' (member)' if r.member else ''}"
        for r in rooms
    ]
    return Result(f"{len(rooms)} rooms", rows)


async def _members(node: PeerNode, c: Command) -> Result:
    members = await node.members(c.args[0])
    rows = [
        f"  {m.username} "
        + (f"online {m.host}:{m.port}" if m.online else "offline")
        + (" (owner)" if m.owner else "")
        for m in members
    ]
    online = sum(m.online for m in members)
    return Result(f"{len(members)} members, {online} online", rows)


async def _msg(node: PeerNode, c: Command) -> Result:
    peer = await node.send_direct(c.args[0], c.text)
    return Result(f"delivered to {peer}")


async def _say(node: PeerNode, c: Command) -> Result:
    count = await node.say(c.args[0], c.text)
    room = node.room_name(c.args[0])
    if count == 0:
        return Result(f"sent to {room} (no other member is linked now)")
    return Result(f"sent to {room} over {count} link{'s' if count != 1 else ''}")


async def _to(node: PeerNode, c: Command) -> Result:
    target = c.args[0]
    if target.startswith("@"):
        if len(target) < 2:
            raise CommandError(f"usage: {USAGE['to']}")
        return Result(f"plain lines now go to {target[1:]}", target=target)
    name = node.room_name(target)
    if name not in node.my_rooms():
        raise CommandError(f"you are not a member of {target}")
    return Result(f"plain lines now go to {name}", target=name)


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
    "rooms": _rooms,
    "members": _members,
    "msg": _msg,
    "say": _say,
    "to": _to,
}


async def run(node: PeerNode, command: Command) -> Result:
    """Run one parsed command; raises CommandError."""
    return await HANDLERS[command.name](node, command)


async def send_plain(node: PeerNode, target: str, text: str) -> Result:
    """A plain line typed with ``target`` chosen by ``/to``."""
    if target.startswith("@"):
        return await _msg(node, Command("msg", [target[1:]], text))
    return await _say(node, Command("say", [target], text))
