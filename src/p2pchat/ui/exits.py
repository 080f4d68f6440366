"""The exit statuses of the ``p2pchat`` programs, in one place for the command and the UIs."""

from __future__ import annotations

import signal

OK = 0
FAILED = 1
"""The program could not do all it was asked: a line-mode command answered ``error:``."""
CANNOT_START = 2
"""A port could not be had, a database could not be opened, a demo could not start."""
INTERRUPTED = 128 + signal.SIGINT
"""Ctrl+C (SIGINT), as shells report it."""
