"""The token bucket shared by the registry and the peer."""

from __future__ import annotations

from p2pchat.limits import TokenBucket


def test_a_burst_then_the_rate_and_waiting_the_time_it_says_is_enough() -> None:
    bucket = TokenBucket(rate=5.0, burst=20)
    now = 0.1
    assert all(bucket.take("r", now) == 0 for _ in range(20))
    taken = 0
    for _ in range(1000):  # each wait, taken as given, lets the next one through
        wait = bucket.take("r", now)
        if wait > 0:
            assert now + wait > now  # never a wait too small to move the clock
            now += wait
        else:
            taken += 1
        if taken == 50:
            break
    assert taken == 50 and abs(now - (0.1 + 50 / 5.0)) < 1e-6


def test_keys_are_bounded() -> None:
    bucket = TokenBucket(rate=1.0, burst=1, max_keys=3)
    for key in "abcdef":
        bucket.take(key, 0.0)
    assert len(bucket) == 3
