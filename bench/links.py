"""Link setup: the time from dial to an open link, and its CPU at each end, trust on and off.

    .venv/bin/python -m bench.links                  # 300 links a run, 3 runs each way, ~1 min
    .venv/bin/python -m bench.links --quick          # 20 links, 1 run, a few seconds

A registry (this process), ``--dialers`` peers in one worker process and ``--acceptors`` in
another. Each dialer sends one direct message to each acceptor, one message at a time in all,
which makes it look the acceptor up at the registry and dial it: TCP, then (trust on) TLS 1.3
in which the dialer shows its certificate and the acceptor checks it against the registry's CA,
then ``peer_hello`` and the acceptor's ``peer_welcome`` with its certificate and a signed link
statement, which the dialer checks. Timed: from the dialer's shell starting the dial to the
dialer's core opening the link (the welcome checked). Trust off: plain TCP and a bare
hello/welcome, names taken on trust.

CPU per link, at each end: the processes' CPU time while the links are made, less the same
exchanges over links already open (a search, then a direct message to each acceptor again),
over the number of links. Also measured here, both ends in this process: the TLS handshake
alone with the same contexts as the peers' (no peer protocol), and the pieces of the welcome
in isolation (signing the statement, checking certificate and signature).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._worker import ProcessWorker, Worker
from bench.common import (
    command_line,
    header,
    median,
    percentile,
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
from p2pchat.peer.actions import Dial
from p2pchat.peer.events import PeerEvent, Status
from p2pchat.peer.identity import Identity, check_welcome
from p2pchat.peer.node import PeerConfig, PeerNode
from p2pchat.trust import tls
from p2pchat.trust.certs import Authority, cert_pem, private_pem, raw_public, read_user_cert
from p2pchat.trust.signing import Signer

MODULE = "bench.links"


class TimedNode(PeerNode):
    """A peer that notes when its shell starts each dial (by the port dialed) and when each
    link opens (the status event its core shows then)."""

    def __init__(self, config: PeerConfig, on_event: Any = None) -> None:
        self.dial_at: dict[int, float] = {}
        self.open_at: dict[str, float] = {}
        super().__init__(config, self._seen)

    async def _dial(self, action: Dial) -> None:
        self.dial_at[action.port] = time.perf_counter()
        await super()._dial(action)

    def _seen(self, event: PeerEvent) -> None:
        if type(event) is Status:
            now = time.perf_counter()
            for peer in self.linked_peers():
                self.open_at.setdefault(peer, now)


class LinkWorker(Worker):
    """A worker whose peers are ``TimedNode``s, with the commands of this benchmark."""

    node_class = TimedNode

    async def cmd_cpu(self) -> float:
        """CPU seconds of this process so far (finer than /proc's clock ticks)."""
        return time.process_time()

    async def cmd_ports(self) -> dict[str, int]:
        return {name: node.port for name, node in self.by_name.items()}  # type: ignore[attr-defined]

    async def cmd_links(self, pairs: list[tuple[str, str, int]], phase: str) -> dict[str, Any]:
        """For each (dialer, acceptor, acceptor's port), one at a time: ``dial`` (a direct
        message, which dials), ``search`` (look the acceptor up), ``direct`` (a direct message
        over the open link)."""
        seconds: list[float] = []
        failed = 0
        t0 = time.perf_counter()
        for dialer, acceptor, port in pairs:
            node = self.by_name[dialer]
            assert isinstance(node, TimedNode)
            try:
                if phase == "search":
                    await node.search(acceptor)
                    continue
                await node.send_direct(acceptor, "hello")
            except Exception as exc:  # counted and shown: a failed link must not stop the run
                failed += 1
                print(f"{dialer} -> {acceptor}: {exc}", file=sys.stderr)
                continue
            if phase == "dial":
                start, opened = node.dial_at.get(port), node.open_at.get(acceptor)
                if start is not None and opened is not None:
                    seconds.append(opened - start)
                else:
                    failed += 1
        return {"seconds": seconds, "failed": failed, "wall": time.perf_counter() - t0}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"python -m {MODULE}",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--dialers", type=int, default=10, help="peers that dial")
    p.add_argument("--acceptors", type=int, default=30, help="peers they dial (links: the product)")
    p.add_argument(
        "--trust", type=trust_list, default=[True, False], help="on, off or on,off (side by side)"
    )
    p.add_argument("--repeat", type=int, default=3, help="runs each way (median)")
    p.add_argument("--handshakes", type=int, default=300, help="TLS handshakes alone")
    p.add_argument("--out", type=Path, default=None, help="default bench/results/links.json")
    p.add_argument("--quick", action="store_true", help="20 links, 50 handshakes, 1 run")
    return p


QUICK = {"dialers": 2, "acceptors": 10, "repeat": 1, "handshakes": 50}


async def _run(args: argparse.Namespace, secure: bool) -> dict[str, Any]:
    dialers = usernames(args.dialers, "d")
    acceptors = usernames(args.acceptors, "a")
    registry = await start_registry([*dialers, *acceptors], {}, secure=secure)
    home = tempfile.TemporaryDirectory(prefix="p2pchat-bench-")
    dial = ProcessWorker(f"{MODULE}:LinkWorker")
    accept = ProcessWorker(f"{MODULE}:LinkWorker")
    try:
        common = {"registry_port": registry.port, "secure": secure}
        await asyncio.gather(
            dial.call("setup", users=dialers, home=os.path.join(home.name, "d"), **common),
            accept.call("setup", users=acceptors, home=os.path.join(home.name, "a"), **common),
        )
        ports = await accept.call("ports")
        pairs = [(d, a, ports[a]) for d in dialers for a in acceptors]
        cpu: dict[str, tuple[float, float]] = {}
        out: dict[str, Any] = {}
        for phase in ("dial", "search", "direct"):
            d0, a0 = await dial.call("cpu"), await accept.call("cpu")
            out[phase] = await dial.call("links", pairs=pairs, phase=phase)
            cpu[phase] = (await dial.call("cpu") - d0, await accept.call("cpu") - a0)
    finally:
        for w in (dial, accept):
            try:
                await w.call("stop")
            except Exception as exc:
                print(f"worker stop failed: {exc}", file=sys.stderr)
            await w.close()
        await registry.close()
        registry.core.store.close()
        home.cleanup()
    links = len(out["dial"]["seconds"])
    ms = [x * 1000 for x in out["dial"]["seconds"]]
    per = 1e6 / links if links else float("nan")
    return {
        "trust": trust_name(secure),
        "links": links,
        "failed": out["dial"]["failed"],
        "p50_ms": percentile(ms, 50),
        "p99_ms": percentile(ms, 99),
        "max_ms": max(ms, default=float("nan")),
        "message_ms": out["dial"]["wall"] / len(pairs) * 1000,
        "dialer_cpu_us": (cpu["dial"][0] - cpu["search"][0] - cpu["direct"][0]) * per,
        "acceptor_cpu_us": (cpu["dial"][1] - cpu["direct"][1]) * per,
        "search_cpu_us": cpu["search"][0] * per,
        "direct_cpu_us": (cpu["direct"][0] + cpu["direct"][1]) * per,
    }


class _Accepted(asyncio.Protocol):
    def __init__(self, made: list[asyncio.Future[None]]) -> None:
        self.made = made

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.made and not self.made[0].done():
            self.made[0].set_result(None)
        transport.close()


async def tls_handshakes(count: int, secure: bool) -> dict[str, Any]:
    """``count`` connections one after another, both ends in this process, with the peers'
    own contexts: from connect until the accepting side has the connection (in TLS 1.3, once
    the dialer's certificate is checked against the CA)."""
    loop = asyncio.get_running_loop()
    now = time.time()
    authority = Authority.create(now)
    key = Signer()
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private = Ed25519PrivateKey.from_private_bytes(key.seed)
    der = authority.issue("d00000", raw_public(private.public_key()), now)
    client = server = None
    if secure:
        with tempfile.TemporaryDirectory(prefix="p2pchat-bench-") as folder:
            cert_path, key_path = Path(folder) / "cert.pem", Path(folder) / "key.pem"
            cert_path.write_bytes(cert_pem(der))
            key_path.touch(mode=0o600)
            key_path.write_bytes(private_pem(private))
            client = tls.client(cert_path, key_path)
        server = tls.peer_server(now)
        tls.trust_registry(server, authority.cert)
    made: list[asyncio.Future[None]] = []
    listener = await loop.create_server(lambda: _Accepted(made), "127.0.0.1", 0, ssl=server)
    port = listener.sockets[0].getsockname()[1]
    seconds = []
    cpu0 = time.process_time()
    for _ in range(count):
        made[:] = [loop.create_future()]
        t0 = time.perf_counter()
        transport, _ = await loop.create_connection(
            asyncio.Protocol, "127.0.0.1", port, ssl=client, server_hostname="" if secure else None
        )
        await asyncio.wait_for(made[0], 10.0)
        seconds.append(time.perf_counter() - t0)
        transport.close()
    cpu = time.process_time() - cpu0
    listener.close()
    ms = [x * 1000 for x in seconds]
    return {
        "trust": trust_name(secure),
        "handshakes": count,
        "p50_ms": percentile(ms, 50),
        "p99_ms": percentile(ms, 99),
        "cpu_us_both_ends": cpu / count * 1e6,
    }


def welcome_pieces(count: int = 300) -> dict[str, float]:
    """The peer protocol's own checks, in isolation (µs each)."""
    now = time.time()
    authority = Authority.create(now)
    signers = [Signer(), Signer()]
    certs = [
        authority.issue(u, s.public_key, now) for u, s in zip(("a", "d"), signers, strict=True)
    ]
    ca_key = raw_public(authority.key.public_key())
    acceptor = Identity(signers[0], read_user_cert(certs[0], ca_key, now))
    out = {}

    def timed(name: str, fn: Any) -> None:
        t0 = time.process_time()
        for _ in range(count):
            fn()
        out[name] = (time.process_time() - t0) / count * 1e6

    timed("welcome_us", lambda: acceptor.welcome("n" * 32, "a", "d"))
    welcome = acceptor.welcome("n" * 32, "a", "d")
    timed("check_welcome_us", lambda: check_welcome(welcome, "a", "n" * 32, "d", ca_key, now))
    timed("read_cert_us", lambda: read_user_cert(certs[1], ca_key, now))
    timed("peer_server_context_us", lambda: tls.peer_server(now))
    return out


async def main_async(args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    raise_nofile()
    rows = []
    for r in range(args.repeat):
        for secure in args.trust:
            t = time.perf_counter()
            row = await _run(args, secure)
            row["run"] = r + 1
            rows.append(row)
            print(
                f"  run {r + 1} trust {row['trust']}: {row['links']:.0f} links, p50 "
                f"{row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms "
                f"({time.perf_counter() - t:.0f} s)",
                flush=True,
            )
    shakes = [await tls_handshakes(args.handshakes, secure) for secure in args.trust]
    return rows, {"handshakes": shakes, "pieces": welcome_pieces()}


COLUMNS = [
    ("trust", "trust"),
    ("links (all runs)", "links"),
    ("failed", "failed"),
    ("p50 ms", "p50_ms"),
    ("p99 ms", "p99_ms"),
    ("max ms", "max_ms"),
    ("dialer CPU us/link", "dialer_cpu_us"),
    ("acceptor CPU us/link", "acceptor_cpu_us"),
    ("msg incl. dial ms", "message_ms"),
]


def medians(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for trust in dict.fromkeys(r["trust"] for r in rows):
        mine = [r for r in rows if r["trust"] == trust]
        row: dict[str, Any] = {"trust": trust, "runs": len(mine)}
        for key, value in mine[0].items():
            if key in ("links", "failed"):
                row[key] = sum(r[key] for r in mine)
            elif key not in ("trust", "run") and isinstance(value, float):
                row[key] = median(r[key] for r in mine)
        out.append(row)
    return out


def render(rows: list[dict[str, Any]], extra: dict[str, Any]) -> str:
    meds = medians(rows)
    text = table([c for c, _ in COLUMNS], [[r.get(k) for _, k in COLUMNS] for r in meds])
    by = {r["trust"]: r for r in meds}
    if "on" in by and "off" in by:
        on, off = by["on"], by["off"]
        text += "\n\ntrust on / off: " + ", ".join(
            f"{c} {on[k] / off[k]:.2f}" for c, k in COLUMNS[3:] if off.get(k, 0) > 0
        )
    shakes = extra["handshakes"]
    text += "\n\nhandshake alone (TCP connect, and TLS 1.3 with certificates when on), both ends:\n"
    text += table(
        ["trust", "handshakes", "p50 ms", "p99 ms", "CPU us (both ends)"],
        [
            [s["trust"], s["handshakes"], s["p50_ms"], s["p99_ms"], s["cpu_us_both_ends"]]
            for s in shakes
        ],
    )
    pieces = extra["pieces"]
    text += (
        "\n\nwelcome pieces (trust on), us each: acceptor signs its statement "
        f"{pieces['welcome_us']:.0f}; dialer checks certificate and signature "
        f"{pieces['check_welcome_us']:.0f} (of which reading the certificate "
        f"{pieces['read_cert_us']:.0f}); a peer's TLS server context "
        f"{pieces['peer_server_context_us']:.0f}"
    )
    return text


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quick:
        parser.set_defaults(**QUICK)
        args = parser.parse_args(argv)
    command = command_line(MODULE, argv)
    print(header("link setup: dial to open link, trust on and off", command), flush=True)
    print(
        f"{args.dialers} dialers x {args.acceptors} acceptors, one link at a time; median of "
        f"{args.repeat} runs\n",
        flush=True,
    )
    rows, extra = asyncio.run(main_async(args))
    print()
    print(render(rows, extra))
    out = results_path(args.out, args.quick, "links")
    if out is not None:
        path = save_results("links", command, medians(rows), {"runs": rows, **extra}, out)
        print(f"\nresults: {shown(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
