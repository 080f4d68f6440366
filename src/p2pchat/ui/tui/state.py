"""What the terminal UI remembers between repaints, kept apart from Textual so it is easy to test.

Conversations (home, rooms, direct chats) with their numbers, lines, unread counts and
dividers; the lines we sent and what became of each; the "where does this go" picker; the
input history, Tab completion and the colour of each user. Nothing here draws or touches the
node.
"""

from __future__ import annotations

import enum
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable
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


class Delivery(enum.Enum):
    """What became of a line we sent."""

    SENDING = "sending"
    SENT = "sent"
    """A room message handed to our mesh links (rooms have no acknowledgement)."""
    DELIVERED = "delivered"
    """A direct message acknowledged by the recipient's peer."""
    QUEUED = "queued"
    """A direct message kept to be sent when its recipient can be reached."""
    FAILED = "failed"


@dataclass(eq=False, slots=True)
class Outgoing:
    """A line we sent: shown at once where it was sent, and updated there in place."""

    key: str
    """The conversation: a room, or ``@user``; also where it is sent."""
    text: str
    ts: float
    state: Delivery = Delivery.SENDING
    detail: str = ""
    """Why it failed, or how it went (``over 2 links``)."""
    version: int = 0
    """Bumped on every change, so a drawn copy knows it is stale."""
    id: str | None = None
    """A direct message's id once the peer kept it: later state changes name it."""

    def settle(self, state: Delivery, detail: str = "") -> None:
        self.state = state
        self.detail = detail
        self.version += 1


@dataclass(frozen=True, slots=True)
class Divider:
    """A rule across the conversation: where the unread lines begin, or a new day."""

    text: str
    unread: bool = False


Line = Text | Block | Outgoing | Divider


def plain(line: Line) -> str:
    """A line as text, for tests and for searching."""
    if isinstance(line, Outgoing):
        return line.text
    if isinstance(line, Divider):
        return f"-- {line.text} --"
    return line.plain


def local_day(ts: float) -> str:
    return time.strftime("%A %d %B %Y", time.localtime(ts))


@dataclass(eq=False, slots=True)
class Conversation:
    key: str
    number: int
    """Its place in the sidebar and its Alt+number, kept for as long as it exists."""
    lines: deque[Line] = field(default_factory=lambda: deque(maxlen=MAX_LINES))
    unread: int = 0
    mentions: int = 0
    """Unread lines that name us, and direct messages: they get their own badge."""
    unread_from: Line | None = None
    """The first line that came while we looked elsewhere: the unread divider goes above it."""
    day: str | None = None
    """The day of the last dated line, so the next one on another day gets a divider."""
    from_history: set[tuple[str, float, str]] = field(default_factory=set)
    """Room messages shown from the local history when it opened (sender, time, text), so
    the same message arriving as an event meanwhile is not shown twice."""


