"""One asyncio timer at a sans-IO core's next deadline, for both shells (registry and peer).

After each batch of actions the shell re-arms it at ``core.next_deadline()`` (the aioquic
pattern): one timer for every deadline the core keeps, no polling loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class DeadlineTimer:
    """Calls ``fire()`` once the injected ``clock`` reaches the deadline last armed."""

    __slots__ = ("_clock", "_fire", "_handle", "at")

    def __init__(self, clock: Callable[[], float], fire: Callable[[], None]) -> None:
        self._clock = clock
        self._fire = fire
        self._handle: asyncio.TimerHandle | None = None
        self.at: float | None = None
        """The deadline armed (None: not armed)."""

    def arm(self, deadline: float | None) -> None:
        """Fire at ``deadline`` (None: not at all); the same deadline again changes nothing."""
        if deadline == self.at and (self._handle is not None or deadline is None):
            return
        self.cancel()
        self.at = deadline
        if deadline is not None:
            delay = max(0.0, deadline - self._clock())
            self._handle = asyncio.get_running_loop().call_later(delay, self._run)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle, self.at = None, None

    def _run(self) -> None:
        self._handle, self.at = None, None
        self._fire()
