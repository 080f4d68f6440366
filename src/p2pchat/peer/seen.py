"""The ids of room messages seen lately, as both routers keep them (``router.py``,
``plumtree.py``): a duplicate is dropped by one dictionary lookup, and memory is bounded."""

from __future__ import annotations

import math
from collections import OrderedDict


class SeenIds:
    """Ids kept ``ttl`` seconds each (long enough that no copy still in flight comes back as
    new), at most ``limit`` of them, the oldest forgotten first.

    One ttl for all, so insertion order is expiry order and expiring pops from the front. An
    ``OrderedDict``, not a dict: deleting from the front of a dict leaves dummies that every
    later ``next(iter())`` rescans.
    """

    __slots__ = ("_ids", "_limit", "_ttl", "next_expiry")

    def __init__(self, ttl: float, limit: int) -> None:
        if limit < 1:
            raise ValueError("the seen cache must hold at least 1 id")
        self._ids: OrderedDict[str, float] = OrderedDict()
        self._ttl = ttl
        self._limit = limit
        self.next_expiry = math.inf
        """Never later than the oldest id's expiry, so one comparison skips ``expire``."""

    def __contains__(self, mid: object) -> bool:
        return mid in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, mid: str, now: float) -> None:
        ids = self._ids
        if not ids:
            self.next_expiry = now + self._ttl
        ids.pop(mid, None)  # seen again: it moves to the back, keeping the order of expiry
        ids[mid] = now + self._ttl
        if len(ids) > self._limit:
            ids.popitem(last=False)

    def expire(self, now: float) -> None:
        """Forget ids from the oldest until one is still fresh."""
        ids = self._ids
        while ids:
            expiry = ids[next(iter(ids))]
            if expiry > now:
                self.next_expiry = expiry
                return
            ids.popitem(last=False)
        self.next_expiry = math.inf
