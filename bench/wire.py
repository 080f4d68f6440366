"""Bytes per room message: the frame with and without its signature and sequence number, and
what TLS adds on the wire, trust on and off.

    .venv/bin/python -m bench.wire                   # texts of 10, 100, 1000 bytes, seconds
    .venv/bin/python -m bench.wire --quick

1. **Frames.** Room messages made by the peer's own code (``FloodRouter.originate``, signed by
   ``Identity.sign_message`` as the core does when trust is on), encoded as they go on a link:
   with signature and sequence number (trust on), with the sequence number only (trust off), and
   with neither (the fields before signatures).
2. **Socket.** Two real peers in one room (one link), in this process: one says ``--count``
   messages of each size, either one per turn of the event loop (``paced``: each frame its own
   write, so its own TLS record, as at 100 msg/s) or all at once (``burst``: the frames of one
   turn go out in one write). Counted: the plaintext frames the receiving peer's link got, and the
   bytes on the sending socket (the kernel's ``tcpi_bytes_acked``, so no TCP/IP headers).
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import socket
import struct
import sys
import tempfile
import termios
import time
from pathlib import Path
from typing import Any

import msgspec

from bench._worker import InlineWorker, Worker
from bench.common import (
    ROOM,
    command_line,
    header,
    raise_nofile,
    results_path,
    save_results,
    shown,
    start_registry,
    table,
    trust_list,
    trust_name,
    usernames,
)
from p2pchat.peer.identity import Identity
from p2pchat.peer.node import PeerNode
from p2pchat.peer.router import FloodRouter
from p2pchat.protocol.messages import encode
from p2pchat.trust.signing import Signer

MODULE = "bench.wire"
_TCP_INFO_BYTES_ACKED = 120
"""Offset of ``tcpi_bytes_acked`` (u64) in Linux's ``struct tcp_info``."""


def frame_sizes(size: int, ts: float) -> dict[str, int]:
    """One message of ``size`` bytes of text, encoded three ways (bytes, newline included)."""
    text = "x" * size
    identity = Identity(Signer())
    router = FloodRouter("u00001")
    signed = router.originate(
        ROOM, text, 0.0, ["u00002"], ts=ts, seq=12, sign=identity.sign_message
    )
    plain = router.originate(ROOM, text, 0.0, ["u00002"], ts=ts, seq=12)
    bare = {k: v for k, v in msgspec.structs.asdict(plain.msg).items() if k not in ("seq", "sig")}
    bare_frame = msgspec.json.encode({"type": "room_msg", **bare}) + b"\n"
    assert signed.frame == encode(signed.msg)
    return {"signed": len(signed.frame), "seq_only": len(plain.frame), "bare": len(bare_frame)}


def _bytes_acked(sock: Any) -> int:
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return int(struct.unpack_from("Q", info, _TCP_INFO_BYTES_ACKED)[0])


