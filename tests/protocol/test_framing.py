"""The framer must give back exactly the frames sent, however TCP splits them, and bound memory."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pchat.protocol.framing import MAX_FRAME, FrameTooLarge, LineFramer

SETTINGS = settings(derandomize=True, database=None, deadline=None, max_examples=300)
SMALL = 16
"""A small bound, so that generated data often crosses it."""

frames_st = (
    st.binary(max_size=SMALL)
    .map(lambda b: b.replace(b"\n", b""))
    .filter(lambda b: b != b"" and not b.endswith(b"\r"))
)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def oracle(data: bytes, max_frame: int) -> tuple[list[bytes], bool]:
    """The frames in ``data``, and whether a framer bounded by ``max_frame`` must give up."""
    *lines, tail = data.split(b"\n")
    frames: list[bytes] = []
    for line in lines:
        content = line.removesuffix(b"\r")
        if len(content) > max_frame:
            return frames, True
        if content:
            frames.append(content)
    # An unterminated line may still end in the "\r" of a CRLF, hence the + 1.
    return frames, len(tail) > max_frame + 1


@SETTINGS
@given(
    frames=st.lists(frames_st, max_size=20),
    endings=st.lists(st.sampled_from([b"\n", b"\r\n", b"\n\n", b"\r\n\r\n", b"\n\r\n"])),
    cuts=st.lists(st.integers(0, 10_000), max_size=30),
)
def test_frames_survive_any_split(
    frames: list[bytes], endings: list[bytes], cuts: list[int]
) -> None:
    data = b"".join(f + (endings[i] if i < len(endings) else b"\n") for i, f in enumerate(frames))
    framer = LineFramer(SMALL)
    got: list[bytes] = []
    for chunk in chunked(data, cuts):
        got += framer.feed(chunk)
    assert got == frames
    assert framer.buffered == 0


@SETTINGS
@given(
    data=st.lists(st.sampled_from([b"\n", b"\r", b"\r\n", b"x", b"\xff", b"{}", b"\x00"])).map(
        b"".join
    )
    | st.binary(max_size=200),
    cuts=st.lists(st.integers(0, 10_000), max_size=30),
)
def test_garbage_only_ever_raises_frame_too_large(data: bytes, cuts: list[int]) -> None:
    frames, must_fail = oracle(data, SMALL)
    framer = LineFramer(SMALL)
    got: list[bytes] = []
    fed = 0
    try:
        for chunk in chunked(data, cuts):
            got += framer.feed(chunk)
            fed += len(chunk)
            assert framer.buffered == fed - (data.rfind(b"\n", 0, fed) + 1)
    except FrameTooLarge:
        assert must_fail
        assert got == frames[: len(got)]
    else:
        assert not must_fail
        assert got == frames


def test_frame_at_the_bound_passes_and_one_more_byte_fails() -> None:
    framer = LineFramer(SMALL)
    assert framer.feed(b"a" * SMALL + b"\r\n") == [b"a" * SMALL]
    with pytest.raises(FrameTooLarge):
        LineFramer(SMALL).feed(b"a" * (SMALL + 1) + b"\n")


def test_unterminated_frame_fails_while_trickling_in() -> None:
    framer = LineFramer(SMALL)
    for _ in range(SMALL + 1):  # may still be a full frame and the "\r" of its CRLF
        assert framer.feed(b"a") == []
    assert framer.buffered == SMALL + 1
    with pytest.raises(FrameTooLarge):
        framer.feed(b"a")


def test_long_line_fails_even_after_good_frames_in_the_same_chunk() -> None:
    with pytest.raises(FrameTooLarge):
        LineFramer(SMALL).feed(b"ok\n" + b"a" * (SMALL + 2))


def test_default_bound() -> None:
    assert LineFramer().feed(b"a" * MAX_FRAME + b"\n") == [b"a" * MAX_FRAME]
    with pytest.raises(FrameTooLarge):
        LineFramer().feed(b"a" * (MAX_FRAME + 1) + b"\n")


def test_blank_lines_and_crlf() -> None:
    framer = LineFramer()
    assert framer.feed(b"\n\r\n\n") == []
    assert framer.feed(b'{"a":1}\r') == []
    assert framer.feed(b'\n{"b":2}\n\r\n{"c"') == [b'{"a":1}', b'{"b":2}']
    assert framer.buffered == 4
    assert framer.feed(b":3}\n") == [b'{"c":3}']
    # Only a "\r" right before the "\n" is line ending; others are content.
    assert framer.feed(b"a\rb\r\r\n") == [b"a\rb\r"]


@given(
    frames=st.lists(frames_st, min_size=1, max_size=5),
    cut=st.integers(min_value=0, max_value=3),
)
@SETTINGS
def test_frames_before_an_oversized_one_come_with_the_error(frames: list[bytes], cut: int) -> None:
    framer = LineFramer(max_frame=SMALL)
    good = b"".join(f + b"\n" for f in frames)
    chunk = good + b"y" * (SMALL + 2) + (b"\n" if cut % 2 else b"")
    with pytest.raises(FrameTooLarge) as caught:
        framer.feed(chunk)
    assert caught.value.frames == frames
