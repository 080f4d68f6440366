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
            await write(pilot, "hi grace")  # named, grace answers (small talk never names us)
            await settle(pilot, lambda: any(_from("grace", "newcomer", s) for s in app.lines()))
            await write(pilot, "/msg ada ping")
            await settle(pilot, lambda: "12:00 ada: echo: ping" in app.lines("@ada"))
            await pilot.press("ctrl+q")
        assert app.return_code == 0
    finally:
        await demo.stop()
    assert not demo.folder.exists()
    assert not any(bot.node.status().registry for bot in demo.bots)


def _from(sender: str, mentioning: str, line: str) -> bool:
    return line.startswith(f"12:00 {sender}: ") and mentioning in line


async def test_demo_command_in_line_mode() -> None:
    """The real command: it starts, the welcome flows, /quit stops everything."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "p2pchat",
        "demo",
        "--no-tui",
        "--user",
        "tester",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdin is not None and proc.stdout is not None
    seen: list[str] = []

    async def until_welcome() -> None:
        assert proc.stdout is not None
        while line := (await proc.stdout.readline()).decode():
            seen.append(line)
            if line.startswith("Message from ada at lobby: welcome, tester!"):
                return
        raise AssertionError(f"the demo ended first: {seen}")

    try:
        await asyncio.wait_for(until_welcome(), WAIT + 10)
        proc.stdin.write(b"/quit\n")
        out, err = await asyncio.wait_for(proc.communicate(), WAIT)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = "".join(seen) + out.decode()
    assert proc.returncode == 0, err.decode()
    assert "* demo: registry on 127.0.0.1:" in text
    assert text.rstrip().endswith("temporary folder removed")


def test_the_newcomer_never_takes_a_bots_name() -> None:
    assert pick_username("ada") == "ada_"
    assert pick_username("José Pérez") == "JosPrez"
    assert pick_username("root") == "you"
    assert pick_username("") == "you"
    assert all(pick_username(b) not in BOTS for b in BOTS)
