"""The full-screen terminal UI (Textual): ``p2pchat peer --ui tui``, and the demo's client."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

from p2pchat.peer.node import PeerConfig
from p2pchat.ui.tui import memory
from p2pchat.ui.tui.app import AutoLogin, ChatApp, LogPosted

__all__ = ["AutoLogin", "ChatApp", "run_tui"]


class _ToApp(logging.Handler):
    """Log records go to the home conversation while the screen is ours."""

    def __init__(self, app: ChatApp, level: int) -> None:
        super().__init__(level)
        self.app = app

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.app.post_message(
                LogPosted(f"log {record.levelname.lower()}: {record.getMessage()}")
            )
        except Exception:
            self.handleError(record)


@contextlib.contextmanager
def _logging_into(app: ChatApp) -> Iterator[None]:
    """Stream handlers would write over the full-screen display; swap them for the app."""
    root = logging.getLogger()
    streams = [
        h
        for h in root.handlers
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
    ]
    handler = _ToApp(app, root.level or logging.WARNING)  # what --log-level asked for
    for h in streams:
        root.removeHandler(h)
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        for h in streams:
            root.addHandler(h)


async def run_tui(
    config: PeerConfig,
    *,
    autologin: AutoLogin | None = None,
    memory_path: Path | None = None,
    stop: asyncio.Event | None = None,
    bell: bool = True,
) -> int:
    """Run the app on the current event loop until the user quits; the exit status."""
    app = ChatApp(
        config,
        memory_path=memory_path or memory.default_path(),
        autologin=autologin,
        stop=stop,
        bell=bell,
    )
    try:
        with _logging_into(app):
            result = await app.run_async()
    finally:
        await app.close_node()
    return result if result is not None else 0