class Conversations:
    """The list the sidebar shows: home, then rooms and direct chats, each keeping its number.

    A new conversation takes the lowest free number, and keeps it until it goes (irssi's
    windows): creating a room never moves the others.
    """

    def __init__(self, day: Callable[[float], str] = local_day) -> None:
        self.by_key: dict[str, Conversation] = {HOME: Conversation(HOME, 1)}
        self.current = HOME
        self._day = day

    def order(self) -> list[str]:
        return [c.key for c in sorted(self.by_key.values(), key=lambda c: c.number)]

    def numbered(self, number: int) -> str | None:
        for conv in self.by_key.values():
            if conv.number == number:
                return conv.key
        return None

    def find(self, key: str) -> str | None:
        """The existing key spelled ``key`` in any casing (names are case-insensitive)."""
        if key in self.by_key:
            return key
        folded = key.casefold()
        for existing in self.by_key:
            if existing.casefold() == folded:
                return existing
        return None

    def _free_number(self) -> int:
        taken = {c.number for c in self.by_key.values()}
        return next(n for n in range(1, len(taken) + 2) if n not in taken)

    def ensure(self, key: str) -> Conversation:
        existing = self.find(key)
        if existing is not None:
            return self.by_key[existing]
        conv = self.by_key[key] = Conversation(key, self._free_number())
        return conv

    def sync_rooms(self, rooms: Iterable[str]) -> bool:
        """Match the room conversations to the rooms we are in; True if the list changed."""
        wanted = set(rooms)
        have = {k for k in self.by_key if k != HOME and not is_dm(k)}
        for key in have - wanted:
            del self.by_key[key]
        for key in sorted(wanted - have, key=str.casefold):
            self.ensure(key)
        if self.current not in self.by_key:
            self.current = HOME
        return wanted != have

    def add(
        self,
        key: str,
        line: Line,
        *,
        ts: float | None = None,
        unread: bool = False,
        mention: bool = False,
    ) -> list[Line]:
        """Append a line (after a day divider if ``ts`` starts a new day); the lines added,
        if the conversation is in view (to draw them), else none."""
        conv = self.ensure(key)
        added: list[Line] = []
        if ts is not None:
            day = self._day(ts)
            if conv.day is not None and day != conv.day:
                added.append(Divider(day))
            conv.day = day
        added.append(line)
        conv.lines.extend(added)
        if conv.key == self.current:
            return added
        if unread:
            if conv.unread == 0:
                conv.unread_from = line
            conv.unread += 1
            conv.mentions += mention
        return []

    def select(self, key: str) -> Conversation:
        """Bring ``key`` into view. The one we leave loses its unread divider; the one we
        open keeps it (to show where the new lines begin) while its counts go to zero."""
        conv = self.ensure(key)
        if conv.key != self.current and self.current in self.by_key:
            self.by_key[self.current].unread_from = None
        self.current = conv.key
        conv.unread = 0
        conv.mentions = 0
        return conv

    def view(self) -> list[Line]:
        """The conversation in view, with the unread divider in its place."""
        conv = self.by_key[self.current]
        lines: list[Line] = []
        for line in conv.lines:
            if line is conv.unread_from:
                lines.append(Divider("new", unread=True))
            lines.append(line)
        return lines

    def clear(self, key: str) -> None:
        conv = self.by_key[key]
        conv.lines.clear()
        conv.unread_from = None

    def step(self, delta: int) -> str:
        keys = self.order()
        index = keys.index(self.current) if self.current in keys else 0
        return keys[(index + delta) % len(keys)]

    def failed(self, key: str) -> list[Outgoing]:
        """The lines of a conversation that failed to go, oldest first."""
        conv = self.by_key.get(key)
        lines = conv.lines if conv else ()
        return [x for x in lines if isinstance(x, Outgoing) and x.state is Delivery.FAILED]


@dataclass(slots=True)
class Picker:
    """ "Where does this go?": lines typed at home wait here while the user picks a room or a
    peer. The choices filter as the answer is typed; nothing is lost on a typo."""

    texts: list[str]
    rooms: list[str]
    users: list[str]
    highlighted: int = 0
    error: str = ""
    last: str = ""
    """The answer as last seen: a change resets the highlight and the error."""

    def choices(self, typed: str) -> list[str]:
        """``#room`` and ``@user`` entries matching what is typed, prefix matches first."""
        word = typed.strip().casefold()
        every = [f"#{r}" for r in self.rooms] + [f"@{u}" for u in self.users]
        if word in ("", "#", "@"):
            return [c for c in every if c.startswith(word[:1])] if word else every
        bare = word.lstrip("#@")
        kind = word[0] if word[0] in "#@" else ""

        def fits(choice: str) -> bool:
            return choice.startswith(kind) and bare in choice[1:].casefold()

        found = [c for c in every if fits(c)]
        return sorted(found, key=lambda c: not c[1:].casefold().startswith(bare))

    def move(self, delta: int, typed: str) -> None:
        count = len(self.choices(typed))
        self.highlighted = (self.highlighted + delta) % count if count else 0

    def typed(self, value: str) -> None:
        """The answer is now ``value``: if it changed, the highlight goes back to the best
        match and the error goes."""
        if value != self.last:
            self.last = value
            self.highlighted = 0
            self.error = ""

    def answer(self, typed: str) -> str | None:
        """The destination for Enter: a room of ours, or ``@user``; None (with ``error`` set)
        if nothing fits. A ``@name`` not in the list is returned for the caller to check."""
        self.last = typed
        word = typed.strip()
        if word.lower().startswith("/to "):
            word = word[4:].strip()
        folded = word.casefold().lstrip("#")
        exact = [r for r in self.rooms if r.casefold() == folded]
        if exact:
            return exact[0]
        exact = [f"@{u}" for u in self.users if f"@{u}".casefold() == folded]
        if exact:
            return exact[0]
        found = self.choices(word)
        if found:
            choice = found[min(self.highlighted, len(found) - 1)]
            return choice[1:] if choice.startswith("#") else choice
        if word.startswith("@") and len(word) > 1:
            return word
        if word:
            self.error = f"no room of yours or user matches {word!r}; /join a room first, or @user"
        else:
            self.error = "type a room name or @user, or Esc to keep the line"
        return None


class History:
    """Up and Down through what was sent, keeping the line being typed as a draft."""

    def __init__(self, limit: int = 200) -> None:
        self.entries: deque[str] = deque(maxlen=limit)
        self.position: int | None = None
        self.draft = ""

    def clear(self) -> None:
        self.entries.clear()
        self.position = None
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
