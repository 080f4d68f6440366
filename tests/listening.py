"""Helpers for tests of listeners (``p2pchat.listener``), the registry's and the peers':
waiting on conditions, a process out of file descriptors, and what idle connections cost."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from p2pchat import listener as listener_module
from p2pchat.listener import Listener

WAIT = 10.0


async def until(predicate: Callable[[], bool], timeout: float = WAIT) -> None:
    """Let the loop run until ``predicate`` holds (it is checked after each pass)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.005)


class Exhausted:
    """A listening socket whose ``accept`` fails as a process out of descriptors does."""

    def __init__(self, real: socket.socket) -> None:
        self.real = real
        self.calls = 0

    def fileno(self) -> int:
        return self.real.fileno()

    def getsockname(self) -> Any:
        return self.real.getsockname()

    def close(self) -> None:
        self.real.close()

    def accept(self) -> tuple[socket.socket, Any]:
        self.calls += 1
        raise OSError(errno.EMFILE, "Too many open files")


@contextlib.contextmanager
def out_of_descriptors(
    listener: Listener, monkeypatch: pytest.MonkeyPatch, retry: float = 0.2
) -> Iterator[Exhausted]:
    """While inside, ``listener``'s first socket fails every accept with ``EMFILE`` (and a
    pause lasts ``retry`` seconds); on leaving, accepts work again."""
    monkeypatch.setattr(listener_module, "ACCEPT_RETRY", retry)
    real = listener.sockets[0]
    listener._stop_accepting()
    exhausted = Exhausted(real)
    listener.sockets[0] = exhausted  # type: ignore[call-overload]
    listener._start_accepting()
    try:
        yield exhausted
    finally:
        listener.sockets[0] = real  # descriptors are free again


async def pauses_without_spinning(
    exhausted: Exhausted, connecting: asyncio.Future[Any], passes: int = 200
) -> None:
    """Once the first accept failed, the loop runs ``passes`` times more: a spinning accept
    loop would be called on each pass; a paused one is not, and ``connecting`` waits in the
    backlog."""
    await until(lambda: exhausted.calls >= 1)
    for _ in range(passes):
        await asyncio.sleep(0)
    assert exhausted.calls == 1 and not connecting.done()


@contextlib.contextmanager
def traced() -> Iterator[Callable[[], int]]:
    """Inside, ``grown()`` is how much more Python memory (tracemalloc) is held than on
    entering. Clients in a thread with blocking sockets keep their buffers in OpenSSL, not in
    Python: what ``grown()`` counts is the side under test."""
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    try:
        yield lambda: tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
