"""Direct messages that wait: the outbox, delivery, acknowledgements and retries.

A direct message is written once into the outbox (the user's history file, so it survives a
restart) with one id that it keeps end to end. It goes out whenever a link to the recipient is
open; the recipient's ``dm_ack`` with that id, on a link authenticated as the recipient, is the
only thing that makes it delivered. Anything else (the recipient offline, unreachable, silent,
the link lost) leaves it queued, and it is sent again, with the same id, when the recipient is
next reachable: the recipient shows an id once, so a resend is never shown twice, and an
acknowledgement that comes late still turns the message delivered.

Pure like the core: fed the time through ``Context``, it reaches links, the registry and the
dialer through the callables the core gives it. The registry never sees the text.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from p2pchat.peer.actions import Done
from p2pchat.peer.events import CommandError, DirectText, DirectUpdate
from p2pchat.peer.history import DirectState, History, HistoryError, OutboxFull, Outgoing
from p2pchat.peer.linkstate import Link
from p2pchat.peer.session import Context
from p2pchat.peer.timers import Timer
from p2pchat.protocol.messages import DirectMessage, SearchResult

log = logging.getLogger("p2pchat.peer")

RETRY_FIRST = 5.0
RETRY_MAX = 120.0
"""A recipient with messages waiting is looked for after 5 s, doubling up to 2 minutes."""
MAX_LOOKUPS = 4
"""Registry searches for waiting recipients in flight at once (the rest wait their turn)."""
LOGGED_OUT = "you logged out; it is sent when you log in again"
EXPIRE_EVERY = 3600.0
"""How often queued messages past the outbox's age limit are failed."""

Locate = Callable[[str, Callable[[SearchResult], None], Callable[[Exception], None]], None]


@dataclass(frozen=True, slots=True)
class DirectSent:
    """What ``/msg`` answers: delivered now, or kept and sent when it can be (``reason``)."""

    peer: str
    id: str
    delivered: bool
    reason: str = ""


@dataclass(slots=True, eq=False)
class _InFlight:
    """A message sent on a link, waiting for its acknowledgement."""

    entry: Outgoing
    link: int
    timer: Timer


@dataclass(slots=True)
class _Retry:
    delay: float
    timer: Timer


