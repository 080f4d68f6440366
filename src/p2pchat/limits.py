"""Rate limits shared by the registry and the peer: pure, fed the time, bounded in keys."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class TokenBucket:
    """Per-key rate limit: ``burst`` at once, then ``rate`` per second; at most ``max_keys``
    keys (the least recently used go first, which at worst forgives them)."""

    rate: float
    burst: float
    max_keys: int = 100_000
    _keys: dict[str, tuple[float, float]] = field(default_factory=dict)  # key -> (tokens, t)

    def take(self, key: str, now: float) -> float:
        """Take one token; return 0 if allowed, else how many seconds until one is free."""
        tokens, last = self._keys.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1 - 1e-9:  # not 1: rounding must not leave a wait too small to pass
            self._keys[key] = (tokens, now)
            return (1 - tokens) / self.rate if self.rate > 0 else float("inf")
        self._keys[key] = (tokens - 1, now)
        while len(self._keys) > self.max_keys:
            del self._keys[next(iter(self._keys))]
        return 0.0

    def __len__(self) -> int:
        return len(self._keys)
