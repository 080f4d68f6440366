"""Room history and catch-up (``peer/history.py``, ``peer/sync.py``): bytes, round trips, time,
disk, insert and query rates.

    .venv/bin/python -m bench.history            # about 20 s
    .venv/bin/python -m bench.history --quick    # a few seconds

Two (or more) peers' real sync engines and SQLite histories in one process, frames encoded and
decoded as on a link but handed over in *flights* (every frame in flight is delivered before
the answers go out), so round trips are counted exactly and the time is the work alone: what
loopback adds is about 0.1 ms a round trip. Messages are signed (Ed25519) and every message a
peer receives by catch-up is verified, as a peer would.

- **nothing missing**: both peers hold the same messages of a room with ``--streams`` senders;
  the bytes both ways of one exchange.
- **catch-up**: a member missed ``--missed`` messages from 10 and from 100 senders (the room
  held 20 messages a sender before); bytes both ways, round trips, time. Also from 6
  neighbours at once (a mesh), counting messages received twice.
- **disk**: ``--disk-messages`` messages of ``--text`` bytes in one room, file size after a
  WAL checkpoint, per 10,000 messages.
- **rates**: inserts one per transaction, live (a savepoint each in the open batch, as a peer
  writes what it is shown) and 1,000 a transaction; queries: the last 50 of a
  room, a stream range of 100, the summary and digest of 100 streams, opening the file (with
  its quick check).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import command_line, header, median, save_results, shown, table
from p2pchat.peer.history import History, StoredMessage
from tests.peer.histories import ROOM, Net, ids, message, verify

MODULE = "bench.history"
WALL = 2_000_000.0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"python -m {MODULE}",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--streams", type=int, default=100, help="senders in the room")
    p.add_argument("--missed", type=int, default=1000, help="messages missed")
    p.add_argument("--text", type=int, default=100, help="bytes of text a message")
    p.add_argument("--disk-messages", type=int, default=10_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="smaller figures, one run")
    p.add_argument("--out", type=Path, default=None, help="also write the rows here")
    return p


def text_of(n: int, i: int) -> str:
    return (f"message {i} " + "x" * n)[:n]


def room_messages(senders: int, per: int, first: int, n_text: int) -> list[StoredMessage]:
    return [
        message(f"u{s:03d}", i, ts=WALL - 3600 + i, text=text_of(n_text, i), sign=True)
        for s in range(senders)
        for i in range(first, first + per)
    ]


def nothing_missing(streams: int, n_text: int) -> dict[str, Any]:
    net = Net()
    a = net.add("a", accept=verify).history
    b = net.add("b", accept=verify).history
    ms = room_messages(streams, 5, 1, n_text)
    a.add_many(ms, WALL)
    b.add_many(ms, WALL)
    start = time.perf_counter()
    flights = net.start("a", "b")
    took = time.perf_counter() - start
    return {
        "scenario": f"nothing missing, {streams} streams",
        "bytes": net.bytes,
        "frames": len(net.frames),
        "round_trips": flights / 2,
        "ms": took * 1000,
        "received_twice": 0,
    }


def catch_up(senders: int, missed: int, n_text: int, neighbours: int = 1) -> dict[str, Any]:
    net = Net()
    net.add("me", accept=verify)
    names = [f"n{i}" for i in range(neighbours)]
    before = room_messages(senders, 20, 1, n_text)
    per = max(1, missed // senders)
    later = room_messages(senders, per, 21, n_text)
    net.nodes["me"].history.add_many(before, WALL)
    for name in names:
        net.add(name, accept=verify).history.add_many(before + later, WALL)
    sends = [("me", s) for n in names for s in net.nodes["me"].sync.start(ROOM, n, 0.0)]
    sends += [(n, s) for n in names for s in net.nodes[n].sync.start(ROOM, "me", 0.0)]
    start = time.perf_counter()
    flights = net.run(sends)
    took = time.perf_counter() - start
    got = ids(net.nodes["me"].history)
    assert {m.id for m in later} <= got, "catch-up incomplete"
    sent = net.batch_ids()
    return {
        "scenario": f"catch up {len(later):,} from {senders} senders"
        + (f", {neighbours} neighbours" if neighbours > 1 else ""),
        "bytes": net.bytes,
        "frames": len(net.frames),
        "round_trips": flights / 2,
        "ms": took * 1000,
        "received_twice": len(sent) - len(set(sent)),
    }


def disk(n: int, n_text: int, folder: Path) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "history.db"
    h = History(path)
    ms = room_messages(100, n // 100, 1, n_text)
    for i in range(0, len(ms), 1000):
        h.add_many(ms[i : i + 1000], WALL)
    h._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    h.close()
    size = path.stat().st_size + sum(
        p.stat().st_size for p in folder.iterdir() if p.name != "history.db"
    )
    start = time.perf_counter()
    History(path).close()
    open_ms = (time.perf_counter() - start) * 1000
    return {
        "messages": len(ms),
        "text_bytes": n_text,
        "file_bytes": size,
        "bytes_per_message": size / len(ms),
        "mib_per_10k": size / len(ms) * 10_000 / 2**20,
        "open_ms": open_ms,
    }


def rates(n_text: int, folder: Path, count: int) -> dict[str, float]:
    ms = room_messages(100, max(1, count // 100), 1, n_text)
    out: dict[str, float] = {}
    folder.mkdir(parents=True, exist_ok=True)
    h = History(folder / "one.db")
    start = time.perf_counter()
    for m in ms[:2000]:
        h.add(m, WALL)
    out["insert_one_per_s"] = 2000 / (time.perf_counter() - start)
    h.close()
    # the live path: each message in the open batch (a savepoint), committed as the peer does
    h = History(folder / "live.db")
    start = time.perf_counter()
    for m in ms[:2000]:
        h.add(m, WALL, batched=True)
    h.flush()
    out["insert_live_per_s"] = 2000 / (time.perf_counter() - start)
    h.close()
    h = History(folder / "batch.db")
    start = time.perf_counter()
    for i in range(0, len(ms), 1000):
        h.add_many(ms[i : i + 1000], WALL)
    out["insert_batched_per_s"] = len(ms) / (time.perf_counter() - start)
    key = ms[0].key

    def rate(fn: Any, n: int = 300) -> float:
        start = time.perf_counter()
        for _ in range(n):
            fn()
        return n / (time.perf_counter() - start)

    out["last_50_per_s"] = rate(lambda: h.last(ROOM, 50))
    out["range_100_per_s"] = rate(lambda: h.stream_range(ROOM, "u000", key, 1, 100, 100))
    out["summary_per_s"] = rate(lambda: h.summary(ROOM), 100)
    out["digest_cached_per_s"] = rate(lambda: h.digest(ROOM), 3000)

    def fresh_digest() -> None:
        h._digests.clear()
        h.digest(ROOM)

    out["digest_uncached_per_s"] = rate(fresh_digest, 100)
    h.close()
    return out


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.repeat, args.disk_messages = 1, min(args.disk_messages, 2000)
    command = command_line(MODULE)
    print(header("History and catch-up", command))

    scenarios = [
        lambda: nothing_missing(args.streams, args.text),
        lambda: catch_up(10, args.missed, args.text),
        lambda: catch_up(100, args.missed, args.text),
        lambda: catch_up(100, args.missed, args.text, neighbours=6),
    ]
    rows: list[dict[str, Any]] = []
    for run in scenarios:
        runs = [run() for _ in range(args.repeat)]
        row = dict(runs[0])
        row["ms"] = median(r["ms"] for r in runs)
        rows.append(row)
    print(
        table(
            ["scenario", "bytes", "frames", "round trips", "time ms", "received twice"],
            [
                [
                    r["scenario"],
                    r["bytes"],
                    r["frames"],
                    r["round_trips"],
                    r["ms"],
                    r["received_twice"],
                ]
                for r in rows
            ],
        )
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        d = disk(args.disk_messages, args.text, folder / "disk")
        r = rates(args.text, folder / "rates", args.disk_messages)
    print()
    print(
        table(
            ["messages", "text bytes", "file bytes", "bytes/message", "MiB per 10,000", "open ms"],
            [
                [
                    d["messages"],
                    d["text_bytes"],
                    d["file_bytes"],
                    d["bytes_per_message"],
                    d["mib_per_10k"],
                    d["open_ms"],
                ]
            ],
        )
    )
    print()
    print(table(["operation", "per second"], [[k.removesuffix("_per_s"), v] for k, v in r.items()]))
    summary = {
        "nothing_missing_bytes": rows[0]["bytes"],
        "catch_up_10_senders": {k: rows[1][k] for k in ("bytes", "round_trips", "ms")},
        "catch_up_100_senders": {k: rows[2][k] for k in ("bytes", "round_trips", "ms")},
        "catch_up_6_neighbours": {
            k: rows[3][k] for k in ("bytes", "round_trips", "ms", "received_twice")
        },
        "disk": d,
        "rates": r,
    }
    path = save_results("history", command, rows, {"summary": summary}, args.out)
    print(f"\nresults: {shown(path)}")
    print(json.dumps(_rounded(summary)))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
