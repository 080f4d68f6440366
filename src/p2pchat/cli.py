"""The ``p2pchat`` command: argument parsing and wiring, nothing else."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from p2pchat import __version__
from p2pchat.address import (
    DEFAULT_TCP_PORT,
    DEFAULT_UDP_PORT,
    AddressError,
    parse_address,
    parse_port,
)
from p2pchat.ui import exits


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than 0 seconds")
    return value


def _positive(kind: Callable[[str], float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError("must be more than 0")
        return value

    return parse


def _addresses(text: str) -> frozenset[str]:
    if text.strip().lower() == "none":
        return frozenset()
    found = frozenset(a.strip() for a in text.split(",") if a.strip())
    for address in found:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an IP address: {address!r}") from None
    return found


def _port(text: str) -> int:
    try:
        return parse_port(text)
    except AddressError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _registry(text: str) -> tuple[str, int]:
    try:
        return parse_address(text, DEFAULT_TCP_PORT)
    except AddressError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}")
        return value

    return parse


class _Defaults(argparse.ArgumentDefaultsHelpFormatter):
    """Say the default only where there is one: an option whose default is None explains
    itself in its help."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="p2pchat",
        description=(
            "Peer-to-peer chat with chat rooms. A registry tracks accounts, who is online and "
            "the rooms; peers send messages to each other directly and flood room messages "
            "over a mesh of peer links."
        ),
    )
    parser.add_argument("--version", action="version", version=f"p2pchat {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    reg = sub.add_parser(
        "registry",
        help="run the registry (tracker) server",
        description=(
            "Run the registry: accounts, presence (UDP heartbeats) and chat rooms, over TCP. "
            "It never relays chat text. Stop it with Ctrl+C or SIGTERM."
        ),
        formatter_class=_Defaults,
    )
    reg.add_argument("--host", default="0.0.0.0", help="address to listen on (TCP and UDP)")
    reg.add_argument("--port", type=_port, default=DEFAULT_TCP_PORT, help="TCP port; 0 picks one")
    reg.add_argument(
        "--udp-port", type=_port, default=DEFAULT_UDP_PORT, help="UDP heartbeat port; 0 picks one"
    )
    reg.add_argument(
        "--db",
        type=Path,
        default=Path("p2pchat-registry.db"),
        help="SQLite database file (created if missing)",
    )
    reg.add_argument(
        "--timeout",
        type=_seconds,
        default=60.0,
        help="seconds without a heartbeat before a session is disconnected (fractions accepted)",
    )
    reg.add_argument(
        "--heartbeat-interval",
        type=_seconds,
        default=20.0,
        help="heartbeat interval the registry asks clients to use",
    )
    reg.add_argument(
        "--max-connections",
        type=_positive(int),
        default=None,
        help="most concurrent TCP sessions (default: what the open-files limit allows, less "
        "some room for the registry's own files)",
    )
    reg.add_argument(
        "--max-per-address",
        type=_positive(int),
        default=64,
        help="most concurrent TCP sessions from one address (see --exempt)",
    )
    reg.add_argument(
        "--exempt",
        type=_addresses,
        default="127.0.0.1,::1",
        help="comma-separated addresses not limited or pooled per address (local clients, or "
        "a local TLS tunnel through which every client comes); 'none' for no exemption",
    )
    reg.add_argument(
        "--allow-advertise",
        action="store_true",
        help="let peers publish an address (login 'host', peer --advertise) other than the one "
        "they connect from; without it such logins are refused",
    )
    reg.add_argument(
        "--login-timeout",
        type=_seconds,
        default=20.0,
        help="seconds a connection that is not logged in may stay silent before it is closed",
    )
    reg.add_argument(
        "--hash-workers",
        type=_positive(int),
        default=max(1, (os.cpu_count() or 2) // 2),
        help="password hashes (Argon2id) run at once; the rest wait their turn, fairly "
        "between addresses",
    )
    reg.add_argument(
        "--register-rate",
        type=_positive(float),
        default=1.0,
        help="registrations per second allowed from one address, after a burst",
    )
    reg.add_argument(
        "--register-burst",
        type=_positive(int),
        default=30,
        help="registrations one address may make at once before the rate applies",
    )
    reg.add_argument(
        "--max-rooms-per-user",
        type=_positive(int),
        default=256,
        help="most rooms one user may be a member of",
    )
    reg.add_argument(
        "--max-owned-rooms",
        type=_positive(int),
        default=64,
        help="most rooms one user may own",
    )
    reg.add_argument(
        "--room-change-rate",
        type=_positive(float),
        default=1.0,
        help="room requests (create, join, leave, add, remove, unban) per second per user, "
        "after a burst",
    )
    reg.add_argument(
        "--room-change-burst",
        type=_positive(int),
        default=30,
        help="room requests one user may make at once before the rate applies",
    )
    reg.add_argument(
        "--password-hash",
        choices=["default", "cheapest"],
        default="default",
        help="Argon2id cost; 'cheapest' is for tests and benchmarks only",
    )
    reg.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="how much to log (to standard error)",
    )
    peer = sub.add_parser(
        "peer",
        help="run a chat peer (line mode or terminal UI)",
        description=(
            "Run a chat peer: a TCP listener for other peers and a client of the registry. "
            "Direct messages go peer to peer; room messages are flooded over a bounded mesh "
            "of peer links. In line mode, commands are read from standard input (one per "
            "line, /help lists them) and events are written to standard output, one per line."
        ),
        formatter_class=_Defaults,
    )
    peer.add_argument(
        "--registry",
        type=_registry,
        default=f"127.0.0.1:{DEFAULT_TCP_PORT}",
        metavar="HOST[:PORT]",
        help="the registry's address",
    )
    peer.add_argument("--host", default="0.0.0.0", help="address this peer listens on")
    peer.add_argument("--port", type=_port, default=0, help="TCP port to listen on; 0 picks one")
    peer.add_argument(
        "--advertise",
        default=None,
        metavar="HOST",
        help="address other peers should use to reach this one "
        "(default: the address the registry sees)",
    )
    peer.add_argument(
        "--registry-fingerprint",
        default=None,
        metavar="SHA256:...",
        help="the fingerprint the registry's certificate must have, as the registry prints it "
        "at start (otherwise the first one seen is pinned, in "
        "$XDG_CONFIG_HOME/p2pchat/known_registries, and a changed one is refused)",
    )
    peer.add_argument(
        "--data-dir",
        default=None,
        metavar="DIR",
        help="where this peer keeps its users' keys and certificates "
        "(default: $XDG_DATA_HOME/p2pchat, i.e. ~/.local/share/p2pchat)",
    )
    peer.add_argument(
        "--heartbeat",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="seconds between heartbeats to the registry (fractions accepted); by default the "
        "interval the registry asks for",
    )
    peer.add_argument(
        "--max-links",
        type=_at_least(2),
        default=6,
        help="cap on this peer's mesh links in one room: 2 gives a plain ring; 3 or more "
        "adds one chord per member, which is all the mesh uses (at most 3 links a room)",
    )
    peer.add_argument(
        "--ui",
        choices=["auto", "line", "tui"],
        default="auto",
        help="line: scriptable, one event per line; tui: full-screen; auto: tui on a terminal",
    )
    peer.add_argument(
        "--no-bell",
        action="store_true",
        help="terminal UI: do not ring the bell for direct messages and lines that name you",
    )
    peer.add_argument(
        "--log-level",
        default="warning",
        choices=["debug", "info", "warning", "error"],
        help="how much to log (to standard error)",
    )
    demo = sub.add_parser(
        "demo",
        help="a local registry, bots chatting in 'lobby', and you in the terminal UI",
        description=(
            "Try p2pchat in one command. Starts, in this process and on 127.0.0.1 only: a "
            "registry with its SQLite database in a temporary folder (free ports; passwords "
            "hashed with the cheapest Argon2id setting so it starts fast, which is for demos "
            "only), three bot peers (ada, grace, linus) that chat in the room 'lobby' every "
            "few seconds, answer when a message names them and echo direct messages back, and "
            "you: the terminal UI logged in as a fresh user (your login name, or --user) who "
            "is already in 'lobby'. Ctrl+Q (or /quit) logs you and the bots out, closes the "
            "registry and removes the temporary folder."
        ),
    )
    demo.add_argument(
        "--no-tui",
        action="store_true",
        help="use the line mode instead of the terminal UI (for scripts and tests; "
        "plain lines go to lobby)",
    )
    demo.add_argument(
        "--duration",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="stop by itself after this long (with --no-tui, end of input then does not stop it)",
    )
    demo.add_argument("--user", default=None, help="your username (default: your login name)")
    demo.add_argument(
        "--no-bell",
        action="store_true",
        help="do not ring the bell for direct messages and lines that name you",
    )
    demo.add_argument("--seed", type=int, default=1, help="seed of the bots' small talk (1)")
    demo.add_argument(
        "--log-level",
        default="warning",
        choices=["debug", "info", "warning", "error"],
        help="how much to log (warning); in the terminal UI, log lines show in the home pane",
    )
    return parser


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


