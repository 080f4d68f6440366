"""The full-screen terminal UI (Textual)."""

from __future__ import annotations

from p2pchat.peer.node import PeerConfig


async def run_tui(config: PeerConfig) -> int:
    from p2pchat.ui.line import run_line_mode

    return await run_line_mode(config)