async def _settled(sock: Any, timeout: float = 5.0) -> int:
    """``tcpi_bytes_acked`` once nothing written is left unacknowledged (``TIOCOUTQ`` is 0)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        queued = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]
        if queued == 0:
            break
        await asyncio.sleep(0.005)
    return _bytes_acked(sock)


async def socket_bytes(secure: bool, sizes: list[int], count: int) -> list[dict[str, Any]]:
    users = usernames(2)
    registry = await start_registry(users, {ROOM: users}, secure=secure)
    worker = Worker()
    inline = InlineWorker(worker)
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="p2pchat-bench-") as home:
            await inline.call(
                "setup", registry_port=registry.port, users=users, secure=secure, home=home
            )
            conv = await inline.call("converge", online=users, timeout=10.0)
            if not conv["converged"]:
                raise RuntimeError(f"the two peers did not link: {conv['missing']}")
            sender, receiver = worker.nodes
            assert isinstance(sender, PeerNode) and isinstance(receiver, PeerNode)
            (link,) = sender.links.values()
            (inbound,) = receiver.links.values()
            assert link.transport is not None
            sock = link.transport.get_extra_info("socket")
            plaintext = [0]
            original = inbound.data_received

            def counting(data: bytes) -> None:
                plaintext[0] += len(data)
                original(data)

            inbound.data_received = counting  # type: ignore[method-assign]
            for mode in ("paced", "burst"):
                for size in sizes:
                    worker.rec.reset(count)
                    await asyncio.sleep(0.05)
                    before = await _settled(sock)
                    plaintext[0] = 0
                    if mode == "paced":
                        for i in range(count):
                            await sender.say(ROOM, f"{i:08d}".ljust(size, "x"))
                            await asyncio.sleep(0.001)  # the write goes out on its own
                    else:
                        await asyncio.gather(
                            *(sender.say(ROOM, f"{i:08d}".ljust(size, "x")) for i in range(count))
                        )
                    await asyncio.wait_for(worker.rec.done.wait(), 10.0)
                    await asyncio.sleep(0.05)
                    sent = await _settled(sock) - before
                    rows.append(
                        {
                            "trust": trust_name(secure),
                            "mode": mode,
                            "text": size,
                            "messages": count,
                            "plain_per_msg": plaintext[0] / count,
                            "wire_per_msg": sent / count,
                            "overhead_per_msg": (sent - plaintext[0]) / count,
                        }
                    )
    finally:
        await inline.call("stop")
        await registry.close()
        registry.core.store.close()
    return rows


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"python -m {MODULE}",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--sizes", default="10,100,1000", help="bytes of text")
    p.add_argument("--count", type=int, default=500, help="messages per size and mode")
    p.add_argument("--trust", type=trust_list, default=[True, False], help="on, off or on,off")
    p.add_argument("--out", type=Path, default=None, help="default bench/results/wire.json")
    p.add_argument("--quick", action="store_true", help="50 messages per size and mode")
    return p


def render(frames: list[dict[str, Any]], wire: list[dict[str, Any]]) -> str:
    text = "frames (bytes, newline included):\n" + table(
        ["text", "signed + seq (on)", "seq only (off)", "neither", "sig adds", "seq adds"],
        [
            [
                f["text"],
                f["signed"],
                f["seq_only"],
                f["bare"],
                f["signed"] - f["seq_only"],
                f["seq_only"] - f["bare"],
            ]
            for f in frames
        ],
    )
    text += "\n\non the socket, per message (bytes):\n" + table(
        ["trust", "mode", "text", "frames", "on the wire", "TLS adds"],
        [
            [
                w["trust"],
                w["mode"],
                w["text"],
                w["plain_per_msg"],
                w["wire_per_msg"],
                w["overhead_per_msg"],
            ]
            for w in wire
        ],
    )
    by = {(w["mode"], w["text"], w["trust"]): w for w in wire}
    pairs = []
    for (mode, size, trust), w in by.items():
        off = by.get((mode, size, "off"))
        if trust == "on" and off is not None:
            pairs.append(
                [
                    mode,
                    size,
                    w["wire_per_msg"] - off["wire_per_msg"],
                    w["wire_per_msg"] / off["wire_per_msg"],
                ]
            )
    if pairs:
        text += "\n\ntrust on against off, on the wire:\n" + table(
            ["mode", "text", "bytes added", "on / off"], pairs
        )
    return text


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quick:
        parser.set_defaults(count=50)
        args = parser.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
    command = command_line(MODULE, argv)
    print(header("bytes per room message: signatures and TLS", command), flush=True)
    raise_nofile()
    frames = [{"text": size, **frame_sizes(size, time.time())} for size in sizes]

    async def measure() -> list[dict[str, Any]]:
        rows = []
        for secure in args.trust:
            rows += await socket_bytes(secure, sizes, args.count)
        return rows

    wire = asyncio.run(measure())
    print(render(frames, wire))
    out = results_path(args.out, args.quick, "wire")
    if out is not None:
        path = save_results("wire", command, wire, {"frames": frames}, out)
        print(f"\nresults: {shown(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
