"""Newline-delimited frames with a hard size bound.

JSON lines are easy to type with ``nc``; the bound keeps a misbehaving sender from making us
buffer without limit (we raise instead of growing, as h11 does).
"""

from __future__ import annotations

MAX_FRAME = 64 * 1024
"""Largest frame in bytes, not counting the newline."""


class FrameTooLarge(Exception):
    """A frame (or an unterminated run of bytes) exceeded the bound; the stream is unusable.

    ``frames`` holds the complete frames that came before the oversized one in the same
    ``feed``: they were sent in good faith and deserve an answer before the stream is closed.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.frames: list[bytes] = []


class LineFramer:
    """Splits a byte stream into frames at ``\\n``; a trailing ``\\r`` is dropped.

    Blank lines are skipped so that a person pressing Enter in ``nc`` does no harm.

    The common case, a chunk that holds whole frames and nothing buffered from before, is one
    ``bytes.split`` and a bound check in C: each frame is copied once, out of the chunk.
    Between calls the buffer never holds a newline, so nothing is scanned twice.
    """

    __slots__ = ("_buf", "_max")

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self._max = max_frame

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return the complete frames they finish, in order."""
        buf = self._buf
        if not buf and data[-1:] == b"\n" and len(data) <= self._max and b"\r" not in data:
            # Whole frames, none of them too long: split and go.
            lines = data.split(b"\n")
            lines.pop()
            return lines if all(lines) else [line for line in lines if line]
        frames: list[bytes] = []
        try:
            return self._feed_slow(buf, data, frames)
        except FrameTooLarge as exc:
            exc.frames = frames
            raise

    def _feed_slow(self, buf: bytearray, data: bytes, frames: list[bytes]) -> list[bytes]:
        if buf:
            pos = data.find(b"\n")
            if pos == -1:
                buf += data
                if len(buf) > self._max + 1:
                    raise FrameTooLarge(f"more than {self._max} bytes without a newline")
                return frames
            buf += memoryview(data)[:pos]
            line = bytes(buf)
            buf.clear()
            self._take([line], frames)
            data = data[pos + 1 :]
        lines = data.split(b"\n")
        tail = lines.pop()
        if lines:
            if len(data) <= self._max and b"\r" not in data:  # no frame can be too long
                frames += lines if all(lines) else filter(None, lines)
            else:
                self._take(lines, frames)
        if tail:
            if len(tail) > self._max + 1:
                raise FrameTooLarge(f"more than {self._max} bytes without a newline")
            buf += tail
        return frames

    def _take(self, lines: list[bytes], frames: list[bytes]) -> None:
        """Append the non-blank ``lines`` (less a trailing ``\\r``) to ``frames``, bounded."""
        limit = self._max
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if len(line) > limit:
                raise FrameTooLarge(f"frame of {len(line)} bytes exceeds {limit}")
            if line:
                frames.append(line)

    @property
    def buffered(self) -> int:
        """Bytes held waiting for a newline."""
        return len(self._buf)
