"""The seen cache both routers keep: bounded in count, each id kept its time."""

from __future__ import annotations

import pytest

from p2pchat.peer.seen import SeenIds


def test_an_id_is_kept_its_time_then_forgotten() -> None:
    seen = SeenIds(ttl=10.0, limit=100)
    seen.add("a", 0.0)
    seen.add("b", 5.0)
    assert seen.next_expiry == 10.0
    seen.expire(9.9)
    assert "a" in seen and "b" in seen
    seen.expire(10.0)
    assert "a" not in seen and "b" in seen and seen.next_expiry == 15.0
    seen.expire(15.0)
    assert len(seen) == 0 and seen.next_expiry == float("inf")


def test_beyond_the_limit_the_oldest_goes() -> None:
    seen = SeenIds(ttl=10.0, limit=3)
    for k, mid in enumerate("abcde"):
        seen.add(mid, float(k))
    assert len(seen) == 3 and [m for m in "abcde" if m in seen] == ["c", "d", "e"]


def test_an_id_seen_again_moves_to_the_back_so_expiry_stays_in_order() -> None:
    seen = SeenIds(ttl=10.0, limit=100)
    seen.add("a", 0.0)
    seen.add("b", 1.0)
    seen.add("a", 2.0)  # kept until 12 now
    seen.expire(11.5)
    assert "a" in seen and "b" not in seen
    assert seen.next_expiry == 12.0


def test_a_cache_that_holds_nothing_is_refused() -> None:
    with pytest.raises(ValueError):
        SeenIds(ttl=1.0, limit=0)
