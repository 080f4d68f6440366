"""A registry process for the capacity benchmark: ``RegistryServer`` on 127.0.0.1, as the
``p2pchat registry`` command builds it, with two differences for a load generator on one
address: the open-files limit raised to the hard limit, and the per-address login throttle
lifted. Prints ``tcp PORT udp PORT`` once listening; stops on SIGTERM.

    .venv/bin/python -m bench._registry_proc --db FILE [--password-hash cheapest|default]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from bench.common import raise_nofile, relax_throttles
from p2pchat.registry.core import RegistryConfig
from p2pchat.registry.passwords import Passwords
from p2pchat.registry.server import RegistryServer
from p2pchat.store import SqliteStore


async def serve(db: str, profile: str) -> None:
    store = SqliteStore(db)
    server = RegistryServer(
        store,
        host="127.0.0.1",
        port=0,
        udp_port=0,
        config=RegistryConfig(heartbeat_interval=20.0, timeout=60.0),
        passwords=Passwords(profile),  # type: ignore[arg-type]
        max_connections=20_000,
    )
    relax_throttles(server)
    await server.start()
    print(f"tcp {server.port} udp {server.udp_port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.close()
    store.close()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--db", required=True)
    p.add_argument("--password-hash", default="cheapest", choices=["cheapest", "default"])
    args = p.parse_args()
    raise_nofile()
    asyncio.run(serve(args.db, args.password_hash))
    return 0


if __name__ == "__main__":
    sys.exit(main())