async def _run_registry(args: argparse.Namespace) -> int:
    from p2pchat.listener import default_max_connections
    from p2pchat.registry.core import RegistryConfig
    from p2pchat.registry.passwords import Passwords
    from p2pchat.registry.server import RegistryServer
    from p2pchat.store import SqliteStore, StoreError
    from p2pchat.trust.certs import TrustError
    from p2pchat.trust.files import authority_paths, load_or_create_authority

    try:
        store = SqliteStore(args.db)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exits.CANNOT_START
    try:
        authority, new_ca = load_or_create_authority(args.db)
    except (TrustError, OSError) as exc:
        print(f"error: the registry's certificate authority: {exc}", file=sys.stderr)
        store.close()
        return exits.CANNOT_START
    config = RegistryConfig(
        heartbeat_interval=args.heartbeat_interval,
        timeout=args.timeout,
        register_rate=args.register_rate,
        register_burst=args.register_burst,
        login_timeout=args.login_timeout,
        allow_advertise=args.allow_advertise,
        exempt=args.exempt,
        hash_workers=args.hash_workers,
        max_rooms_per_user=args.max_rooms_per_user,
        max_owned_rooms=args.max_owned_rooms,
        room_change_rate=args.room_change_rate,
        room_change_burst=args.room_change_burst,
    )
    allowed = default_max_connections()
    max_connections = args.max_connections or allowed
    if max_connections > allowed:
        logging.getLogger("p2pchat.registry").warning(
            "--max-connections %d is more than the open-files limit allows; using %d "
            "(raise the limit with ulimit -n)",
            max_connections,
            allowed,
        )
        max_connections = allowed
    try:
        server = RegistryServer(
            store,
            host=args.host,
            port=args.port,
            udp_port=args.udp_port,
            config=config,
            passwords=Passwords(args.password_hash),
            max_connections=max_connections,
            max_per_address=args.max_per_address,
            authority=authority,
        )
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        store.close()
        return 2
    try:
        await server.start()
    except OSError as exc:
        where = _which_port_is_busy(args.host, args.port, args.udp_port)
        print(f"error: cannot listen on {args.host} {where}: {exc}", file=sys.stderr)
        store.close()
        return exits.CANNOT_START
    key_path, cert_path = authority_paths(args.db)
    made = "made just now, kept" if new_ca else "kept"
    print(
        f"registry listening on {args.host} tcp {server.port} udp {server.udp_port} "
        f"(database {args.db})\n"
        f"registry CA fingerprint {authority.fingerprint} ({made} in {cert_path} and "
        f"{key_path.name}); peers pin it on first use, or give it with --registry-fingerprint",
        flush=True,
    )
    logging.getLogger("p2pchat.registry").info("at most %d connections", max_connections)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    logging.getLogger("p2pchat.registry").info("stopping")
    await server.close()
    store.close()
    print("registry stopped", flush=True)
    return exits.OK


