"""Newline-delimited frames with a hard size bound.

JSON lines are easy to type with ``nc``; the bound keeps a misbehaving sender from making us
buffer without limit (we raise instead of growing, as h11 does).
"""

from __future__ import annotations

MAX_FRAME = 64 * 1024
"""Largest frame in bytes, not counting the newline."""


class FrameTooLarge(Exception):
    """A frame (or an unterminated run of bytes) exceeded the bound; the stream is unusable."""


class LineFramer:
    """Splits a byte stream into frames at ``\\n``; a trailing ``\\r`` is dropped.

    Blank lines are skipped so that a person pressing Enter in ``nc`` does no harm.
    """

    __slots__ = ("_buf", "_max", "_scanned")

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self._max = max_frame
        self._scanned = 0

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return the complete frames they finish, in order."""
        buf = self._buf
        buf += data
        frames: list[bytes] = []
        start = 0
        pos = buf.find(b"\n", self._scanned)
        while pos != -1:
            end = pos - 1 if pos > start and buf[pos - 1] == 0x0D else pos
            if end - start > self._max:
                raise FrameTooLarge(f"frame of {end - start} bytes exceeds {self._max}")
            if end > start:
                frames.append(bytes(buf[start:end]))
            start = pos + 1
            pos = buf.find(b"\n", start)
        if start:
            del buf[:start]
        self._scanned = len(buf)
        if len(buf) > self._max + 1:
            raise FrameTooLarge(f"more than {self._max} bytes without a newline")
        return frames

    @property
    def buffered(self) -> int:
        """Bytes held waiting for a newline."""
        return len(self._buf)
