"""The screen at 80x24, as text, against files kept in tests/ui/snapshots/.

No plugin: the screen is rendered to plain text (what a person reads; colours are checked
elsewhere). Ports and the heartbeat's age vary between runs and are masked. After a change
that is meant to alter the screen, rerun with ``P2PCHAT_UPDATE_SNAPSHOTS=1`` and review the
diff of the .txt files.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from p2pchat.peer.events import RoomText
from p2pchat.registry.server import RegistryServer
from p2pchat.ui.tui.screens import LoginScreen
from tests.ui.harness import (
    PASSWORD,
    PeerFactory,
    auto,
    linked,
    logged_in,
    make_app,
    running,
    screen_text,
    settle,
    write,
)

SNAPSHOTS = Path(__file__).parent / "snapshots"


def check(name: str, text: str, registry: RegistryServer) -> None:
    text = text.replace(f":{registry.port}", ":NNNNN")
    text = re.sub(r"♥ \d+s ago", "♥ Ns ago", text).rstrip("\n")
    path = SNAPSHOTS / f"{name}.txt"
    if os.environ.get("P2PCHAT_UPDATE_SNAPSHOTS") == "1":
        path.write_text(text + "\n", encoding="utf-8")
    expected = path.read_text(encoding="utf-8").rstrip("\n")
    assert text == expected, f"the screen changed; see {path} (P2PCHAT_UPDATE_SNAPSHOTS=1)"


async def test_login_screen(registry: RegistryServer, tmp_path: Path) -> None:
    app = make_app(registry, memory_path=tmp_path / "last.json")
    async with running(app) as pilot:
        await settle(pilot, lambda: isinstance(app.screen, LoginScreen))
        check("login_80x24", screen_text(app), registry)
        assert "p2pchat" in app.export_screenshot()  # the SVG works too


async def test_main_screen(registry: RegistryServer, peer: PeerFactory) -> None:
    bob = await peer("bob", room="lobby", create=True)
    carol = await peer("carol", room="lobby")
    await carol.node.logout()  # a member who is offline
    await peer("dave", room="lobby")
    app = make_app(registry, autologin=auto("alice"))
    async with running(app) as pilot:
        await logged_in(pilot, app)
        assert app.node is not None
        await bob.until(lambda: linked(bob.node, app.node, "lobby"))  # type: ignore[arg-type]
        await bob.node.say("lobby", "hi alice, welcome to the lobby")
        await settle(pilot, lambda: len(app.lines("lobby")) == 1)
        await write(pilot, "hello everyone")
        await bob.until(
            lambda: any(isinstance(e, RoomText) and e.sender == "alice" for e in bob.events)
        )
        await bob.node.send_direct("alice", "psst, a direct message")
        await settle(pilot, lambda: app.convs.by_key.get("@bob") is not None)
        await write(pilot, "typing while messages arrive", enter=False)
        await settle(pilot, lambda: app.node is not None and len(app.node.linked_peers()) == 2)
        check("main_80x24", screen_text(app), registry)
        assert PASSWORD not in screen_text(app)
