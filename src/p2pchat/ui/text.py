"""Text from other peers made safe to print: one line, no terminal control, no reordering.

A consumer of the line mode splits the output into lines (Python's ``splitlines()`` breaks on
far more than ``\\n``) and trusts ``Message from alice: ...`` at the start of one. So every
character that can end a line, drive a terminal or reorder what is shown is written as a
visible escape (``\\u2028``), never passed through.
"""

from __future__ import annotations

_BIDI = [0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
"""Arabic letter mark, LRM/RLM, the embeddings and overrides, the isolates."""
_LINE_BREAKS = [0x2028, 0x2029]
"""Line and paragraph separators (NEL, U+0085, is a C1 control below)."""
_CONTROLS = [c for c in [*range(0x20), *range(0x7F, 0xA0)] if c != 0x09]
"""C0 controls, DEL and C1 controls; a tab is harmless and kept."""
_SURROGATES = range(0xD800, 0xE000)
"""A lone surrogate cannot be written as UTF-8 at all: printing it would fail."""

_ESCAPES: dict[int, str] = {
    c: f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"
    for c in [*_CONTROLS, *_LINE_BREAKS, *_BIDI, *_SURROGATES]
}


def safe(text: str) -> str:
    """``text`` with every unsafe character escaped; safe text is returned unchanged, so
    escaping twice is the same as once."""
    return text.translate(_ESCAPES)