class Directs:
    """One logged-in user's direct messages on their way."""

    def __init__(
        self,
        ctx: Context,
        store: History,
        me: str,
        *,
        ack_timeout: float,
        link_to: Callable[[str], Link | None],
        transmit: Callable[[Link, DirectMessage], None],
        locate: Locate,
        dial: Callable[[str, str, int], None],
    ) -> None:
        self._ctx = ctx
        self.store = store
        self.me = me
        self._ack_timeout = ack_timeout
        self._link_to = link_to
        self._transmit = transmit
        self._locate = locate
        self._dial = dial
        self._waiting: dict[str, int] = {}
        """Message id -> the ``/msg`` command waiting for its first outcome."""
        self._inflight: dict[str, _InFlight] = {}
        self._retry: dict[str, _Retry] = {}
        """Casefolded recipient -> when we next look for them."""
        self._lookups: set[str] = set()
        self._expiry = ctx.at(ctx.now + EXPIRE_EVERY, self._expire)
        self._closed = False

    # ------------------------------------------------------------------ sending

    def send(self, command: int, username: str, text: str) -> None:
        """``/msg``: keep the message, then send it now or when ``username`` can be reached."""
        link = self._link_to(username)
        if link is not None and link.peer is not None:
            entry = self._queue(command, link.peer, text)
            if entry is not None:
                self._waiting[entry.id] = command
                self._send_on(entry, link)
            return

        def found(result: SearchResult) -> None:
            peer = result.username
            if peer.casefold() == self.me.casefold():
                self._fail(command, "that is you")
                return
            entry = self._queue(command, peer, text)
            if entry is None:
                return
            if self._closed:  # logged out meanwhile: kept for the next login
                self._done(command, DirectSent(peer, entry.id, False, LOGGED_OUT))
                return
            link = self._link_to(peer)
            if link is not None:
                self._waiting[entry.id] = command
                self._send_on(entry, link)
            elif result.online and result.host is not None and result.port is not None:
                self._waiting[entry.id] = command  # answered when the link opens, or fails
                self._dial(peer, result.host, result.port)
            else:
                offline = DirectSent(peer, entry.id, False, "they are offline")
                self._answer(entry.id, command, offline)
                self._schedule(peer)

        def failed(exc: Exception) -> None:
            self._fail(command, exc)

        self._locate(username, found, failed)

    def _queue(self, command: int, peer: str, text: str) -> Outgoing | None:
        ctx = self._ctx
        try:
            return self.store.queue_direct(ctx.new_id(), peer, text, ctx.wall)
        except OutboxFull as exc:
            self._fail(command, f"not sent: {exc}")
        except HistoryError as exc:
            self._fail(command, f"cannot keep the message: {exc}")
        return None

    def _send_on(self, entry: Outgoing, link: Link) -> None:
        """Send ``entry`` on ``link`` and wait for its acknowledgement."""
        try:
            entry = self._mark(entry.id, DirectState.SENDING) or entry
        except ValueError:
            return  # already sending (two links opened) or delivered meanwhile
        msg = DirectMessage(id=entry.id, sender=self.me, text=entry.text, ts=entry.ts)
        timer = self._ctx.at(self._ctx.now + self._ack_timeout, lambda _: self._silent(entry.id))
        self._inflight[entry.id] = _InFlight(entry, link.id, timer)
        self._transmit(link, msg)

    def _mark(self, msg_id: str, state: DirectState, reason: str = "") -> Outgoing | None:
        try:
            return self.store.mark(msg_id, state, self._ctx.wall, reason)
        except HistoryError as exc:
            log.warning("cannot note a direct message's state: %s", exc)
            return None

    # ------------------------------------------------------------------ outcomes

    def acked(self, link: Link, msg_id: str) -> None:
        """``dm_ack``: delivered, if it comes from the recipient (on any of its links)."""
        flight = self._inflight.get(msg_id)
        entry = flight.entry if flight is not None else self._stored(msg_id)
        if entry is None or (link.peer or "").casefold() != entry.recipient.casefold():
            return
        self._landed(msg_id)
        try:
            self._mark(msg_id, DirectState.DELIVERED)
        except ValueError:
            return
        self._ctx.show(DirectText(self.me, entry.text, entry.ts, peer=entry.recipient, mine=True))
        command = self._waiting.pop(msg_id, None)
        if command is not None:
            self._done(command, DirectSent(entry.recipient, msg_id, True))
        else:
            self._ctx.show(DirectUpdate(msg_id, entry.recipient, entry.text, entry.ts, "delivered"))

    def refused(self, link: Link, msg_id: str, reason: str) -> None:
        """A ``peer_error`` naming one of our messages: the recipient will not take it."""
        flight = self._inflight.get(msg_id)
        if flight is None or flight.link != link.id:
            return
        self._landed(msg_id)
        entry = flight.entry
        why = f"{entry.recipient} refused it: {reason}"
        try:
            self._mark(msg_id, DirectState.FAILED, why)
        except ValueError:
            return
        self._failed(entry, why)

    def _silent(self, msg_id: str) -> None:
        """No acknowledgement in time: it may have arrived; sent again later, same id."""
        self._requeue(msg_id, "no answer from their peer yet")

    def _requeue(self, msg_id: str, reason: str) -> None:
        flight = self._inflight.pop(msg_id, None)
        if flight is None:
            return
        flight.timer.cancel()
        entry = flight.entry
        try:
            self._mark(msg_id, DirectState.QUEUED, reason)
        except ValueError:
            return
        self._answer(msg_id, None, DirectSent(entry.recipient, msg_id, False, reason))
        self._schedule(entry.recipient)

    def _landed(self, msg_id: str) -> None:
        flight = self._inflight.pop(msg_id, None)
        if flight is not None:
            flight.timer.cancel()

    def _stored(self, msg_id: str) -> Outgoing | None:
        try:
            return self.store.direct(msg_id)
        except HistoryError:
            return None

    def _answer(self, msg_id: str, command: int | None, sent: DirectSent) -> None:
        """The ``/msg`` command, if it still waits, is answered: kept for later, and why."""
        if command is None:
            command = self._waiting.pop(msg_id, None)
        else:
            self._waiting.pop(msg_id, None)
        if command is not None:
            self._done(command, sent)

    def _failed(self, entry: Outgoing, why: str) -> None:
        command = self._waiting.pop(entry.id, None)
        if command is not None:
            self._fail(command, why)
        self._ctx.show(DirectUpdate(entry.id, entry.recipient, entry.text, entry.ts, "failed", why))

    # ------------------------------------------------------------------ links and presence

    def linked(self, peer: str, link: Link) -> None:
        """A link to ``peer`` opened: what waits for them goes out on it."""
        for entry in self._queued(peer):
            self._send_on(entry, link)

    def link_down(self, link_id: int) -> None:
        for msg_id in [i for i, f in self._inflight.items() if f.link == link_id]:
            self._requeue(msg_id, "the link was lost; it is sent again")

    def unreachable(self, peer: str) -> None:
        """A dial to ``peer`` failed: what waits for them waits on."""
        key = peer.casefold()
        for entry in self._queued(peer):
            if entry.id in self._waiting and entry.recipient.casefold() == key:
                reason = "their peer cannot be reached now"
                self._answer(entry.id, None, DirectSent(entry.recipient, entry.id, False, reason))
        if self._queued(peer):
            self._schedule(peer)

    def online(self, peer: str, host: str, port: int) -> None:
        """The registry says ``peer`` is online there (a room event): try at once."""
        if not self._queued(peer) or self._link_to(peer) is not None:
            return
        retry = self._retry.pop(peer.casefold(), None)
        if retry is not None:
            retry.timer.cancel()
        self._dial(peer, host, port)

    def _queued(self, peer: str) -> list[Outgoing]:
        try:
            waiting = self.store.outbox(peer)
        except HistoryError as exc:
            log.warning("cannot read the outbox: %s", exc)
            return []
        return [e for e in waiting if e.state is DirectState.QUEUED and e.id not in self._inflight]

    # ------------------------------------------------------------------ retries

    def _schedule(self, peer: str, delay: float | None = None) -> None:
        key = peer.casefold()
        if self._closed or key in self._retry:
            return
        wait = RETRY_FIRST if delay is None else delay
        ctx = self._ctx
        self._retry[key] = _Retry(wait, ctx.at(ctx.now + wait, lambda _: self._try(peer, wait)))

    def _try(self, peer: str, delay: float) -> None:
        key = peer.casefold()
        self._retry.pop(key, None)
        if self._closed or not self._queued(peer):
            return
        link = self._link_to(peer)
        if link is not None:
            self.linked(link.peer or peer, link)
            return
        if len(self._lookups) >= MAX_LOOKUPS:  # others are being looked for: wait a turn
            self._schedule(peer, 1.0)
            self._retry[key].delay = delay
            return
        self._lookups.add(key)
        later = min(delay * 2, RETRY_MAX)

        def found(result: SearchResult) -> None:
            self._lookups.discard(key)
            if self._closed:
                return
            if result.online and result.host is not None and result.port is not None:
                self._dial(result.username, result.host, result.port)
            self._schedule(peer, later)  # in case the dial fails, or they are offline

        def failed(exc: Exception) -> None:
            self._lookups.discard(key)
            log.info("looking for %s to deliver to: %s", peer, exc)
            self._schedule(peer, later)

        self._locate(peer, found, failed)

    def recover(self) -> None:
        """At login: what was on its way when we stopped is queued again, and tried."""
        try:
            waiting = self.store.recover(self._ctx.wall)
        except HistoryError as exc:
            log.warning("cannot read the outbox: %s", exc)
            return
        for peer in {e.recipient for e in waiting if e.state is DirectState.QUEUED}:
            self._schedule(peer, 0.0)

    def resend(self, peer: str | None = None) -> list[Outgoing]:
        """``/resend``: the failed messages (to ``peer``, or all) are queued again and tried."""
        try:
            failed = [e for e in self.store.outbox(peer) if e.state is DirectState.FAILED]
            for entry in failed:
                self.store.mark(entry.id, DirectState.QUEUED, self._ctx.wall)
        except HistoryError as exc:
            raise CommandError(f"cannot read the outbox: {exc}") from exc
        for recipient in {e.recipient for e in failed}:
            retry = self._retry.pop(recipient.casefold(), None)
            if retry is not None:
                retry.timer.cancel()
            self._schedule(recipient, 0.0)
        return failed

    def pending(self) -> list[Outgoing]:
        """Everything in the outbox, in the order written."""
        try:
            return self.store.outbox()
        except HistoryError as exc:
            raise CommandError(f"cannot read the outbox: {exc}") from exc

    def _expire(self, now: float) -> None:
        if self._closed:
            return
        self._expiry = self._ctx.at(now + EXPIRE_EVERY, self._expire)
        try:
            expired = self.store.expire(self._ctx.wall)
        except HistoryError as exc:
            log.warning("cannot expire old direct messages: %s", exc)
            return
        for entry in expired:
            self._failed(entry, entry.reason)

    # ------------------------------------------------------------------ receiving

    def first_time(self, sender: str, msg_id: str) -> bool:
        """A direct message arrived: True the first time its id is seen from ``sender``."""
        try:
            return self.store.seen_direct(sender, msg_id, self._ctx.wall)
        except (HistoryError, ValueError) as exc:
            log.warning("cannot note a received direct message: %s", exc)
            return True

    # ------------------------------------------------------------------ the end

    def close(self, reason: str) -> None:
        """Logged out: waiting commands are answered; the outbox stays for the next login."""
        self._closed = True
        for flight in self._inflight.values():
            flight.timer.cancel()
        for retry in self._retry.values():
            retry.timer.cancel()
        self._expiry.cancel()
        for msg_id, command in self._waiting.items():
            entry = self._stored(msg_id)
            peer = entry.recipient if entry is not None else "them"
            self._done(command, DirectSent(peer, msg_id, False, reason))
        self._inflight.clear()
        self._retry.clear()
        self._waiting.clear()

    def _done(self, command: int, value: object) -> None:
        self._ctx.out.append(Done(command, value))

    def _fail(self, command: int, error: Exception | str) -> None:
        reason = getattr(error, "reason", None) or str(error)
        self._ctx.out.append(Done(command, error=CommandError(reason)))
