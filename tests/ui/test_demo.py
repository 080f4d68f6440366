"""``p2pchat demo``: it starts, messages flow to the newcomer, and everything stops cleanly."""

from __future__ import annotations

import asyncio
import os
import sys

from p2pchat.demo import BOTS, LOBBY, Demo, pick_username
from p2pchat.ui.tui import AutoLogin, ChatApp
from tests.ui.harness import WAIT, fixed_clock, running, settle, write


async def test_demo_in_the_terminal_ui() -> None:
    demo = Demo(user="newcomer", pace=(0.3, 0.8))
    try:
        await demo.start()
        app = ChatApp(
            demo.user_config,
            autologin=AutoLogin(demo.username, demo.password, room=LOBBY),
            clock=fixed_clock,
        )
        async with running(app) as pilot:
            await settle(pilot, lambda: app.convs.current == LOBBY)
            await settle(pilot, lambda: any("ada: welcome, newcomer" in s for s in app.lines()))
            await write(pilot, "hi grace")
            await settle(pilot, lambda: any(s.startswith("12:00 grace: ") for s in app.lines()))
            await write(pilot, "/msg ada ping")
            await settle(pilot, lambda: "12:00 ada: echo: ping" in app.lines("@ada"))
            await pilot.press("ctrl+q")
        assert app.return_code == 0
    finally:
        await demo.stop()
    assert not demo.folder.exists()
    assert all(bot.node.registry is None or bot.node.registry.closed.is_set() for bot in demo.bots)


async def test_demo_command_in_line_mode() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "p2pchat",
        "demo",
        "--no-tui",
        "--duration",
        "3",
        "--user",
        "tester",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), WAIT + 10)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = out.decode()
    assert proc.returncode == 0, err.decode()
    assert "* demo: registry on 127.0.0.1:" in text
    assert "Message from ada at lobby: welcome, tester!" in text
    assert text.rstrip().endswith("temporary folder removed")


def test_the_newcomer_never_takes_a_bots_name() -> None:
    assert pick_username("ada") == "ada_"
    assert pick_username("José Pérez") == "JosPrez"
    assert pick_username("root") == "you"
    assert pick_username("") == "you"
    assert all(pick_username(b) not in BOTS for b in BOTS)
