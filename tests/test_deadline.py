"""The shells' one timer: it fires once at the deadline armed last, on the injected clock."""

from __future__ import annotations

import asyncio

from p2pchat.deadline import DeadlineTimer


async def test_it_fires_once_at_the_last_deadline_armed() -> None:
    loop = asyncio.get_running_loop()
    fired: list[float] = []
    done = asyncio.Event()

    def fire() -> None:
        fired.append(loop.time())
        done.set()

    timer = DeadlineTimer(loop.time, fire)
    start = loop.time()
    timer.arm(start + 60.0)
    timer.arm(start + 0.01)  # re-armed earlier: only this one counts
    await asyncio.wait_for(done.wait(), 5)
    assert len(fired) == 1 and fired[0] >= start + 0.01
    assert timer.at is None


async def test_none_disarms_and_the_same_deadline_is_not_rearmed() -> None:
    loop = asyncio.get_running_loop()
    fired: list[int] = []
    timer = DeadlineTimer(loop.time, lambda: fired.append(1))
    timer.arm(loop.time() + 0.01)
    first = timer._handle
    timer.arm(timer.at)
    assert timer._handle is first  # nothing cancelled, nothing new
    timer.arm(None)
    assert timer.at is None
    await asyncio.sleep(0.05)  # the disarmed deadline has passed: it must not fire
    assert fired == []