def _which_port_is_busy(host: str, tcp: int, udp: int) -> str:
    """Name the port that could not be had: the error alone does not say which."""
    for kind, port in ((socket.SOCK_STREAM, tcp), (socket.SOCK_DGRAM, udp)):
        name = "tcp" if kind == socket.SOCK_STREAM else "udp"
        if port == 0:
            continue
        try:
            with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, kind) as s:
                if kind == socket.SOCK_STREAM:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((host, port))
        except OSError:
            return f"{name} port {port}"
    return f"tcp port {tcp}, udp port {udp}"


def _stop_on_signals(stop: asyncio.Event, interrupted: list[bool], *, sigint: bool) -> None:
    """SIGTERM (and SIGINT unless the terminal UI reads Ctrl+C itself) stop cleanly; an
    interrupt is remembered for the exit status."""
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    def interrupt() -> None:
        interrupted.append(True)
        stop.set()

    if sigint:
        loop.add_signal_handler(signal.SIGINT, interrupt)


async def _run_peer(args: argparse.Namespace, ui: str) -> int:
    from p2pchat.peer.node import PeerConfig

    host, port = args.registry
    config = PeerConfig(
        registry_host=host,
        registry_port=port,
        listen_host=args.host,
        listen_port=args.port,
        advertise=args.advertise,
        heartbeat=args.heartbeat,
        max_links=args.max_links,
        registry_fingerprint=args.registry_fingerprint,
        data_dir=args.data_dir,
    )
    stop = asyncio.Event()
    interrupted: list[bool] = []
    _stop_on_signals(stop, interrupted, sigint=True)
    if ui == "tui":
        from p2pchat.ui.tui import run_tui

        code = await run_tui(config, stop=stop, bell=not args.no_bell)
    else:
        from p2pchat.ui.line import run_line_mode

        code = await run_line_mode(config, stop)
    return exits.INTERRUPTED if interrupted else code


def on_a_terminal() -> bool:
    """Both ends are a terminal: the full-screen UI can work. Otherwise (a pipe, a file,
    /dev/null) the line mode is the one that makes sense."""
    return sys.stdin.isatty() and sys.stdout.isatty()


def _pick_ui(choice: str) -> str:
    if choice != "auto":
        return choice
    return "tui" if on_a_terminal() else "line"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.log_level)
    try:
        if args.command == "registry":
            return asyncio.run(_run_registry(args))
        if args.command == "peer":
            return asyncio.run(_run_peer(args, _pick_ui(args.ui)))
        from p2pchat.demo import run_demo

        tui = not args.no_tui and on_a_terminal()
        return asyncio.run(
            run_demo(
                tui=tui,
                duration=args.duration,
                user=args.user,
                seed=args.seed,
                bell=not args.no_bell,
            )
        )
    except KeyboardInterrupt:  # before the handlers were in place, or after
        return exits.INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
