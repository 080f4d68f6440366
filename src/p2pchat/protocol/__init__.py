"""The wire: framing (bytes <-> frames) and typed messages. No sockets here."""

from p2pchat.protocol.framing import MAX_FRAME, FrameTooLarge, LineFramer
from p2pchat.protocol.messages import PROTOCOL_VERSION, ErrorCode, decode, decode_error, encode

__all__ = [
    "MAX_FRAME",
    "PROTOCOL_VERSION",
    "ErrorCode",
    "FrameTooLarge",
    "LineFramer",
    "decode",
    "decode_error",
    "encode",
]
