"""Deadlines for a sans-IO core: one heap, so the shell needs one timer for all of them."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable

Callback = Callable[[float], None]


class Timer:
    """A scheduled call; ``cancel()`` makes it a no-op (it is skipped when it comes up)."""

    __slots__ = ("callback", "when")

    def __init__(self, when: float, callback: Callback | None) -> None:
        self.when = when
        self.callback = callback

    def cancel(self) -> None:
        self.callback = None

    @property
    def active(self) -> bool:
        return self.callback is not None


class Timers:
    """Calls ``callback(now)`` once ``now`` reaches its deadline, in deadline order."""

    __slots__ = ("_heap", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()

    def at(self, when: float, callback: Callback) -> Timer:
        timer = Timer(when, callback)
        heapq.heappush(self._heap, (when, next(self._seq), timer))
        return timer

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap and not heap[0][2].active:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def fire(self, now: float) -> None:
        """Run every callback due by ``now`` (including ones that come due meanwhile)."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, timer = heapq.heappop(heap)
            callback, timer.callback = timer.callback, None
            if callback is not None:
                callback(now)

    def __len__(self) -> int:
        return sum(1 for _, _, timer in self._heap if timer.active)
