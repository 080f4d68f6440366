"""What the terminal UI remembers between repaints, kept apart from Textual so it is easy to test.

Conversations (home, rooms, direct chats) with their lines and unread counts, the input
history, Tab completion and the colour of each user. Nothing here draws or touches the node.
"""

from __future__ import annotations

import zlib
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from rich.console import RenderableType
from rich.text import Text

from p2pchat.ui import commands

HOME = "*"
"""The key of the home conversation: notices, command output, every incoming message."""
MAX_LINES = 1000
"""Lines kept per conversation; older ones scroll away for good."""

_PALETTE = (
    "dodger_blue1",
    "green3",
    "gold1",
    "orchid",
    "dark_orange",
    "turquoise2",
    "hot_pink",
    "chartreuse3",
    "medium_purple1",
    "light_sea_green",
    "salmon1",
    "steel_blue1",
)


def user_colour(name: str) -> str:
    """One colour per user, the same on every run and every machine (crc32, not ``hash``)."""
    return _PALETTE[zlib.crc32(name.casefold().encode()) % len(_PALETTE)]


def dm_key(user: str) -> str:
    return f"@{user}"


def is_dm(key: str) -> bool:
    return key.startswith("@")


def label(key: str) -> str:
    """How a conversation is named in the sidebar and the title: ``#lobby``, ``@ada``, home."""
    if key == HOME:
        return "home"
    return key if is_dm(key) else f"#{key}"


@dataclass(frozen=True, slots=True)
class Block:
    """Something wider than a line (a table), with its plain text for tests and search."""

    renderable: RenderableType
    plain: str


Line = Text | Block


@dataclass(slots=True)
class Conversation:
    key: str
    lines: deque[Line] = field(default_factory=lambda: deque(maxlen=MAX_LINES))
    unread: int = 0
    mentioned: bool = False


class Conversations:
    """The ordered list the sidebar shows: home, then rooms, then direct chats."""

    def __init__(self) -> None:
        self.by_key: dict[str, Conversation] = {HOME: Conversation(HOME)}
        self.current = HOME

    def order(self) -> list[str]:
        rooms = sorted((k for k in self.by_key if k != HOME and not is_dm(k)), key=str.casefold)
        dms = sorted((k for k in self.by_key if is_dm(k)), key=str.casefold)
        return [HOME, *rooms, *dms]

    def find(self, key: str) -> str | None:
        """The existing key spelled ``key`` in any casing (names are case-insensitive)."""
        if key in self.by_key:
            return key
        folded = key.casefold()
        for existing in self.by_key:
            if existing.casefold() == folded:
                return existing
        return None

    def ensure(self, key: str) -> Conversation:
        existing = self.find(key)
        if existing is not None:
            return self.by_key[existing]
        conv = self.by_key[key] = Conversation(key)
        return conv

    def sync_rooms(self, rooms: Iterable[str]) -> bool:
        """Match the room conversations to the rooms we are in; True if the list changed."""
        wanted = set(rooms)
        have = {k for k in self.by_key if k != HOME and not is_dm(k)}
        for key in have - wanted:
            del self.by_key[key]
        for key in wanted - have:
            self.by_key[key] = Conversation(key)
        if self.current not in self.by_key:
            self.current = HOME
        return wanted != have

    def add(self, key: str, line: Line, *, unread: bool = False, mention: bool = False) -> bool:
        """Append a line; True if it belongs to the conversation in view."""
        conv = self.ensure(key)
        conv.lines.append(line)
        if conv.key == self.current:
            return True
        if unread:
            conv.unread += 1
            conv.mentioned = conv.mentioned or mention
        return False

    def select(self, key: str) -> Conversation:
        conv = self.ensure(key)
        self.current = conv.key
        conv.unread = 0
        conv.mentioned = False
        return conv

    def step(self, delta: int) -> str:
        keys = self.order()
        index = keys.index(self.current) if self.current in keys else 0
        return keys[(index + delta) % len(keys)]


class History:
    """Up and Down through what was sent, keeping the line being typed as a draft."""

    def __init__(self, limit: int = 200) -> None:
        self.entries: deque[str] = deque(maxlen=limit)
        self.position: int | None = None
        self.draft = ""

    def add(self, line: str) -> None:
        if line and (not self.entries or self.entries[-1] != line):
            self.entries.append(line)
        self.position = None

    def previous(self, current: str) -> str | None:
        if not self.entries:
            return None
        if self.position is None:
            self.draft = current
            self.position = len(self.entries)
        if self.position == 0:
            return None
        self.position -= 1
        return self.entries[self.position]

    def next(self) -> str | None:
        if self.position is None:
            return None
        self.position += 1
        if self.position >= len(self.entries):
            self.position = None
            return self.draft
        return self.entries[self.position]


def mask_secret(line: str) -> str:
    """History and the echo never keep a password typed after /login or /register."""
    words = line.split()
    if len(words) >= 3 and words[0].lower() in ("/login", "/register"):
        return " ".join(words[:2])
    return line


_ROOM_ARGS = {"join": 0, "leave": 0, "members": 0, "say": 0, "add": 0, "remove": 0, "to": 0}
_USER_ARGS = {"msg": 0, "search": 0, "add": 1, "remove": 1}


def complete(
    line: str, cursor: int, rooms: Iterable[str], users: Iterable[str]
) -> tuple[int, list[str]]:
    """Where the word being completed starts, and what it may become (with what follows it).

    Commands complete at the start of a line, room names and usernames where a command wants
    them (``/to`` offers both, users as ``@name``), and usernames anywhere in a plain line.
    """
    before = line[:cursor]
    start = before.rfind(" ") + 1
    word = before[start:]
    folded = word.casefold()
    if start == 0 and word.startswith("/"):
        return 0, [f"/{c} " for c in commands.COMMANDS if f"/{c}".startswith(folded)]
    pool: list[str]
    words = before.split(" ")
    suffix = " "
    if before.startswith("/"):
        name, argi = words[0][1:].lower(), len(words) - 2
        wants_text = name in ("msg", "say") and argi >= 1
        if name == "to":
            pool = [*rooms, *(f"@{u}" for u in users)]
        elif _ROOM_ARGS.get(name) == argi:
            pool = list(rooms)
        elif _USER_ARGS.get(name) == argi or wants_text:
            pool = list(users)
        else:
            return start, []
    else:
        pool = list(users)
        if start == 0:
            suffix = ": "
    found = sorted({p for p in pool if p.casefold().startswith(folded)}, key=str.casefold)
    return start, [f"{p}{suffix}" for p in found]
