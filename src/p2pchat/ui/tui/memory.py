"""The last registry and username, so the login screen comes back filled in.

A tiny JSON file under ``$XDG_CONFIG_HOME/p2pchat/`` (``~/.config/p2pchat/last.json``). It
never holds a password. A missing, unreadable or foreign file is the same as no file.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path


def default_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "p2pchat" / "last.json"


@dataclass(frozen=True, slots=True)
class Remembered:
    registry: str | None = None
    username: str | None = None


def load(path: Path | None) -> Remembered:
    if path is None:
        return Remembered()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return Remembered()
    if not isinstance(data, dict):
        return Remembered()
    registry, username = data.get("registry"), data.get("username")
    return Remembered(
        registry if isinstance(registry, str) else None,
        username if isinstance(username, str) else None,
    )


def save(path: Path | None, registry: str, username: str) -> None:
    """Write atomically; failing to remember is not worth an error on screen."""
    if path is None:
        return
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"registry": registry, "username": username}) + "\n", "utf-8")
        tmp.replace(path)
